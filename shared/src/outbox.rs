//! The transactional outbox.
//!
//! A function never publishes from inside its transaction: it inserts [`OutboxMessage`]s with its
//! effect, and they are published after the commit — so a message goes out if and only if its
//! effect committed, and at least once. Publishing a row means: write its wallet snapshots to the
//! balance cache (so that whoever receives the event and then asks for the balance sees the
//! effect), publish with its `Nats-Msg-Id` (JetStream drops a re-publish inside the duplicate
//! window), then delete the row. The process that committed the rows publishes them at once; the
//! [`Relay`] publishes whatever a crash or an outage left behind, on any replica, with
//! `FOR UPDATE SKIP LOCKED` so replicas share the work instead of repeating it.

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use deadpool_postgres::{Pool, Transaction};
use tokio_util::sync::CancellationToken;

use crate::cache::{BalanceCache, WalletSnapshot};
use crate::error::StepError;
use crate::names::Names;

#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// Without the namespace prefix.
    pub subject: String,
    pub msg_id: String,
    /// Shared, so that publishing does not copy it.
    pub payload: bytes::Bytes,
    /// Balances to put in the cache before the message is published.
    pub wallets: Vec<WalletSnapshot>,
}

/// A row the current process committed, or the relay claimed.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub message: OutboxMessage,
}

const INSERT: &str = "
    INSERT INTO outbox (subject, msg_id, payload, wallets)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[])
    RETURNING id";

const CLAIM_STALE: &str = "
    SELECT id, subject, msg_id, payload, wallets FROM outbox
    WHERE created_at < now() - $1::bigint * interval '1 millisecond'
    ORDER BY id LIMIT $2
    FOR UPDATE SKIP LOCKED";

const DELETE: &str = "DELETE FROM outbox WHERE id = ANY($1)";

/// Inserts `messages` in the caller's transaction; returns the rows to publish after the commit.
pub async fn insert(
    tx: &Transaction<'_>,
    messages: Vec<OutboxMessage>,
) -> Result<Vec<Row>, StepError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let subjects: Vec<&str> = messages.iter().map(|m| m.subject.as_str()).collect();
    let ids: Vec<&str> = messages.iter().map(|m| m.msg_id.as_str()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_ref()).collect();
    let wallets: Vec<String> = messages
        .iter()
        .map(|m| serde_json::to_string(&m.wallets).unwrap_or_else(|_| "[]".into()))
        .collect();
    let rows = tx
        .query(
            &tx.prepare_cached(INSERT).await?,
            &[&subjects, &ids, &payloads, &wallets],
        )
        .await?;
    // RETURNING follows the order of the inserted rows, which follows unnest's.
    Ok(rows
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .zip(messages)
        .map(|(id, message)| Row { id, message })
        .collect())
}

/// Publishes outbox rows: cache first, then JetStream, then the rows are deleted.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub pool: Pool,
    pub js: jetstream::Context,
    pub cache: BalanceCache,
    pub names: Names,
}

impl Publisher {
    /// Publishes rows this process committed, then deletes them. On error nothing is deleted
    /// and the relay publishes them later.
    pub async fn publish(&self, rows: Vec<Row>) -> Result<(), StepError> {
        let ids = self.send(rows).await?;
        if !ids.is_empty() {
            let client = self.pool.get().await?;
            client
                .execute(&client.prepare_cached(DELETE).await?, &[&ids])
                .await?;
        }
        Ok(())
    }

    /// Publishes messages that are in no outbox (answers decided without PostgreSQL) and waits
    /// until JetStream stored them all.
    pub async fn publish_direct(&self, messages: &[OutboxMessage]) -> Result<(), StepError> {
        self.send_messages(messages.iter()).await
    }

    /// Cache, then JetStream; returns the ids of the rows sent. Holds no database connection, so
    /// a caller inside a transaction never waits on the pool for a second one.
    async fn send(&self, rows: Vec<Row>) -> Result<Vec<i64>, StepError> {
        self.send_messages(rows.iter().map(|r| &r.message)).await?;
        metrics::counter!("wallet_outbox_published_total").increment(rows.len() as u64);
        Ok(rows.iter().map(|r| r.id).collect())
    }

    async fn send_messages(
        &self,
        messages: impl ExactSizeIterator<Item = &OutboxMessage> + Clone,
    ) -> Result<(), StepError> {
        if messages.len() == 0 {
            return Ok(());
        }
        let wallets: Vec<WalletSnapshot> = messages
            .clone()
            .flat_map(|m| m.wallets.iter().cloned())
            .collect();
        self.cache.write_through(&wallets).await?;
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", message.msg_id.as_str());
            let subject = self.names.subject(&message.subject);
            let ack = self
                .js
                .publish_with_headers(subject, headers, message.payload.clone())
                .await
                .map_err(StepError::transient)?;
            acks.push(ack.into_future());
        }
        for ack in futures::future::join_all(acks).await {
            ack.map_err(StepError::transient)?;
        }
        Ok(())
    }

    /// Publishes rows older than `age` that nobody else is publishing; returns how many.
    pub async fn sweep(&self, age: Duration, limit: i64) -> Result<usize, StepError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let rows: Vec<Row> = tx
            .query(CLAIM_STALE, &[&age_ms, &limit])
            .await?
            .iter()
            .map(|r| Row {
                id: r.get(0),
                message: OutboxMessage {
                    subject: r.get(1),
                    msg_id: r.get(2),
                    payload: r.get::<_, Vec<u8>>(3).into(),
                    wallets: serde_json::from_str(r.get(4)).unwrap_or_default(),
                },
            })
            .collect();
        // Publishing under the row locks: another replica's relay skips these rows meanwhile.
        let ids = self.send(rows).await?;
        if !ids.is_empty() {
            tx.execute(DELETE, &[&ids]).await?;
        }
        tx.commit().await?;
        Ok(ids.len())
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
        loop {
            match publisher.sweep(age, 500).await {
                Ok(n) if n > 0 => {
                    tracing::info!(published = n, "outbox relay published events left behind");
                    continue;
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: will retry");
                    break;
                }
            }
        }
    }
}
