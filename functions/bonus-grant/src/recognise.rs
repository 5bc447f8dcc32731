//! Copies of committed grants: Redis forgets a grant's record after 25 hours and loses every
//! record with its data, so a grant decided afresh in Redis may be one PostgreSQL committed
//! long ago. This is where PostgreSQL says which.

use std::collections::HashMap;

use wallet_campaigns::campaign;
use wallet_campaigns::reservations::{Action, Claim, Record, Reservation, Reservations, Reserved};
use wallet_runtime::{Context, StepError};

/// Committed grants among `ids`, with what their Redis record needs.
const COMMITTED: &str = "
    SELECT g.id, g.user_id, g.campaign_id, g.amount, g.token, c.currency, c.redis_epoch
    FROM grants g JOIN campaigns c ON c.id = g.campaign_id
    WHERE g.id = ANY($1)";

/// Redis keeps a grant's record for 25 hours, and loses everything with its data: a grant
/// decided afresh may be a copy of one committed long ago. PostgreSQL says which (one indexed
/// read per batch that decided anything afresh): a fresh reservation of one is given back at
/// once, a fresh rejection replaced, and both become its committed record, so that the copy
/// proceeds to dedup (a duplicate: nothing new) instead of being refused or holding budget.
/// The fresh rejections of grants PostgreSQL never committed are then marked checked, and only
/// then answered: a screen that fails before this point (PostgreSQL down) leaves them unchecked,
/// to be checked again by whoever reads them next (`make chaos` found a grant committed, its
/// command redelivered after Redis restarted empty, decided `limit_reached` afresh with
/// PostgreSQL down, and that rejection answered unchecked on the next try).
pub(crate) async fn committed(
    ctx: &Context,
    reservations: &Reservations,
    claims: &[Claim<'_>],
    results: &mut [Reserved],
) -> Result<(), StepError> {
    let fresh: Vec<&str> = claims
        .iter()
        .zip(results.iter())
        .filter(|(_, r)| matches!(r, Reserved::Record { fresh: true, .. }))
        .map(|(c, _)| c.grant)
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    let rows = ctx.pool.get().await?.query(COMMITTED, &[&fresh]).await?;
    let mut committed: HashMap<String, Reservation> = HashMap::new();
    for row in rows {
        let currency = ctx
            .config
            .currencies
            .get(row.get::<_, &str>(5))
            .ok_or_else(|| {
                StepError::permanent(format!(
                    "grant {}: its campaign's currency is no longer configured",
                    row.get::<_, &str>(0)
                ))
            })?;
        let r = Reservation {
            amount_minor: campaign::minor(row.get(3), currency),
            token: row.get(4),
            epoch: row.get(6),
            user: row.get(1),
            campaign: row.get(2),
        };
        committed.insert(row.get(0), r);
    }
    for (claim, result) in claims.iter().zip(results.iter_mut()) {
        let (
            Reserved::Record {
                record,
                fresh: true,
            },
            Some(c),
        ) = (&mut *result, committed.get(claim.grant))
        else {
            continue;
        };
        match record {
            Record::Reserved(r) => {
                let decision = (
                    claim.grant.to_owned(),
                    r.token.clone(),
                    Action::Duplicate,
                    c.token.clone(),
                );
                reservations.reconcile(&r.campaign, &[decision]).await?;
            }
            _ => {
                reservations
                    .remember_committed(claim.grant, &c.committed_record())
                    .await?
            }
        }
        tracing::info!(
            grant = claim.grant,
            "a copy of a committed grant, recognised in PostgreSQL"
        );
        *record = Record::Committed(c.clone());
    }
    // The other fresh rejections are checked now: answered from Redis alone from here on.
    let checked: Vec<&str> = claims
        .iter()
        .zip(results.iter())
        .filter(|(_, r)| {
            matches!(
                r,
                Reserved::Record {
                    record: Record::Rejected { .. },
                    fresh: true
                }
            )
        })
        .map(|(c, _)| c.grant)
        .collect();
    reservations.confirm(&checked).await
}
