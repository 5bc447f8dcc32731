//! The transfer sweeper: asks providers about transfers that wait too long for their ack.
//!
//! A pending transfer whose `next_check_at` has come gets `provider.<provider>.status` published,
//! and its next check is pushed back exponentially: `TRANSFER_ACK_TIMEOUT` × 2ⁿ after the n-th
//! query, capped at 5 minutes. Once it has been pending `TRANSFER_STUCK_AFTER`, one `stuck` event
//! goes out (and the queries go on). It never moves money: only the provider's answer does.
//!
//! Safe with any number of replicas and across restarts: its state is the transfer row, the due
//! rows are claimed with `FOR UPDATE SKIP LOCKED` (two sweepers never take the same row, and a
//! sweeper never waits for an ack that holds one), and the queries and the `stuck` event go into
//! the outbox in the transaction that advances the row, so each is published at least once and
//! the `stuck` event's id (`transfer:<id>:stuck`) is committed exactly once.

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use wallet_runtime::outbox::{self, OutboxMessage};
use wallet_runtime::{CancellationToken, Context, Event, Status, StepError, metrics};

/// Status queries sent to providers about transfers still pending.
const STATUS_QUERIES: &str = "wallet_transfer_status_queries_total";
/// Transfers reported `stuck` (their `stuck` event committed).
const STUCK: &str = "wallet_transfers_stuck_total";

/// `provider.<provider>.status` (CONTRACT §3): asks the provider to answer for a transfer.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct StatusQuery {
    #[schemars(with = "wallet_runtime::interface::Id")]
    pub transfer_id: String,
}

/// The longest wait between two status queries of one transfer (CONTRACT §5).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Transfers claimed per transaction.
const LIMIT: i64 = 500;

/// Claims due transfers and advances them in one statement. `$1` stuck-after, `$2` ack timeout,
/// `$3` the backoff cap, all in milliseconds. A transfer not stuck yet is next checked no later
/// than the moment it becomes stuck. `stuck_at = now()` holds only for rows this statement
/// marked: `now()` is the transaction's start, and earlier marks come from earlier transactions.
const ADVANCE: &str = "
    WITH due AS (
        SELECT id FROM transfers
        WHERE status = 'pending' AND next_check_at <= now()
        ORDER BY next_check_at
        LIMIT $4
        FOR UPDATE SKIP LOCKED),
    timing AS (
        SELECT $1::float8 * interval '1 millisecond' AS stuck_after,
               $2::float8 * interval '1 millisecond' AS ack_timeout,
               $3::float8 * interval '1 millisecond' AS cap)
    UPDATE transfers t SET
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
    RETURNING t.id, t.user_id, t.provider, t.currency, t.amount, t.checks,
              coalesce(t.stuck_at = now(), false)";

/// Sweeps until `shutdown`, often enough for short test timeouts, at most every second.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    metrics::describe_counter(
        STATUS_QUERIES,
        "Status queries published to providers about transfers waiting for their ack",
    );
    metrics::describe_counter(
        STUCK,
        "Transfers reported stuck: no answer from their provider after TRANSFER_STUCK_AFTER",
    );
    let interval = (ctx.config.transfers.ack_timeout / 2).min(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        loop {
            match sweep(&ctx).await {
                Ok(n) if n as i64 == LIMIT => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "transfer sweeper: will retry");
                    break;
                }
            }
        }
    }
}

/// One pass: claims up to [`LIMIT`] due transfers, commits their queries and `stuck` events,
/// then publishes them. Returns how many transfers it advanced.
pub async fn sweep(ctx: &Context) -> Result<usize, StepError> {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let timings = &ctx.config.transfers;
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            ADVANCE,
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
        let (id, user_id, provider, currency, amount, checks, stuck): (
            String,
            String,
            String,
            String,
            Decimal,
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
        messages.push(OutboxMessage::new(
            format!("provider.{provider}.status"),
            format!("{id}:status:{checks}"),
            &StatusQuery {
                transfer_id: id.clone(),
            },
        ));
        if stuck {
            stuck_now += 1;
            tracing::warn!(transfer = %id, provider, "transfer stuck: no answer from its provider");
            let amount = match ctx.config.currencies.get(&currency) {
                Some(c) => c.format(amount),
                None => amount.to_string(),
            };
            let event = Event {
                user_id: Some(user_id),
                currency: Some(currency),
                amount: Some(amount),
                ..Event::new("transfer", &id, Status::STUCK)
            }
            .with("provider", Some(&provider));
            messages.push(event.into_outbox(Vec::new()));
        }
    }
    let published = outbox::insert(&tx, messages).await?;
    tx.commit().await?;
    drop(client);
    metrics::counter(STATUS_QUERIES).increment(rows.len() as u64);
    metrics::counter(STUCK).increment(stuck_now);
    if let Err(e) = ctx
        .publisher()
        .publish(published.into_iter().collect())
        .await
    {
        outbox::left_to_relay(&e);
    }
    Ok(rows.len())
}
