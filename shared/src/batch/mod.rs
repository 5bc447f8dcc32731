//! One step of a function: decide a batch of delivered messages.
//!
//! [`process`] decodes every message, then decides all the new commands in ONE transaction: the
//! dedup claims, the function's effect and the outbox rows commit together. If that transaction
//! fails for a reason that is not an outage, one message is poisoning it: each command is then
//! decided in its own transaction, so the others commit and only the culprit is retried (and
//! dead-lettered once its deliveries are used up). The result says what to do with each message;
//! nothing is acknowledged here, so the caller acknowledges only what has committed.

use std::time::{Duration, Instant};

use async_nats::jetstream::Message;
use deadpool_postgres::Transaction;
use foldhash::{HashMap, HashMapExt};
use tokio_postgres::types::ToSql;

use crate::context::Context;
use crate::dedup::{self, Claim, Fingerprint};
use crate::dlq;
use crate::error::StepError;
use crate::events::{Event, Reason};
use crate::function::{Command, Function, Outcome, Screened};
use crate::metrics;
use crate::outbox::{self, OutboxMessage, Row};
use crate::partition::{Partition, Routing};
use crate::trace::{self, CommandSpan};

mod decode;
mod screen;

use decode::{Decoded, decode};
use screen::{publish_direct, screen};

/// What to do with a delivered message once the batch's transaction has committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    DeadLetter(&'static str),
    Nak(Duration),
}

#[derive(Debug, Default)]
pub struct Processed {
    /// One per message, in the order given.
    pub dispositions: Vec<Disposition>,
    /// Committed outbox rows (one per transaction), to publish.
    pub rows: Vec<Row>,
    pub tally: Tally,
}

/// How the batch's commands ended, for the metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub completed: usize,
    /// Each rejection's reason.
    pub rejected: Vec<Reason>,
    pub duplicates: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Self) {
        self.completed += o.completed;
        self.rejected.extend(o.rejected);
        self.duplicates += o.duplicates;
    }
}

/// A distinct command of the batch (the first message carrying its key).
struct Unit<C> {
    index: usize,
    key: String,
    print: Fingerprint,
    partition: Option<Partition>,
    pub(super) command: Result<Command<C>, Event>,
    /// Its last allowed delivery: a command still undecided now is dead-lettered, not retried.
    last: bool,
    /// What becomes of it if it fails for a reason that is not an outage ([`failed`]).
    failed: Disposition,
    /// Its span; what it publishes carries its `traceparent`.
    trace: CommandSpan,
}

/// What a batch needs to know of the consumer its messages came from.
#[derive(Debug)]
pub struct Source {
    /// The subjects its stream takes, and the partitions they name.
    pub routing: Routing,
    /// A message is delivered at most this many times before it is dead-lettered.
    pub dead_letter_after: i64,
    /// Whether each batch reads the shard map (see [`decide_in`]): on a shard, for a function
    /// that is not sharded. A sharded function never meets a command of a partition a split
    /// has moved: the split waits until the shard's streams hold none before it changes the
    /// map, and they take no more. For it the read was pure cost (about 4 % of PostgreSQL's
    /// CPU per deposit in `make bench`'s shards profile, docs/sharding.md).
    pub reads_map: bool,
}

/// Decides `messages`, which arrived from `source`. `Err` only for an outage: then nothing was decided and the caller retries the
/// whole batch later. Answers decided without a transaction ([`Function::screen`]) are published
/// here, before any of them is acknowledged.
pub async fn process<F: Function>(
    f: &F,
    ctx: &Context,
    source: &Source,
    messages: &[Message],
) -> Result<Processed, StepError> {
    let delivered = |index: usize| messages[index].info().map(|i| i.delivered).unwrap_or(1);
    let mut out = Processed {
        dispositions: vec![Disposition::Ack; messages.len()],
        ..Default::default()
    };
    let mut units: Vec<Unit<F::Command>> = Vec::new();
    // Later copies of an id within the batch follow the fate of its first copy.
    let mut followers: Vec<(usize, usize)> = Vec::new();
    let mut first: HashMap<String, usize> = HashMap::new();

    for (index, message) in messages.iter().enumerate() {
        // Past its last allowed delivery: it was never settled, because it ended the process
        // that held it (or its dead letter was refused). It is not tried again.
        if delivered(index) > source.dead_letter_after {
            out.dispositions[index] = Disposition::DeadLetter(dlq::MAX_DELIVER);
            continue;
        }
        match decode(f, ctx, &source.routing, message) {
            Decoded::Malformed => out.dispositions[index] = Disposition::DeadLetter(dlq::MALFORMED),
            Decoded::WrongPartition => {
                out.dispositions[index] = Disposition::DeadLetter(dlq::WRONG_PARTITION);
            }
            Decoded::Command {
                key,
                print,
                partition,
                command,
            } => {
                if let Some(&u) = first.get(&key) {
                    if units[u].print == print {
                        followers.push((index, u));
                    } else {
                        out.dispositions[index] = Disposition::DeadLetter(dlq::ID_CONFLICT);
                    }
                    continue;
                }
                first.insert(key.clone(), units.len());
                units.push(Unit {
                    index,
                    key,
                    print,
                    partition,
                    command,
                    last: delivered(index) >= source.dead_letter_after,
                    failed: failed(delivered(index), source.dead_letter_after),
                    trace: CommandSpan::start(F::NAME, &message.subject, message.headers.as_ref()),
                });
            }
        }
    }
    // Ended when the batch is decided, as the commands' spans.
    let _batch = trace::batch(F::NAME, units.iter().map(|u| &u.trace));

    let valid: Vec<&Unit<F::Command>> = units.iter().filter(|u| u.command.is_ok()).collect();
    let screened = screen(f, ctx, &valid).await?;
    let mut pending: Vec<&Unit<F::Command>> = Vec::with_capacity(units.len());
    // Each answer with the position of its unit.
    let mut direct: Vec<(usize, OutboxMessage)> = Vec::new();
    let mut screened = screened.into_iter();
    for (at, unit) in units.iter().enumerate() {
        if unit.command.is_err() {
            pending.push(unit);
            continue;
        }
        let Some(screened) = screened.next() else {
            unreachable!("screen() answers every valid command");
        };
        match screened {
            Ok(Screened::Answered(event)) => {
                let mut message = event.into_outbox(Vec::new());
                unit.trace.stamp(&mut message);
                match message.rejection {
                    Some(reason) => out.tally.rejected.push(reason),
                    None => out.tally.completed += 1,
                }
                direct.push((at, message));
            }
            Ok(Screened::Proceed) => pending.push(unit),
            Ok(Screened::DeadLetter(reason)) => {
                out.dispositions[unit.index] = Disposition::DeadLetter(reason)
            }
            Err(e) => {
                tracing::warn!(function = F::NAME, id = unit.key.as_str(), error = %e, "command failed its screen");
                out.dispositions[unit.index] = unit.failed;
            }
        }
    }

    if !pending.is_empty() {
        match decide(f, ctx, source.reads_map, &pending).await {
            Ok(decided) => absorb(&mut out, decided),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) if pending.len() == 1 => {
                tracing::warn!(function = F::NAME, error = %e, "command failed");
                out.dispositions[pending[0].index] = pending[0].failed;
            }
            Err(e) => {
                tracing::warn!(function = F::NAME, error = %e, size = pending.len(), "batch failed; deciding its commands one by one");
                metrics::batch_fallback(F::NAME);
                for unit in &pending {
                    match decide(f, ctx, source.reads_map, &[unit]).await {
                        Ok(decided) => absorb(&mut out, decided),
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => {
                            tracing::warn!(function = F::NAME, id = unit.key.as_str(), error = %e, "command failed");
                            out.dispositions[unit.index] = unit.failed;
                        }
                    }
                }
            }
        }
    }

    for (at, e) in publish_direct(ctx, direct).await? {
        let unit = &units[at];
        tracing::warn!(function = F::NAME, id = unit.key.as_str(), error = %e, "answer not published");
        out.dispositions[unit.index] = unit.failed;
    }

    for (index, leader) in followers {
        out.dispositions[index] = match out.dispositions[units[leader].index] {
            Disposition::Ack => {
                out.tally.duplicates += 1;
                Disposition::Ack
            }
            other => other,
        };
    }
    Ok(out)
}

/// A command that failed for a reason that is not an outage: retry it later, or dead-letter it
/// on its last allowed delivery so that it is never left behind undecided.
fn failed(delivered: i64, dead_letter_after: i64) -> Disposition {
    if delivered >= dead_letter_after {
        Disposition::DeadLetter(dlq::MAX_DELIVER)
    } else {
        let secs = 1u64 << delivered.clamp(0, 8) as u32;
        Disposition::Nak(Duration::from_secs(secs.min(300)))
    }
}

/// What one transaction decided; merged into the batch's [`Processed`] only once it committed.
#[derive(Default)]
struct Decided {
    dispositions: Vec<(usize, Disposition)>,
    rows: Vec<Row>,
    tally: Tally,
}

fn absorb(out: &mut Processed, d: Decided) {
    for (index, disposition) in d.dispositions {
        out.dispositions[index] = disposition;
    }
    out.rows.extend(d.rows);
    out.tally += d.tally;
}

/// Decides `units` in one transaction.
async fn decide<F: Function>(
    f: &F,
    ctx: &Context,
    reads_map: bool,
    units: &[&Unit<F::Command>],
) -> Result<Decided, StepError> {
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let started = Instant::now();
    let decided = decide_in(f, ctx, &tx, reads_map, units).await?;
    metrics::handler_seconds(F::NAME, started.elapsed().as_secs_f64());
    let committing = Instant::now();
    tx.commit().await?;
    metrics::committed(F::NAME, committing.elapsed().as_secs_f64());
    Ok(decided)
}

const SHARE_MAP_LOCK: &str = "SELECT pg_advisory_xact_lock_shared($1)";

/// The partitions among `$1` that this database's shard map gives to another shard. Read after
/// [`MAP_LOCK`](crate::shards::MAP_LOCK) is held shared, in a statement of its own (a statement
/// reads the snapshot it began with): a split that gives a partition away holds it exclusively
/// while it writes the map, so it waits for the batches under way, and a batch that comes
/// after reads the new owner.
const ELSEWHERE: &str = "
    SELECT partition FROM partition_map
    WHERE partition = ANY($1) AND shard IS DISTINCT FROM (SELECT name FROM shard_self)";

async fn decide_in<F: Function>(
    f: &F,
    ctx: &Context,
    tx: &Transaction<'_>,
    reads_map: bool,
    units: &[&Unit<F::Command>],
) -> Result<Decided, StepError> {
    let mut d = Decided::default();
    // On a shard, a command of a partition the map gives to another shard is not decided here:
    // a split has moved it, and its wallets with it. A function that is not sharded may meet
    // one, on a map of one shard split into two ([`Source::reads_map`]).
    let moved: Vec<i16> = if reads_map {
        let partitions: Vec<i16> = units
            .iter()
            .filter_map(|u| u.partition.map(Partition::as_smallint))
            .collect();
        let (lock, read) = futures::try_join!(
            tx.prepare_cached(SHARE_MAP_LOCK),
            tx.prepare_cached(ELSEWHERE)
        )?;
        let (lock_args, read_args): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
            ([&crate::shards::MAP_LOCK], [&partitions]);
        let (locked, elsewhere) =
            futures::join!(tx.execute(&lock, &lock_args), tx.query(&read, &read_args),);
        locked?;
        elsewhere?.iter().map(|r| r.get(0)).collect()
    } else {
        Vec::new()
    };
    let (elsewhere, units): (Vec<_>, Vec<&Unit<F::Command>>) =
        units.iter().copied().partition(|u| {
            u.partition
                .is_some_and(|p| moved.contains(&p.as_smallint()))
        });
    for unit in elsewhere {
        tracing::warn!(
            function = F::NAME,
            id = unit.key.as_str(),
            "command of a partition moved to another shard; not decided here"
        );
        d.dispositions.push((unit.index, unit.failed));
    }
    let keys: Vec<dedup::Key<'_>> = units
        .iter()
        .map(|u| dedup::Key {
            id: u.key.as_str(),
            print: u.print,
            partition: u.partition,
        })
        .collect();
    let claims = dedup::claim(tx, F::NAME, &keys).await?;
    let mut messages: Vec<OutboxMessage> = Vec::new();
    let mut fresh: Vec<&Unit<F::Command>> = Vec::new();
    for (unit, claim) in units.iter().zip(claims) {
        match (claim, &unit.command) {
            (Claim::Duplicate, _) => {
                d.tally.duplicates += 1;
                d.dispositions.push((unit.index, Disposition::Ack));
            }
            (Claim::Conflict, _) => d
                .dispositions
                .push((unit.index, Disposition::DeadLetter(dlq::ID_CONFLICT))),
            (Claim::New, Err(rejection)) => {
                let mut message = rejection.clone().into_outbox(Vec::new());
                unit.trace.stamp(&mut message);
                d.tally.rejected.extend(message.rejection);
                messages.push(message);
                d.dispositions.push((unit.index, Disposition::Ack));
            }
            (Claim::New, Ok(_)) => fresh.push(unit),
        }
    }
    if !fresh.is_empty() {
        let commands: Vec<&Command<F::Command>> = fresh
            .iter()
            .filter_map(|u| u.command.as_ref().ok())
            .collect();
        let outcomes = f.apply(ctx, tx, &commands).await?;
        if outcomes.len() != fresh.len() {
            return Err(StepError::permanent(format!(
                "{}: apply returned {} outcomes for {} commands",
                F::NAME,
                outcomes.len(),
                fresh.len()
            )));
        }
        let mut undecided: Vec<&str> = Vec::new();
        for (unit, outcome) in fresh.iter().zip(outcomes) {
            let disposition = match outcome {
                Outcome::Done(mut out) => {
                    out.iter_mut().for_each(|m| unit.trace.stamp(m));
                    match out.iter().find_map(|m| m.rejection) {
                        Some(reason) => d.tally.rejected.push(reason),
                        None => d.tally.completed += 1,
                    }
                    messages.extend(out);
                    Disposition::Ack
                }
                Outcome::DeadLetter(reason) => {
                    undecided.push(unit.key.as_str());
                    Disposition::DeadLetter(reason)
                }
                Outcome::Retry { reason, .. } if unit.last => {
                    undecided.push(unit.key.as_str());
                    Disposition::DeadLetter(reason)
                }
                Outcome::Retry { after, .. } => {
                    undecided.push(unit.key.as_str());
                    Disposition::Nak(after)
                }
            };
            d.dispositions.push((unit.index, disposition));
        }
        dedup::release(tx, F::NAME, &undecided).await?;
    }
    d.rows.extend(outbox::insert(tx, messages).await?);
    Ok(d)
}
