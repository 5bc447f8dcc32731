//! Loading a campaign from PostgreSQL into Redis, under a new epoch.
//!
//! Called when Redis does not hold a campaign (creation, a restart of Redis, `FLUSHALL`, a
//! failover) and when Redis holds an older epoch than PostgreSQL (a loader that died between the
//! two). The new epoch is committed in PostgreSQL under the campaign's row lock, with the committed
//! totals read in that same transaction; Redis then takes the state unless it already holds this
//! epoch or a later one. A grant transaction compares its reservation's epoch with PostgreSQL's
//! under the same lock, so a reservation made before the reload is made again, never committed
//! uncounted. Committed grants' own records are not restored (a campaign may have millions): a
//! copy of one is decided afresh and then recognised in PostgreSQL (see the screen).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use wallet_runtime::StepError;
use wallet_runtime::money::Currencies;

use crate::campaign::{self, Amount, minor};
use crate::reservations::{Reservations, State};

const LOCK: &str = "SELECT id FROM campaigns WHERE id = $1 FOR UPDATE";
/// What this database may still grant is its quota; what any shard may is at most its quota plus
/// what the others had left (an upper bound, V14). Redis refuses `campaign_exhausted` past that
/// bound, so a refusal there is certain; PostgreSQL holds each grant to the quota.
const BUMP: &str = "
    UPDATE campaigns SET redis_epoch = redis_epoch + 1 WHERE id = $1
    RETURNING redis_epoch, granted, least(budget, quota + spare_elsewhere)";
const USERS: &str = "SELECT user_id, count(*) FROM grants WHERE campaign_id = $1 GROUP BY user_id";

/// Whether the campaign exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    Loaded,
    Unknown,
}

fn millis(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

/// Loads `id` into Redis under a new epoch.
pub async fn load(
    client: &mut tokio_postgres::Client,
    currencies: &Currencies,
    reservations: &Reservations,
    id: &str,
) -> Result<Loaded, StepError> {
    let tx = client.transaction().await?;
    if tx.query_opt(LOCK, &[&id]).await?.is_none() {
        return Ok(Loaded::Unknown);
    }
    let row = tx
        .query_one(&format!("{} WHERE id = $1", campaign::SELECT), &[&id])
        .await?;
    let c = campaign::from_row(&row, currencies).ok_or_else(|| {
        StepError::permanent(format!(
            "campaign {id}: its currency is no longer configured"
        ))
    })?;
    let bumped = tx.query_one(BUMP, &[&id]).await?;
    let (epoch, granted, bound): (i64, Decimal, Decimal) =
        (bumped.get(0), bumped.get(1), bumped.get(2));
    let users: Vec<(String, i64)> = tx
        .query(USERS, &[&id])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    tx.commit().await?;
    let cur = c.currency;
    let state = State {
        epoch,
        reserved: minor(granted, cur),
        starts_ms: millis(c.starts),
        ends_ms: millis(c.ends),
        per_user: c.per_user,
        budget: minor(bound, cur),
        amount: match c.amount {
            Amount::Fixed(a) => Ok(minor(a, cur)),
            Amount::Between(lo, hi) => Err((minor(lo, cur), minor(hi, cur))),
        },
        users,
    };
    if reservations.load(id, &state).await? {
        tracing::info!(campaign = id, epoch, "campaign loaded into Redis");
    }
    Ok(Loaded::Loaded)
}
