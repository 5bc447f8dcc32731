//! Loading a campaign from PostgreSQL into Redis, under a new epoch.
//!
//! Called when Redis does not hold a campaign (creation, a restart of Redis, `FLUSHALL`, a
//! failover) and when Redis holds an older epoch than PostgreSQL (a loader that died between the
//! two). The new epoch is committed in PostgreSQL under the campaign's row lock, with the committed
//! totals read in that same transaction; Redis then takes the state unless it already holds this
//! epoch or a later one. A grant transaction compares its reservation's epoch with PostgreSQL's
//! under the same lock, so a reservation made before the reload is made again, never committed
//! uncounted. The committed grants' records are restored too, so that a copy of a granted grant
//! arriving after Redis lost its data is recognised as a duplicate instead of judged again.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use wallet_runtime::StepError;
use wallet_runtime::money::Currencies;

use crate::campaign::{self, Amount, minor};
use crate::reservations::{Reservations, State};

const LOCK: &str = "SELECT id FROM campaigns WHERE id = $1 FOR UPDATE";
const BUMP: &str = "UPDATE campaigns SET redis_epoch = redis_epoch + 1 WHERE id = $1 RETURNING redis_epoch, granted";
const USERS: &str = "SELECT user_id, count(*) FROM grants WHERE campaign_id = $1 GROUP BY user_id";
const GRANTS: &str = "SELECT id, user_id, amount, token FROM grants WHERE campaign_id = $1";

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
    let (epoch, granted): (i64, Decimal) = (bumped.get(0), bumped.get(1));
    let users: Vec<(String, i64)> = tx
        .query(USERS, &[&id])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let grants: Vec<(String, String, Decimal, String)> = tx
        .query(GRANTS, &[&id])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    tx.commit().await?;
    let cur = c.currency;
    let state = State {
        epoch,
        reserved: minor(granted, cur),
        starts_ms: millis(c.starts),
        ends_ms: millis(c.ends),
        per_user: c.per_user,
        budget: minor(c.budget, cur),
        amount: match c.amount {
            Amount::Fixed(a) => Ok(minor(a, cur)),
            Amount::Between(lo, hi) => Err((minor(lo, cur), minor(hi, cur))),
        },
        users,
    };
    // Committed grants are remembered first, so that from the moment the campaign appears in
    // Redis a copy of one is recognised as a duplicate, never judged again (no grant is answered
    // while the campaign is absent).
    let committed: Vec<(String, String)> = grants
        .into_iter()
        .map(|(grant, user, amount, token)| {
            let record = format!("C|{}|{token}|{epoch}|{user}|{id}", minor(amount, cur));
            (grant, record)
        })
        .collect();
    reservations.remember_committed(epoch, &committed).await?;
    if reservations.load(id, &state).await? {
        tracing::info!(
            campaign = id,
            epoch,
            grants = committed.len(),
            "campaign loaded into Redis"
        );
    }
    Ok(Loaded::Loaded)
}
