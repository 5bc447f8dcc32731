//! The transactional outbox.
//!
//! A function never publishes from inside its transaction: it inserts its [`OutboxMessage`]s with
//! its effect, and they are published after the commit — so a message goes out if and only if its
//! effect committed, and at least once. A transaction's messages are one row (a batch of 1,000
//! deposits is one insert and one delete, not a thousand of each). Publishing a row means: write
//! its wallet snapshots to the balance cache (so that whoever receives an event and then asks for
//! the balance sees the effect), publish each message with its `Nats-Msg-Id` (JetStream drops a
//! re-publish inside the duplicate window), then delete the row. The process that committed a row
//! publishes it at once; the [`relay`] publishes whatever a crash or an outage left behind, on any
//! replica, with `FOR UPDATE SKIP LOCKED` so replicas share the work instead of repeating it.
//!
//! A committed row is no longer locked, so the relay must tell a row left behind from one its
//! committer is still publishing: a process never sweeps the rows it holds ([`InHand`]), and it
//! takes another replica's rows only once they are older than twice the oldest row it holds
//! itself. When publishing is slow (a loaded cluster), it is slow for every replica: a fixed age
//! made relays re-publish rows their committers were about to publish, doubling the load at the
//! moment there was least room for it (`make chaos CLUSTER=3` at 400 commands/s: 12 relay
//! transactions at once, and 43,898 repeated outcomes, re-published outside the duplicate window).

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use deadpool_postgres::{Pool, Transaction};
use tokio_util::sync::CancellationToken;

use crate::cache::BalanceCache;
use crate::error::StepError;
use crate::events::Reason;
use crate::metrics;
use crate::names::Names;
use crate::wallet::WalletSnapshot;

#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// Without the namespace prefix.
    pub subject: String,
    pub msg_id: String,
    /// Shared, so that publishing does not copy it.
    pub payload: bytes::Bytes,
    /// Balances to put in the cache before the message is published.
    pub wallets: Vec<WalletSnapshot>,
    /// The reason of a `rejected` event (counted as a rejection by reason, not stored).
    pub rejection: Option<Reason>,
    /// The W3C `traceparent` of the command it came from ([`crate::trace`]), published as a
    /// header so that whoever reads it continues the trace.
    pub traceparent: Option<String>,
}

impl OutboxMessage {
    /// A message that is not an outcome event (a request to a provider, a status query).
    pub fn new(subject: String, msg_id: String, payload: &impl serde::Serialize) -> Self {
        Self {
            subject,
            msg_id,
            payload: serde_json::to_vec(payload).unwrap_or_default().into(),
            wallets: Vec::new(),
            rejection: None,
            traceparent: None,
        }
    }
}

/// One transaction's messages, in publishing order: a row the current process committed, or the
/// relay claimed.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub messages: Vec<OutboxMessage>,
}

const INSERT: &str = "
    INSERT INTO outbox (subjects, msg_ids, payloads, wallets, traceparents)
    VALUES ($1, $2, $3, $4, $5)
    RETURNING id";

const CLAIM_STALE: &str = "
    SELECT id, subjects, msg_ids, payloads, wallets, traceparents FROM outbox
    WHERE created_at < now() - $1::bigint * interval '1 millisecond' AND id <> ALL($3)
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED";

const DELETE: &str = "DELETE FROM outbox WHERE id = ANY($1)";

/// Rows are deleted once published, but a deleted row stays in the table's pages until VACUUM, and
/// a sequential scan reads every one of them: without autovacuum, counting by one took 8.5 ms
/// after 3 minutes of `mixed-all-peak`, once a second in every process, and 15 ms over 200,000
/// deleted rows. Walking the primary key visits a deleted row's entry once and marks it dead, so
/// the next walks skip it: 0.4 ms over the same 200,000. A function's sessions price out
/// sequential scans (`db::POOLED_PLANS`), and with no condition to match there is no bitmap to
/// scan: the order by id is the primary key's walk.
const BACKLOG: &str = "
    SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
    FROM (SELECT created_at FROM outbox ORDER BY id) unpublished";

/// Inserts `messages` as one row in the caller's transaction; returns it, to publish after the
/// commit (none without messages).
pub async fn insert(
    tx: &Transaction<'_>,
    messages: Vec<OutboxMessage>,
) -> Result<Option<Row>, StepError> {
    if messages.is_empty() {
        return Ok(None);
    }
    let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
    let ids: Vec<&str> = messages.iter().map(|m| m.msg_id.as_str()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_ref()).collect();
    let wallets: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(&m.wallets).unwrap_or_else(|_| "[]".into()))
        .collect();
    let traces: Vec<Option<&str>> = messages.iter().map(|m| m.traceparent.as_deref()).collect();
    let row = tx
        .query_one(
            &tx.prepare_cached(INSERT).await?,
            &[&subjects, &ids, &payloads, &wallets, &traces],
        )
        .await?;
    Ok(Some(Row {
        id: row.get(0),
        messages,
    }))
}

/// A claimed row's messages; the CHECK of V5 keeps its arrays the same length.
fn messages(r: &tokio_postgres::Row) -> Result<Vec<OutboxMessage>, StepError> {
    let subjects: Vec<String> = r.try_get(1)?;
    let msg_ids: Vec<String> = r.try_get(2)?;
    let payloads: Vec<Vec<u8>> = r.try_get(3)?;
    let wallets: Vec<String> = r.try_get(4)?;
    // NULL in rows written before V8.
    let traces: Option<Vec<Option<String>>> = r.try_get(5)?;
    let mut traces = traces.unwrap_or_default().into_iter();
    Ok(subjects
        .into_iter()
        .zip(msg_ids)
        .zip(payloads)
        .zip(wallets)
        .map(|(((subject, msg_id), payload), wallets)| OutboxMessage {
            subject,
            msg_id,
            payload: payload.into(),
            wallets: serde_json::from_str(&wallets).unwrap_or_default(),
            rejection: None,
            traceparent: traces.next().flatten(),
        })
        .collect())
}

fn ids_of(rows: &[Row]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

/// The rows this process committed and has not yet published, and since when it holds each.
/// Shared by a process's publishers and its relay.
#[derive(Debug, Clone, Default)]
pub struct InHand(Arc<Mutex<HashMap<i64, Instant>>>);

impl InHand {
    /// Called once the rows' transaction committed, before they wait for a publisher; a row
    /// taken again keeps its first time.
    pub fn take(&self, rows: &[Row]) {
        let now = Instant::now();
        let mut held = self.lock();
        for r in rows {
            held.entry(r.id).or_insert(now);
        }
    }

    /// Published and deleted, or given up to the relay after an error.
    fn release(&self, ids: &[i64]) {
        let mut held = self.lock();
        for id in ids {
            held.remove(id);
        }
    }

    /// The ids held, and how long the oldest has been.
    fn held(&self) -> (Vec<i64>, Duration) {
        let held = self.lock();
        let oldest = held.values().min().map_or(Duration::ZERO, Instant::elapsed);
        (held.keys().copied().collect(), oldest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        // A map of ids is consistent at every step: a panic elsewhere leaves nothing to repair.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Publishes outbox rows: cache first, then JetStream, then the rows are deleted.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub pool: Pool,
    pub js: jetstream::Context,
    pub cache: BalanceCache,
    pub names: Names,
    pub in_hand: InHand,
}

impl Publisher {
    /// Publishes rows this process committed, then deletes them; the relay leaves them alone
    /// meanwhile. On error nothing is deleted and the relay publishes them later.
    pub async fn publish(&self, rows: Vec<Row>) -> Result<(), StepError> {
        self.in_hand.take(&rows);
        let ids = ids_of(&rows);
        let done = match self.send(&rows).await {
            Ok(()) => self.delete(&ids).await,
            Err(e) => Err(e),
        };
        self.in_hand.release(&ids);
        done
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), StepError> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        client
            .execute(&client.prepare_cached(DELETE).await?, &[&ids])
            .await?;
        Ok(())
    }

    /// Publishes messages that are in no outbox (answers decided without PostgreSQL) and waits
    /// until JetStream stored them all.
    pub async fn publish_direct<'a>(
        &self,
        messages: impl Iterator<Item = &'a OutboxMessage> + Clone,
    ) -> Result<(), StepError> {
        self.send_messages(messages).await
    }

    /// Cache, then JetStream. Holds no database connection, so a caller inside a transaction
    /// never waits on the pool for a second one.
    async fn send(&self, rows: &[Row]) -> Result<(), StepError> {
        let messages = rows.iter().flat_map(|r| &r.messages);
        self.send_messages(messages.clone()).await?;
        metrics::outbox_published(messages.count());
        Ok(())
    }

    async fn send_messages(
        &self,
        messages: impl Iterator<Item = &OutboxMessage> + Clone,
    ) -> Result<(), StepError> {
        if messages.clone().next().is_none() {
            return Ok(());
        }
        let wallets: Vec<WalletSnapshot> = messages
            .clone()
            .flat_map(|m| m.wallets.iter().cloned())
            .collect();
        self.cache.write_through(&wallets).await?;
        let messages: Vec<&OutboxMessage> = messages.collect();
        for round in messages.chunks(ACKS_PER_ROUND) {
            let mut acks = Vec::with_capacity(round.len());
            for message in round {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", message.msg_id.as_str());
                if let Some(traceparent) = &message.traceparent {
                    headers.insert(crate::trace::TRACEPARENT, traceparent.as_str());
                }
                let subject = self.names.subject(&message.subject);
                let ack = self
                    .js
                    .publish_with_headers(subject, headers, message.payload.clone())
                    .await?;
                acks.push(ack.into_future());
            }
            for ack in futures::future::join_all(acks).await {
                ack?;
            }
        }
        Ok(())
    }

    /// Publishes rows older than `age` that nobody is publishing (see the module's docs for how
    /// a process judges that); returns how many messages.
    pub async fn sweep(&self, age: Duration, limit: i64) -> Result<usize, StepError> {
        let (held, oldest) = self.in_hand.held();
        let age = age.max(oldest * 2);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let rows = tx
            .query(CLAIM_STALE, &[&age_ms, &limit, &held])
            .await?
            .iter()
            .map(|r| {
                Ok(Row {
                    id: r.try_get(0)?,
                    messages: messages(r)?,
                })
            })
            .collect::<Result<Vec<Row>, StepError>>()?;
        let count = rows.iter().map(|r| r.messages.len()).sum();
        // Publishing under the row locks: another replica's relay skips these rows meanwhile.
        self.send(&rows).await?;
        let ids = ids_of(&rows);
        if !ids.is_empty() {
            tx.execute(DELETE, &[&ids]).await?;
        }
        tx.commit().await?;
        Ok(count)
    }

    /// The unpublished rows and the age of the oldest, in seconds.
    pub async fn backlog(&self) -> Result<(i64, f64), StepError> {
        let row = self.pool.get().await?.query_one(BACKLOG, &[]).await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}

/// The publish acks one sender awaits at a time. A JetStream context bounds the acks a process has
/// in flight (`runtime::connect` sets the bound); each publish takes a permit that its ack
/// returns, and a publish with no permit left waits for one. A sender that published more than the
/// bound before awaiting any ack would wait for permits its own unawaited acks hold, forever, and
/// every other publish of the process with it: `make chaos CLUSTER=3` found a relay sweep of 8
/// rows (5,489 events) that stalled its process against async-nats's default bound of 5,000.
/// Sending in rounds keeps what a sender holds while it waits under one round.
pub(crate) const ACKS_PER_ROUND: usize = 1_000;

/// Rows the relay claims at a time: a row holds up to `BATCH_MAX` messages.
const RELAY_ROWS: i64 = 8;

/// Says that events stay in the outbox for the relay's next sweep: a warning, unless another
/// publisher was storing the same message at that moment.
pub fn left_to_relay(e: &StepError) {
    if e.is_publish_race() {
        tracing::debug!(error = %e, "events not published here: another publisher is storing them; the outbox relay will check");
    } else {
        tracing::warn!(error = %e, "events not published yet; the outbox relay will retry");
    }
}

/// Runs [`Publisher::sweep`] every `interval` until `shutdown`.
pub async fn relay(publisher: Publisher, interval: Duration, shutdown: CancellationToken) {
    // Rows younger than this are still being published by the process that committed them.
    let age = Duration::from_secs(2).max(interval * 2);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match publisher.backlog().await {
            Ok((rows, oldest)) => metrics::outbox_backlog(rows, oldest),
            Err(e) => tracing::debug!(error = %e, "outbox backlog not measured"),
        }
        loop {
            match publisher.sweep(age, RELAY_ROWS).await {
                Ok(n) if n > 0 => {
                    tracing::info!(published = n, "outbox relay published events left behind");
                    continue;
                }
                Ok(_) => break,
                Err(e) => {
                    left_to_relay(&e);
                    break;
                }
            }
        }
    }
}
