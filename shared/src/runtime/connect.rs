//! Connecting: NATS, PostgreSQL and Redis at start-up, the function's consumer once it exists,
//! and the backoff every wait for a dependency uses.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{PullConsumer, pull};
use tokio_util::sync::CancellationToken;

use super::StartError;
use crate::cache::BalanceCache;
use crate::config::Config;
use crate::context::Context;
use crate::db;
use crate::error::StepError;
use crate::ledger::Ledger;
use crate::outbox;
use crate::streams::ConsumerDef;

/// Connects to NATS, PostgreSQL and Redis. NATS and PostgreSQL connect lazily and reconnect by
/// themselves; Redis is awaited here. `Ok(None)`: shut down while waiting.
pub(super) async fn connect(
    name: &str,
    config: Config,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<Context>>, StartError> {
    let nats = config
        .nats_auth
        .options()
        .await
        .map_err(StartError::NatsCreds)?
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(
            config
                .nats_url
                .split(',')
                .map(str::trim)
                .collect::<Vec<_>>()
                .as_slice(),
        )
        .await
        .map_err(StartError::Nats)?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(acks_in_flight(config.batches_in_flight))
        .build(nats.clone());
    let pool = db::pool(&config).map_err(StartError::Postgres)?;
    let client = crate::cache::client(&config).map_err(StartError::Redis)?;
    let manager_config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let mut backoff = Backoff::default();
    let redis = loop {
        match redis::aio::ConnectionManager::new_with_config(client.clone(), manager_config.clone())
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "redis unavailable; retrying");
                if !pause(backoff.delay(), shutdown).await {
                    return Ok(None);
                }
            }
        }
    };
    let names = config.names.clone();
    Ok(Some(Arc::new(Context {
        cache: BalanceCache::new(redis.clone(), names.clone()),
        redis,
        ledger: Ledger::default(),
        in_hand: Default::default(),
        names,
        nats,
        js,
        pool,
        config,
    })))
}

/// Checks that `DATABASE_URL` is the database of the shard `SHARD` names (or of none, with
/// `SHARD` unset), waiting out a PostgreSQL that is down; returns the partitions the database's
/// map gives that shard (none without `SHARD`). `Ok(None)`: shut down while waiting.
///
/// A process pointed at another shard's database would decide its shard's commands in a ledger
/// that does not hold their users, and one without `SHARD` on a shard's database would wait for
/// a consumer that never exists: both are refused at start, in one line.
pub(super) async fn check_shard(
    ctx: &Context,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<u16>>, StartError> {
    let mut backoff = Backoff::default();
    let found = loop {
        match shard_of_database(ctx).await {
            Ok(found) => break found,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "postgres unavailable; retrying");
                if !pause(backoff.delay(), shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(StartError::Postgres(db::DbError::Postgres(e.to_string()))),
        }
    };
    let wanted = ctx.config.shard.as_deref();
    let (found, partitions) = found.unzip();
    if found.as_deref() == wanted {
        return Ok(Some(partitions.unwrap_or_default()));
    }
    Err(StartError::Shard(match (wanted, found) {
        (Some(w), Some(f)) => format!("SHARD={w}, but DATABASE_URL is shard `{f}`'s database"),
        (Some(w), None) => format!(
            "SHARD={w}, but DATABASE_URL is no shard's database (has `walletctl setup` run with SHARDS_FILE?)"
        ),
        (None, Some(f)) => format!("DATABASE_URL is shard `{f}`'s database: set SHARD={f}"),
        (None, None) => unreachable!("equal"),
    }))
}

/// The shard the database is (`shard_self`), and the partitions its map gives that shard, in
/// order; `None` when it is no shard's.
pub(super) async fn shard_of_database(
    ctx: &Context,
) -> Result<Option<(String, Vec<u16>)>, StepError> {
    let row = ctx
        .pool
        .get()
        .await?
        .query_opt(
            "SELECT s.name, array_agg(m.partition ORDER BY m.partition)
                    FILTER (WHERE m.partition IS NOT NULL)
             FROM shard_self s LEFT JOIN partition_map m ON m.shard = s.name
             GROUP BY s.name",
            &[],
        )
        .await?;
    Ok(row.map(|r| {
        let partitions: Option<Vec<i16>> = r.get(1);
        let partitions = partitions.unwrap_or_default();
        (
            r.get::<_, String>(0),
            partitions
                .into_iter()
                .filter_map(|p| u16::try_from(p).ok())
                .collect(),
        )
    }))
}

/// Exponential backoff from 100 ms to 5 s: short enough to keep held messages alive (progress
/// acks go out at every step), long enough not to hammer a dependency that is down.
#[derive(Debug, Default)]
pub struct Backoff(u32);

impl Backoff {
    pub fn delay(&mut self) -> Duration {
        let d = Duration::from_millis(100 << self.0.min(6)).min(Duration::from_secs(5));
        self.0 += 1;
        d
    }

    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Sleeps `d`; false when `shutdown` came first.
pub(super) async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

pub(super) async fn bind(
    ctx: &Context,
    def: &ConsumerDef,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let shard = ctx.config.shard.as_deref();
    let (stream, name) = (
        ctx.names.name(&def.stream_on(shard)),
        ctx.names.name(&def.durable(shard)),
    );
    let mut backoff = Backoff::default();
    loop {
        let found = async {
            ctx.js
                .get_stream_no_info(&stream)
                .await?
                .get_consumer::<pull::Config>(&name)
                .await
        };
        match found.await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(stream, consumer = name, error = %e, "consumer unavailable (has `walletctl setup` run?); retrying")
            }
        }
        if !pause(backoff.delay(), shutdown).await {
            return None;
        }
    }
}

/// The publish acks a process may await at once, for `loops` consume loops: more than its senders
/// can hold together while one of them waits for a permit, so that none waits for good (see
/// [`outbox::ACKS_PER_ROUND`]). Senders of many messages (each loop's screened answers and its
/// committed events, the outbox relay, a function's sweeper) hold at most one round each; dead
/// letters, one ack each, at most what a loop settles at once.
fn acks_in_flight(loops: usize) -> usize {
    (2 * loops + 2) * outbox::ACKS_PER_ROUND + loops * super::settle::SETTLING_AT_ONCE
}
