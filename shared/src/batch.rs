//! One step of a function: decide a batch of delivered messages.
//!
//! [`process`] decodes every message, then decides all the new commands in ONE transaction: the
//! dedup claims, the function's effect and the outbox rows commit together. If that transaction
//! fails for a reason that is not an outage, one message is poisoning it: each command is then
//! decided in its own transaction, so the others commit and only the culprit is retried (and
//! dead-lettered once its deliveries are used up). The result says what to do with each message;
//! nothing is acknowledged here, so the caller acknowledges only what has committed.

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::Message;
use deadpool_postgres::Transaction;
use foldhash::{HashMap, HashMapExt};

use crate::context::Context;
use crate::dedup::{self, Claim, Fingerprint};
use crate::dlq;
use crate::error::StepError;
use crate::events::Event;
use crate::function::{Command, Function, Invalid, Outcome, Payload, Screened};
use crate::metrics;
use crate::outbox::{self, OutboxMessage, Row};
use crate::streams::MAX_COMMAND_BYTES;

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
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub completed: usize,
    pub rejected: usize,
    pub duplicates: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Self) {
        self.completed += o.completed;
        self.rejected += o.rejected;
        self.duplicates += o.duplicates;
    }
}

/// A message as the runtime sees it before any transaction.
#[allow(clippy::large_enum_variant)] // Short-lived, one per message of a batch.
enum Decoded<C> {
    Malformed,
    Command {
        key: String,
        print: Fingerprint,
        /// `Ok`: valid; `Err`: its rejection event.
        command: Result<Command<C>, Event>,
    },
}

/// The first step of decoding, before any function's rules: a JSON object of at most 64 KiB
/// whose `id_field` holds a valid id. `None`: the message is malformed.
fn parse(payload: &[u8], id_field: &str) -> Option<(Payload, String)> {
    if payload.len() > MAX_COMMAND_BYTES {
        return None;
    }
    let object = serde_json::from_slice::<Payload>(payload).ok()?;
    let id = crate::ids::from_value(object.get(id_field))?.to_owned();
    Some((object, id))
}

/// Decodes one message: [`parse`], then the function's validation.
fn decode<F: Function>(f: &F, ctx: &Context, message: &Message) -> Decoded<F::Command> {
    let Some((object, id)) = parse(&message.payload, F::ID_FIELD) else {
        return Decoded::Malformed;
    };
    let id = id.as_str();
    let subject = ctx.names.strip(&message.subject);
    let stored_at = message
        .info()
        .map(|i| SystemTime::from(i.published))
        .unwrap_or_else(|_| SystemTime::now());
    match f.validate(ctx, subject, id, &object) {
        Err(Invalid::Malformed) => Decoded::Malformed,
        Err(Invalid::Rejected(event)) => Decoded::Command {
            key: id.to_owned(),
            print: dedup::fingerprint(&object, F::FIELDS),
            command: Err(event),
        },
        Ok(body) => Decoded::Command {
            key: F::key(id, &body),
            print: dedup::fingerprint(&object, F::FIELDS),
            command: Ok(Command {
                id: id.to_owned(),
                key: F::key(id, &body),
                body,
                stored_at,
            }),
        },
    }
}

/// A distinct command of the batch (the first message carrying its key).
struct Unit<C> {
    index: usize,
    key: String,
    print: Fingerprint,
    command: Result<Command<C>, Event>,
    /// Its last allowed delivery: a command still undecided now is dead-lettered, not retried.
    last: bool,
}

/// Decides `messages`; a message is delivered at most `dead_letter_after` times before it is
/// dead-lettered. `Err` only for an outage: then nothing was decided and the caller retries the
/// whole batch later. Answers decided without a transaction ([`Function::screen`]) are published
/// here, before any of them is acknowledged.
pub async fn process<F: Function>(
    f: &F,
    ctx: &Context,
    dead_letter_after: i64,
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
        if delivered(index) > dead_letter_after {
            out.dispositions[index] = Disposition::DeadLetter(dlq::MAX_DELIVER);
            continue;
        }
        match decode(f, ctx, message) {
            Decoded::Malformed => out.dispositions[index] = Disposition::DeadLetter(dlq::MALFORMED),
            Decoded::Command {
                key,
                print,
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
                    command,
                    last: delivered(index) >= dead_letter_after,
                });
            }
        }
    }
    // A command that failed for a reason that is not an outage, by its delivery count.
    let retry_or_dead_letter =
        |unit: &Unit<F::Command>| failed(delivered(unit.index), dead_letter_after);

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
                if event.is_rejection() {
                    out.tally.rejected += 1;
                } else {
                    out.tally.completed += 1;
                }
                direct.push((at, event.into_outbox(Vec::new())));
            }
            Ok(Screened::Proceed) => pending.push(unit),
            Ok(Screened::DeadLetter(reason)) => {
                out.dispositions[unit.index] = Disposition::DeadLetter(reason)
            }
            Err(e) => {
                tracing::warn!(function = F::NAME, id = unit.key.as_str(), error = %e, "command failed its screen");
                out.dispositions[unit.index] = retry_or_dead_letter(unit);
            }
        }
    }

    if !pending.is_empty() {
        match decide(f, ctx, &pending).await {
            Ok(decided) => absorb(&mut out, decided),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) if pending.len() == 1 => {
                tracing::warn!(function = F::NAME, error = %e, "command failed");
                out.dispositions[pending[0].index] = retry_or_dead_letter(pending[0]);
            }
            Err(e) => {
                tracing::warn!(function = F::NAME, error = %e, size = pending.len(), "batch failed; deciding its commands one by one");
                metrics::batch_fallback(F::NAME);
                for unit in &pending {
                    match decide(f, ctx, &[unit]).await {
                        Ok(decided) => absorb(&mut out, decided),
                        Err(e) if e.is_transient() => return Err(e),
                        Err(e) => {
                            tracing::warn!(function = F::NAME, id = unit.key.as_str(), error = %e, "command failed");
                            out.dispositions[unit.index] = retry_or_dead_letter(unit);
                        }
                    }
                }
            }
        }
    }

    for (at, e) in publish_direct(ctx, direct).await? {
        let unit = &units[at];
        tracing::warn!(function = F::NAME, id = unit.key.as_str(), error = %e, "answer not published");
        out.dispositions[unit.index] = retry_or_dead_letter(unit);
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

/// [`Function::screen`] for `units`, one result per unit. When the whole batch's screen fails
/// for a reason that is not an outage, each command is screened alone, so that one poison
/// command (a record Redis cannot answer for) fails alone instead of holding the batch.
async fn screen<F: Function>(
    f: &F,
    ctx: &Context,
    units: &[&Unit<F::Command>],
) -> Result<Vec<Result<Screened, StepError>>, StepError> {
    let commands: Vec<&Command<F::Command>> = units
        .iter()
        .filter_map(|u| u.command.as_ref().ok())
        .collect();
    match f.screen(ctx, &commands).await {
        Ok(s) if s.len() == commands.len() => return Ok(s.into_iter().map(Ok).collect()),
        Ok(s) => {
            return Err(StepError::permanent(format!(
                "{}: screen answered {} of {} commands",
                F::NAME,
                s.len(),
                commands.len()
            )));
        }
        Err(e) if e.is_transient() => return Err(e),
        Err(e) if commands.len() == 1 => return Ok(vec![Err(e)]),
        Err(_) => {}
    }
    let mut results = Vec::with_capacity(commands.len());
    for command in &commands {
        results.push(match f.screen(ctx, std::slice::from_ref(command)).await {
            Ok(mut s) if s.len() == 1 => Ok(s.remove(0)),
            Ok(_) => Err(StepError::permanent("screen answered no command")),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => Err(e),
        });
    }
    Ok(results)
}

/// Publishes answers decided without a transaction, waiting until JetStream stored them all.
/// `Err` for an outage; otherwise the messages (by index) that JetStream refused for a reason of
/// their own, each published alone to tell which.
async fn publish_direct(
    ctx: &Context,
    direct: Vec<(usize, OutboxMessage)>,
) -> Result<Vec<(usize, StepError)>, StepError> {
    let publisher = ctx.publisher();
    match publisher
        .publish_direct(direct.iter().map(|(_, m)| m))
        .await
    {
        Ok(()) => return Ok(Vec::new()),
        Err(e) if e.is_transient() => return Err(e),
        Err(_) => {}
    }
    let mut refused = Vec::new();
    for (index, message) in direct {
        match publisher.publish_direct(std::iter::once(&message)).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => refused.push((index, e)),
        }
    }
    Ok(refused)
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
    units: &[&Unit<F::Command>],
) -> Result<Decided, StepError> {
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let started = Instant::now();
    let decided = decide_in(f, ctx, &tx, units).await?;
    metrics::handler_seconds(F::NAME, started.elapsed().as_secs_f64());
    let committing = Instant::now();
    tx.commit().await?;
    metrics::committed(F::NAME, committing.elapsed().as_secs_f64());
    Ok(decided)
}

async fn decide_in<F: Function>(
    f: &F,
    ctx: &Context,
    tx: &Transaction<'_>,
    units: &[&Unit<F::Command>],
) -> Result<Decided, StepError> {
    let keys: Vec<(&str, Fingerprint)> = units.iter().map(|u| (u.key.as_str(), u.print)).collect();
    let claims = dedup::claim(tx, F::NAME, &keys).await?;
    let mut d = Decided::default();
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
                d.tally.rejected += 1;
                messages.push(rejection.clone().into_outbox(Vec::new()));
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
                Outcome::Done(out) => {
                    if out.iter().any(|m| m.rejection) {
                        d.tally.rejected += 1;
                    } else {
                        d.tally.completed += 1;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::arbitrary::json_value;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    proptest! {
        #[test]
        fn any_bytes_are_a_command_or_malformed(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Some((object, id)) = parse(&bytes, "deposit_id") {
                prop_assert!(crate::ids::is_valid(&id));
                prop_assert_eq!(object.get("deposit_id").and_then(Value::as_str), Some(id.as_str()));
            }
        }

        #[test]
        fn any_json_is_a_command_only_with_a_valid_id(v in json_value()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let id = v.get("deposit_id").and_then(Value::as_str).filter(|i| crate::ids::is_valid(i));
            let parsed = parse(&bytes, "deposit_id");
            prop_assert_eq!(
                parsed.as_ref().map(|(_, id)| id.as_str()),
                id.filter(|_| v.is_object() && bytes.len() <= MAX_COMMAND_BYTES)
            );
        }

        #[test]
        fn the_fingerprint_ignores_key_order_spacing_and_unknown_fields(
            id in "[a-z0-9-]{1,20}",
            user in any::<String>(),
            amount in any::<String>(),
            extra in any::<i64>(),
        ) {
            let fields = &["deposit_id", "user_id", "amount"];
            let a = format!(
                r#"{{"deposit_id":{},"user_id":{},"amount":{}}}"#,
                json!(id), json!(user), json!(amount)
            );
            let b = format!(
                r#"{{ "amount" : {}, "x": {extra}, "user_id": {}, "deposit_id": {} }}"#,
                json!(amount), json!(user), json!(id)
            );
            let (pa, _) = parse(a.as_bytes(), "deposit_id").unwrap();
            let (pb, _) = parse(b.as_bytes(), "deposit_id").unwrap();
            prop_assert_eq!(dedup::fingerprint(&pa, fields), dedup::fingerprint(&pb, fields));
            let other = json!({"deposit_id": id, "user_id": user, "amount": format!("{amount}0")});
            let (pc, _) = parse(&serde_json::to_vec(&other).unwrap(), "deposit_id").unwrap();
            prop_assert_ne!(dedup::fingerprint(&pa, fields), dedup::fingerprint(&pc, fields));
        }
    }

    #[test]
    fn a_command_over_64_kib_is_malformed() {
        let big = json!({"deposit_id": "d-1", "pad": "x".repeat(MAX_COMMAND_BYTES)});
        assert!(parse(&serde_json::to_vec(&big).unwrap(), "deposit_id").is_none());
        assert!(parse(br#"{"deposit_id":"d-1"}"#, "deposit_id").is_some());
        assert!(parse(br#"["deposit_id","d-1"]"#, "deposit_id").is_none());
    }
}
