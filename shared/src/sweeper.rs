//! The saga sweeper: asks partners about sagas that wait too long for their answer (a game
//! provider's ack of a transfer, a payment provider's answer to a payout), and reports the ones
//! that wait far too long.
//!
//! A pending row whose `next_check_at` has come gets `<status subject>` published, and its next
//! check is pushed back exponentially: `TRANSFER_ACK_TIMEOUT` × 2ⁿ after the n-th query, capped
//! at 5 minutes. Once it has been pending `TRANSFER_STUCK_AFTER`, one `stuck` event goes out (and
//! the queries go on). It never moves money: only the partner's answer does.
//!
//! Safe with any number of replicas and across restarts: its state is the saga's row, the due
//! rows are claimed with `FOR UPDATE SKIP LOCKED` (two sweepers never take the same row, and a
//! sweeper never waits for an answer that holds one), and the queries and the `stuck` event go
//! into the outbox in the transaction that advances the row, so each is published at least once
//! and the `stuck` event's id (`<entity>:<id>:stuck`) is committed exactly once.
//!
//! A saga's table has the sweeper's columns: `status` (`'pending'` while open), `created_at`,
//! `next_check_at`, `checks`, `last_check_at`, `stuck_at`, besides `id`, `user_id`, `currency`,
//! `amount` (null while unknown) and the partner's column; `Saga::rows` picks the saga's rows of a shared table.

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use crate::context::Context;
use crate::error::StepError;
use crate::events::{Event, Status};
use crate::metrics;
use crate::outbox::{self, OutboxMessage};
use crate::saga::Saga;

/// The longest wait between two status queries of one saga (CONTRACT §5).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Rows claimed per transaction.
const LIMIT: i64 = 500;

/// For the sweep's transaction only (why: [`advance`]). A function's sessions already price out
/// sequential scans (`db::POOLED_PLANS`).
const WALK_THE_INDEX: &str = "SET LOCAL enable_bitmapscan = off";

/// Claims due rows of `saga` and advances them in one statement. `$1` stuck-after, `$2` ack timeout,
/// `$3` the backoff cap, all in milliseconds. A row not stuck yet is next checked no later
/// than the moment it becomes stuck. `stuck_at = now()` holds only for rows this statement
/// marked: `now()` is the transaction's start, and earlier marks come from earlier
/// transactions.
///
/// The due rows are found through the table's partial index of pending rows (`*_due`). A row
/// that is answered leaves its entry behind until VACUUM removes it, so between two vacuums the
/// index holds an entry for every saga finished since the first: on a busy table, far more than
/// are pending. A bitmap scan, which the planner prefers for the few rows it expects, visits
/// every one of those entries and their heap pages on each pass (43 ms a pass for 422 pending
/// transfers among 177,000 finished, growing with the table: bench/ANALYSIS.md). A plain index
/// scan visits an entry whose row is gone for every transaction once and marks it dead, so the
/// next passes skip it (0.5 ms after the first pass there): [`WALK_THE_INDEX`].
///
/// A row of a partition that the database's map gives to another shard is left alone: a split
/// (`walletctl shards split`) has moved it, or is copying it (on one PostgreSQL the map is
/// empty).
fn advance(saga: &Saga) -> String {
    let Saga {
        table,
        rows,
        partner,
        ..
    } = saga;
    format!(
            "WITH due AS (
                SELECT id FROM {table}
                WHERE status = 'pending' AND next_check_at <= now() AND ({rows})
                  AND NOT EXISTS (SELECT 1 FROM partition_map m
                                  WHERE m.partition = {table}.partition
                                    AND m.shard IS DISTINCT FROM (SELECT name FROM shard_self))
                ORDER BY next_check_at
                LIMIT $4
                FOR UPDATE SKIP LOCKED),
            timing AS (
                SELECT $1::float8 * interval '1 millisecond' AS stuck_after,
                       $2::float8 * interval '1 millisecond' AS ack_timeout,
                       $3::float8 * interval '1 millisecond' AS cap)
            UPDATE {table} t SET
                checks = t.checks + 1,
                last_check_at = now(),
                stuck_at = CASE WHEN t.stuck_at IS NULL AND t.created_at + stuck_after <= now()
                                THEN now() ELSE t.stuck_at END,
                next_check_at = CASE WHEN t.stuck_at IS NULL AND t.created_at + stuck_after > now()
                                THEN least(now() + least(ack_timeout * power(2, least(t.checks + 1, 30)), cap),
                                           t.created_at + stuck_after)
                                ELSE now() + least(ack_timeout * power(2, least(t.checks + 1, 30)), cap) END
            FROM due, timing
            WHERE t.id = due.id
            RETURNING t.id, t.user_id, t.{partner}, t.currency, t.amount, t.checks,
                      coalesce(t.stuck_at = now(), false)"
        )
}

/// Sweeps `saga` until `shutdown`, often enough for short test timeouts, at most every second.
pub async fn run(saga: &'static Saga, ctx: Arc<Context>, shutdown: CancellationToken) {
    let partner = saga.partner;
    metrics::describe_counter(
        saga.queries_metric,
        "Status queries published to partners about sagas waiting for their answer",
    );
    metrics::describe_counter(
        saga.stuck_metric,
        "Sagas reported stuck: no answer from their partner after TRANSFER_STUCK_AFTER",
    );
    let interval = (ctx.config.transfers.ack_timeout / 2).min(Duration::from_secs(1));
    let advance = advance(saga);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        loop {
            match sweep(saga, &advance, &ctx).await {
                Ok(n) if n as i64 == LIMIT => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, entity = saga.entity, partner, "sweeper: will retry");
                    break;
                }
            }
        }
    }
}

/// Sweeps every saga of `sagas` until `shutdown` (one function answering several: transfers out
/// and in).
pub async fn run_all(
    sagas: &'static [&'static Saga],
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) {
    futures::future::join_all(
        sagas
            .iter()
            .map(|saga| run(saga, ctx.clone(), shutdown.clone())),
    )
    .await;
}

/// One pass: claims up to [`LIMIT`] due rows, commits their queries and `stuck` events, then
/// publishes them. Returns how many rows it advanced.
async fn sweep(saga: &Saga, advance: &str, ctx: &Context) -> Result<usize, StepError> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let timings = &ctx.config.transfers;
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute(WALK_THE_INDEX).await?;
    let rows = tx
        .query(
            advance,
            &[
                &ms(timings.stuck_after),
                &ms(timings.ack_timeout),
                &ms(MAX_BACKOFF),
                &LIMIT,
            ],
        )
        .await?;
    let mut messages = Vec::with_capacity(rows.len());
    let mut stuck_now = 0u64;
    for row in &rows {
        let (id, user_id, partner, currency, amount, checks, stuck): (
            String,
            String,
            String,
            String,
            Option<Decimal>,
            i32,
            bool,
        ) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
        );
        let mut query = serde_json::Map::new();
        query.insert(saga.id_field.to_owned(), id.clone().into());
        messages.push(OutboxMessage::new(
            // On the saga's user's partition, as its request went.
            crate::partition::subject(&format!("{}.{partner}.status", saga.prefix), &user_id),
            format!("{id}:status:{checks}"),
            &query,
        ));
        if stuck {
            stuck_now += 1;
            tracing::warn!(entity = saga.entity, id = %id, partner, "stuck: no answer from its partner");
            // A transfer in that asks for everything has no amount until its answer.
            let amount = amount.map(|a| match ctx.config.currencies.get(&currency) {
                Some(c) => c.format(a),
                None => a.to_string(),
            });
            let event = Event {
                user_id: Some(user_id),
                currency: Some(currency),
                amount,
                ..Event::new(saga.entity, &id, Status::STUCK)
            }
            .with(saga.partner, Some(&partner));
            messages.push(event.into_outbox(Vec::new()));
        }
    }
    let published = outbox::insert(&tx, messages).await?;
    tx.commit().await?;
    drop(client);
    metrics::counter(saga.queries_metric).increment(rows.len() as u64);
    metrics::counter(saga.stuck_metric).increment(stuck_now);
    if let Err(e) = ctx
        .publisher()
        .publish(published.into_iter().collect())
        .await
    {
        outbox::left_to_relay(&e);
    }
    Ok(rows.len())
}
