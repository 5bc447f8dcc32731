//! The `transfers` table, shared by transfers out and in. They share it so that they share one id
//! space: a provider's ack names only the transfer's id, and must find exactly one transfer.
//! Recording one is therefore one statement for both, and an id that another transfer (of either
//! direction, committed or being committed) already holds is not recorded, rather than a unique
//! violation that rolls back the whole batch.

use std::collections::HashSet;

use rust_decimal::Decimal;

use crate::Context;
use crate::error::StepError;
use crate::events::Reason;
use crate::function::Transaction;
use crate::money::Currency;
use crate::partition;

/// The rejection of a transfer whose id another transfer already holds.
pub const TRANSFER_EXISTS: Reason = Reason::new("transfer_exists");

/// Which way a transfer moves money: `out` to a provider's game wallet, `in` back to `main`.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Out,
    In,
}

/// A transfer to record as pending.
#[derive(Debug)]
pub struct Pending<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub provider: &'a str,
    pub currency: Currency,
    /// `None`: a transfer in of everything the player holds.
    pub amount: Option<Decimal>,
}

/// Pending; the sweeper's first status query is due after the ack timeout. A concurrent insert
/// of the same id waits for the other transaction and then does nothing if it committed.
const RECORD: &str = "
    INSERT INTO transfers
        (id, user_id, provider, currency, amount, partition, direction, next_check_at)
    SELECT t.*, $7::text, now() + $8::float8 * interval '1 millisecond'
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::smallint[]) AS t
    ON CONFLICT (id) DO NOTHING
    RETURNING id";

/// Which of the ids a transfer already holds (committed).
const TAKEN: &str = "SELECT id FROM transfers WHERE id = ANY($1)";

/// Records `pending` in the batch's transaction; returns the ids it recorded. An id it did not
/// record belongs to another transfer: the command is rejected with [`TRANSFER_EXISTS`].
pub async fn record<'a>(
    ctx: &Context,
    tx: &Transaction<'_>,
    direction: Direction,
    pending: &[Pending<'a>],
) -> Result<HashSet<String>, StepError> {
    if pending.is_empty() {
        return Ok(HashSet::new());
    }
    let column =
        |f: fn(&Pending<'a>) -> &'a str| -> Vec<&'a str> { pending.iter().map(f).collect() };
    let currencies: Vec<&str> = pending.iter().map(|p| p.currency.code()).collect();
    let amounts: Vec<Option<Decimal>> = pending.iter().map(|p| p.amount).collect();
    let partitions = partition::of_users(pending.iter().map(|p| p.user_id));
    let direction = match direction {
        Direction::Out => "out",
        Direction::In => "in",
    };
    let timeout_ms = ctx.config.transfers.ack_timeout.as_secs_f64() * 1000.0;
    Ok(tx
        .query(
            RECORD,
            &[
                &column(|p| p.id),
                &column(|p| p.user_id),
                &column(|p| p.provider),
                &currencies,
                &amounts,
                &partitions,
                &direction,
                &timeout_ms,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The ids among `ids` that a committed transfer already holds: for a function that must know
/// before it moves money ([`record`] then tells it of the rare one committed meanwhile).
pub async fn taken(tx: &Transaction<'_>, ids: &[&str]) -> Result<HashSet<String>, StepError> {
    Ok(tx
        .query(TAKEN, &[&ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
