//! The reservation reconciler: every live reservation ends committed or given back.
//!
//! A reservation lives in Redis from the moment a grant is reserved until the reconciler sees
//! its fate in PostgreSQL: committed with this reservation's token (it becomes committed in
//! Redis), committed under another reservation (a copy made after Redis lost the grant's record:
//! given back), or not committed `BONUS_RESERVATION_TIMEOUT` after it was made (a crash between
//! Redis and PostgreSQL, a grant PostgreSQL refused: given back). A give-back is first recorded
//! in `grant_releases` under the campaign's row lock, so a grant transaction that still holds
//! that reservation sees it gone and reserves again; Redis is updated after that commit, and a
//! give-back recorded but not yet applied is applied on the next pass.
//!
//! Safe with any number of replicas: a campaign whose row is locked (by a grant transaction or
//! another reconciler) is skipped this pass (`FOR UPDATE SKIP LOCKED`), and the Redis script acts
//! only on reservations whose token it was given.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use wallet_runtime::{CancellationToken, Context, StepError, metrics, partition};

use rust_decimal::Decimal;
use wallet_campaigns::reservations::{Action, Record, Reservations};
use wallet_campaigns::{campaign, loader};

/// Campaigns a pass could not reconcile (each is tried again on the next pass).
const RECONCILE_ERRORS: &str = "wallet_bonus_reconcile_errors_total";
/// Reservations given back (never committed in time, or committed under another token).
const RELEASES: &str = "wallet_bonus_reservations_released_total";

/// Reservations looked at per campaign and pass.
const LIMIT: isize = 1000;

/// With each campaign, the bound of what this database may still grant when it is below the
/// budget (a shard's: V14).
const CAMPAIGNS: &str = "
    SELECT id, redis_epoch, currency, nullif(least(budget, quota + spare_elsewhere), budget)
    FROM campaigns ORDER BY id";
const LOCK: &str = "SELECT redis_epoch FROM campaigns WHERE id = $1 FOR UPDATE SKIP LOCKED";
const COMMITTED: &str = "SELECT id, token FROM grants WHERE id = ANY($1)";
const RELEASED: &str = "SELECT grant_id, token FROM grant_releases WHERE grant_id = ANY($1)";
const RELEASE: &str = "
    INSERT INTO grant_releases (grant_id, token, partition)
    SELECT * FROM unnest($1::text[], $2::text[], $3::smallint[]) ON CONFLICT DO NOTHING";

pub async fn run(ctx: Arc<Context>, reservations: Reservations, shutdown: CancellationToken) {
    metrics::describe_counter(
        RECONCILE_ERRORS,
        "Campaigns a reconciler pass could not reconcile (tried again next pass)",
    );
    metrics::describe_counter(
        RELEASES,
        "Bonus reservations given back: never committed in time, or under another token",
    );
    let interval = (ctx.config.bonus_reservation_timeout / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = pass(&ctx, &reservations).await {
            tracing::warn!(error = %e, "bonus reconciler: will retry");
        }
    }
}

/// One pass over every campaign.
pub async fn pass(ctx: &Context, reservations: &Reservations) -> Result<(), StepError> {
    let campaigns: Vec<(String, i64, Option<i64>)> = ctx
        .pool
        .get()
        .await?
        .query(CAMPAIGNS, &[])
        .await?
        .iter()
        .map(|r| {
            let currency = ctx.config.currencies.get(r.get::<_, &str>(2));
            let bound = currency.zip(r.get::<_, Option<Decimal>>(3));
            (
                r.get(0),
                r.get(1),
                bound.map(|(c, b)| campaign::minor(b, c)),
            )
        })
        .collect();
    // Each campaign on its own: one that fails (its currency no longer configured, a record
    // that cannot be read) must not keep every later campaign's reserved budget from coming back.
    let mut first_error = None;
    for (campaign, pg_epoch, bound) in campaigns {
        if let Err(e) = pass_one(ctx, reservations, &campaign, pg_epoch, bound).await {
            metrics::counter(RECONCILE_ERRORS).increment(1);
            tracing::warn!(campaign, error = %e, "bonus reconciler: campaign not reconciled this pass");
            if e.is_transient() {
                return Err(e);
            }
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn pass_one(
    ctx: &Context,
    reservations: &Reservations,
    campaign: &str,
    pg_epoch: i64,
    bound: Option<i64>,
) -> Result<(), StepError> {
    // A loader that died between PostgreSQL and Redis leaves Redis on an older epoch (every
    // grant would be retried forever): load again. A campaign Redis does not hold at all is
    // loaded by its next grant.
    if let Some(epoch) = reservations.epoch(campaign).await?
        && epoch < pg_epoch
    {
        let mut client = ctx.pool.get().await?;
        loader::load(&mut client, &ctx.config.currencies, reservations, campaign).await?;
    }
    // On a shard, what the others have granted since the load comes off Redis's budget too.
    if let Some(bound) = bound {
        reservations.lower_budget(campaign, bound).await?;
    }
    reconcile(ctx, reservations, campaign).await
}

async fn reconcile(
    ctx: &Context,
    reservations: &Reservations,
    campaign: &str,
) -> Result<(), StepError> {
    let pending = reservations.pending(campaign, LIMIT).await?;
    if pending.is_empty() {
        return Ok(());
    }
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let Some(row) = tx.query_opt(LOCK, &[&campaign]).await? else {
        return Ok(()); // Busy (a grant batch or another reconciler): next pass.
    };
    let epoch: i64 = row.get(0);
    let ids: Vec<&str> = pending.iter().map(|(g, _, _)| g.as_str()).collect();
    let committed: HashMap<String, String> = tx
        .query(COMMITTED, &[&ids])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let released: HashSet<(String, String)> = tx
        .query(RELEASED, &[&ids])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let now = chrono::Utc::now().timestamp_millis();
    let timeout =
        i64::try_from(ctx.config.bonus_reservation_timeout.as_millis()).unwrap_or(i64::MAX);
    let mut decisions = Vec::new();
    let mut to_release: (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for (grant, at, record) in &pending {
        let Some(Record::Reserved(r)) = record else {
            // Committed or gone: only its place in the pending set is left.
            decisions.push((grant.clone(), String::new(), Action::Forget, String::new()));
            continue;
        };
        let action = if r.epoch != epoch {
            Action::Forget
        } else if let Some(token) = committed.get(grant) {
            if *token == r.token {
                Action::Commit
            } else {
                Action::Duplicate
            }
        } else if released.contains(&(grant.clone(), r.token.clone())) {
            Action::Release
        } else if now - at > timeout {
            to_release.0.push(grant);
            to_release.1.push(&r.token);
            to_release.2.push(&r.user);
            Action::Release
        } else {
            continue;
        };
        let pg_token = committed.get(grant).cloned().unwrap_or_default();
        decisions.push((grant.clone(), r.token.clone(), action, pg_token));
    }
    if !to_release.0.is_empty() {
        let partitions = partition::of_users(to_release.2.iter().copied());
        tx.execute(RELEASE, &[&to_release.0, &to_release.1, &partitions])
            .await?;
        tracing::info!(
            campaign,
            released = to_release.0.len(),
            "bonus reservations not committed in time given back"
        );
        metrics::counter(RELEASES).increment(to_release.0.len() as u64);
    }
    tx.commit().await?;
    drop(client);
    reservations.reconcile(campaign, &decisions).await
}
