//! Provider acks: `{transfer_id, status, amount?, provider_ref?, reason?}` on
//! `provider.<provider>.ack` finishes a pending transfer, out or in.
//! - Out: `accepted` moves its amount from `in_transit` to the provider's `game` wallet
//!   (`completed`); `rejected` returns it to `main` (`failed`).
//! - In: `accepted` credits `main` with the `amount` the provider returned, and the `game` wallet
//!   gives up what it held for the player (at most that amount when one was asked); the
//!   difference, the player's result at the provider, is posted against the platform account
//!   `game-results:<provider>`. No user wallet goes below zero whatever the provider returns, and
//!   an amount is counted once whatever the order of the transfers' commands and acks, since the
//!   game wallet is read under its lock. `rejected` moves nothing (`failed`).
//!
//! An ack is remembered by `<provider>:<transfer_id>:<status>`, so a repeat (same transfer, same
//! status, whatever its `provider_ref`) has no effect. The transfer's row, locked for the
//! transaction, decides the rest: an ack contradicting a finished transfer is dead-lettered
//! `ack_conflict`, one from another provider `provider_mismatch`, and one for a transfer nobody
//! knows is retried with growing delays until `UNKNOWN_TRANSFER_RETRY` after its first delivery,
//! then dead-lettered `unknown_transfer`; an `accepted` transfer in without a valid `amount`,
//! `invalid_amount`.

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;
use schemars::JsonSchema;
use wallet_runtime::answer::{self, Answer, Ending, SagaRow, Take};
use wallet_runtime::function::Transaction;
use wallet_runtime::interface::{Balance, Id, Interface, ProviderField};
use wallet_runtime::money::{AmountError, parse_amount};
use wallet_runtime::saga::{self, Saga};
use wallet_runtime::sweeper;
use wallet_runtime::wallet::{Kind, WalletKey};
use wallet_runtime::{
    CancellationToken, Command, Context, Event, Function, Invalid, Outcome, Payload, Status,
    StepError,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderAck;

#[derive(Debug)]
pub struct Ack {
    /// The `<provider>` token of the subject.
    pub provider: String,
    pub accepted: bool,
    /// What the provider returned, for a transfer in (checked against its currency when the
    /// transfer is found).
    pub amount: Option<serde_json::Value>,
    pub provider_ref: Option<String>,
    pub reason: Option<String>,
}

impl Answer for Ack {
    fn partner(&self) -> &str {
        &self.provider
    }

    fn positive(&self) -> bool {
        self.accepted
    }
}

impl SagaRow for Transfer {
    fn partner(&self) -> &str {
        &self.provider
    }

    fn ended(&self) -> Option<bool> {
        (self.status != "pending").then(|| self.status == "completed")
    }
}

impl Ack {
    fn status(&self) -> &'static str {
        if self.accepted {
            "accepted"
        } else {
            "rejected"
        }
    }
}

/// `provider.<provider>.ack` (CONTRACT §3): a provider's answer to `provider.<provider>.transfer`.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `validate` reads the payload.
pub struct AckCommand {
    /// The transfer it answers.
    transfer_id: Id,
    status: AckStatus,
    /// A transfer in, `accepted`: what the provider returned to the platform (its game wallet
    /// already debited), `"0"` when the player has nothing left there. Ignored for a transfer out.
    amount: Option<Balance>,
    /// The provider's own reference, kept with the transfer.
    provider_ref: Option<String>,
    /// Why the provider refused, kept with the transfer.
    reason: Option<String>,
}

#[derive(Debug, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum AckStatus {
    /// Out: the provider credited its game wallet. In: it debited it by `amount`, returned to
    /// `main`. The transfer completes.
    Accepted,
    /// The provider refused: a transfer out's amount returns to `main`; a transfer in moves
    /// nothing. The transfer fails.
    Rejected,
}

pub use wallet_runtime::answer::{ACK_CONFLICT, PROVIDER_MISMATCH};

/// `provider.<provider>.status` (CONTRACT §3): asks the provider to answer for a transfer.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; the sweeper writes the message.
pub struct StatusQuery {
    transfer_id: Id,
}
pub const UNKNOWN_TRANSFER: &str = "unknown_transfer";
/// An `accepted` transfer in whose `amount` is missing or not one of its currency.
pub const INVALID_AMOUNT: &str = "invalid_amount";

/// A transfer as an ack finds it.
#[derive(Debug)]
struct Transfer {
    user_id: String,
    provider: String,
    currency: String,
    /// Null for a transfer in asking for everything.
    amount: Option<Decimal>,
    status: String,
    inbound: bool,
}

/// Locked in id order: replicas finishing overlapping transfers never deadlock.
const LOCK: &str = "
    SELECT id, user_id, provider, currency, amount, status, direction = 'in' FROM transfers
    WHERE id = ANY($1) ORDER BY id FOR UPDATE";

const FINISH: &str = "
    UPDATE transfers t SET status = f.status, provider_ref = f.provider_ref, reason = f.reason,
           returned = CASE WHEN t.direction = 'in' AND f.status = 'completed' THEN f.returned END,
           taken = CASE WHEN t.direction = 'in' AND f.status = 'completed' THEN f.taken END,
           finished_at = now(), next_check_at = NULL
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::numeric[])
         AS f (id, status, provider_ref, reason, returned, taken)
    WHERE t.id = f.id";

impl Function for ProviderAck {
    const NAME: &'static str = "provider-ack";
    const ENTITY: &'static str = "transfer";
    const ID_FIELD: &'static str = "transfer_id";
    const FIELDS: &'static [&'static str] = &["transfer_id", "status"];
    type Command = Ack;

    fn interface() -> Interface {
        Interface::of::<Self>()
            .command::<AckCommand>(
                "provider.{provider}.ack",
                &[
                    ACK_CONFLICT,
                    PROVIDER_MISMATCH,
                    UNKNOWN_TRANSFER,
                    INVALID_AMOUNT,
                ],
            )
            .events::<ProviderField>(&[Status::COMPLETED, Status::FAILED, Status::STUCK], &[])
            .events_of::<ProviderField>(
                "transfer_in",
                &[Status::COMPLETED, Status::FAILED, Status::STUCK],
                &[],
            )
            .sends::<StatusQuery>(
                "provider-status",
                "provider.{provider}.status.{partition}",
                "Asks the provider about a transfer that has waited too long for its ack",
                "`<transfer_id>:status:<n>`, n the query's number",
            )
    }

    fn validate(
        &self,
        _ctx: &Context,
        subject: &str,
        _id: &str,
        p: &Payload,
    ) -> Result<Ack, Invalid> {
        let provider = answer::answerer(subject, "provider").ok_or(Invalid::Malformed)?;
        let accepted = match p.get("status").and_then(|s| s.as_str()) {
            Some("accepted") => true,
            Some("rejected") => false,
            _ => return Err(Invalid::Malformed),
        };
        Ok(Ack {
            provider: provider.to_owned(),
            accepted,
            amount: p.get("amount").cloned(),
            provider_ref: answer::free_text(p, "provider_ref"),
            reason: answer::free_text(p, "reason"),
        })
    }

    fn key(id: &str, ack: &Ack) -> String {
        format!("{}:{id}:{}", ack.provider, ack.status())
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<Ack>],
    ) -> Result<Vec<Outcome>, StepError> {
        let ids: Vec<&str> = commands.iter().map(|c| c.id.as_str()).collect();
        let transfers: HashMap<String, Transfer> = tx
            .query(LOCK, &[&ids])
            .await?
            .iter()
            .map(|r| {
                let transfer = Transfer {
                    user_id: r.get(1),
                    provider: r.get(2),
                    currency: r.get(3),
                    amount: r.get(4),
                    status: r.get(5),
                    inbound: r.get(6),
                };
                (r.get(0), transfer)
            })
            .collect();

        // Decide every ack in order first, so that only wallets that get a posting are opened.
        let (outcomes, endings) = answer::decide(
            ctx.config.transfers.unknown_retry,
            commands,
            &transfers,
            UNKNOWN_TRANSFER,
            |index, command, t| {
                let ack = &command.body;
                let currency = answer::currency(ctx, &command.id, &t.currency)?;
                let game = WalletKey::user(&t.user_id, Kind::Game, &t.provider, currency);
                let main = WalletKey::main(&t.user_id, currency);
                let in_transit =
                    WalletKey::user(&t.user_id, Kind::InTransit, &t.provider, currency);
                // The event shows what moved; a refused transfer in, what it asked for.
                let (from, take, to, amount, shown) = match (t.inbound, ack.accepted) {
                    (false, accepted) => {
                        let amount = t.amount.ok_or_else(|| {
                            StepError::permanent(format!(
                                "{}: a transfer out without an amount",
                                command.id
                            ))
                        })?;
                        let to = if accepted { game } else { main };
                        (in_transit, Take::Amount, to, amount, Some(amount))
                    }
                    (true, true) => {
                        let returned = match parse_amount(ack.amount.as_ref(), currency) {
                            Ok(a) => a,
                            Err(AmountError::NotPositive) => Decimal::ZERO,
                            Err(_) => return Ok(Err(Outcome::DeadLetter(INVALID_AMOUNT))),
                        };
                        let take = Take::Held {
                            up_to: t.amount.map(|_| returned),
                            difference: game.counterpart(&saga::GAME_RESULTS.account(&t.provider)),
                        };
                        (game, take, main, returned, Some(returned))
                    }
                    // Nothing moves: an ending of nothing, for the row and the event, whose
                    // balance is `main`'s (CONTRACT §4), so `main` is opened all the same.
                    (true, false) => (game, Take::Amount, main, Decimal::ZERO, t.amount),
                };
                let status = if ack.accepted {
                    Status::COMPLETED
                } else {
                    Status::FAILED
                };
                let saga = if t.inbound {
                    &saga::TRANSFERS_IN
                } else {
                    &saga::TRANSFERS
                };
                let event = Event {
                    user_id: Some(t.user_id.clone()),
                    currency: Some(currency.code().to_owned()),
                    amount: shown.map(|a| currency.format(a)),
                    ..Event::new(saga.entity, &command.id, status)
                }
                .with("provider", Some(&t.provider));
                Ok(Ok(Ending {
                    index,
                    posting: format!("{}:{}", Self::NAME, command.key),
                    from,
                    take,
                    to,
                    amount,
                    event,
                    id: &command.id,
                    status,
                    reference: ack.provider_ref.as_deref(),
                    reason: ack.reason.as_deref(),
                }))
            },
        )?;
        answer::end(ctx, tx, endings, FINISH, outcomes).await
    }

    fn background(
        &self,
        ctx: Arc<Context>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        // Both directions share their table, messages and answers; each has its own events.
        static SAGAS: [&Saga; 2] = [&saga::TRANSFERS, &saga::TRANSFERS_IN];
        sweeper::run_all(&SAGAS, ctx, shutdown)
    }
}
