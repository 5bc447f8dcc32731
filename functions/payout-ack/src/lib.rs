//! Payout answers: `{withdraw_id, status, psp_ref?, reason?}` on `payout.<psp>.ack` settles a
//! pending withdrawal. `paid` moves its amount from the user's `held` wallet to the platform's
//! `payouts:<psp>` account (the money has left for the user's bank or card); `declined` returns
//! it to `main` and gives it back to the day's withdrawal limit.
//!
//! An answer is remembered by `<psp>:<withdraw_id>:<status>`, so a repeat has no effect. The
//! withdrawal's row, locked for the transaction, decides the rest ([`wallet_runtime::answer`]):
//! an answer contradicting a settled withdrawal is dead-lettered `ack_conflict`, one from another
//! provider `provider_mismatch`, and one for a withdrawal nobody knows is retried with growing
//! delays until `TRANSFER_UNKNOWN_RETRY` after its first delivery, then dead-lettered
//! `unknown_withdrawal`.
//!
//! Every replica also runs the sweeper over withdrawals ([`wallet_runtime::sweeper`]): one that
//! waits `TRANSFER_ACK_TIMEOUT` for its answer gets `payout.<psp>.status` published (then with
//! backoff), and one pending `TRANSFER_STUCK_AFTER` one `stuck` event.
//!
//! Locks, in this order, as `withdraw` takes the last two: the withdrawals (by id), their
//! days' limit rows (by key, for a `declined` one), the wallets (by the ledger's order).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use schemars::JsonSchema;
use wallet_runtime::answer::{self, ACK_CONFLICT, Ending, PROVIDER_MISMATCH, SagaRow, Take};
use wallet_runtime::function::Transaction;
use wallet_runtime::interface::{Id, Interface};
use wallet_runtime::saga;
use wallet_runtime::sweeper;
use wallet_runtime::wallet::{Kind, WalletKey};
use wallet_runtime::{
    CancellationToken, Command, Context, Event, Function, Invalid, Outcome, Payload, Status,
    StepError,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct PayoutAck;

pub use withdraw::ENTITY;
pub const PAID: Status = Status::new("paid");
pub const DECLINED: Status = Status::new("declined");
pub const UNKNOWN_WITHDRAWAL: &str = "unknown_withdrawal";

#[derive(Debug)]
pub struct Answer {
    /// The `<psp>` token of the subject.
    pub psp: String,
    pub paid: bool,
    pub psp_ref: Option<String>,
    pub reason: Option<String>,
}

impl answer::Answer for Answer {
    fn partner(&self) -> &str {
        &self.psp
    }

    fn positive(&self) -> bool {
        self.paid
    }
}

impl SagaRow for Withdrawal {
    fn partner(&self) -> &str {
        &self.psp
    }

    fn ended(&self) -> Option<bool> {
        (self.status != "pending").then(|| self.status == "paid")
    }
}

impl Answer {
    fn status(&self) -> Status {
        if self.paid { PAID } else { DECLINED }
    }
}

/// `payout.<psp>.ack` (CONTRACT §3): a payment provider's answer to `payout.<psp>.request`.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `validate` reads the payload.
pub struct PayoutAckPayload {
    /// The withdrawal it answers.
    withdraw_id: Id,
    status: PayoutStatus,
    /// The provider's own reference, kept with the withdrawal.
    psp_ref: Option<String>,
    /// Why the provider declined, kept with the withdrawal.
    reason: Option<String>,
}

#[derive(Debug, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum PayoutStatus {
    /// The provider paid the user: the held money leaves the platform.
    Paid,
    /// The provider refused: the held money returns to `main`.
    Declined,
}

/// `payout.<psp>.status` (CONTRACT §3): asks the payment provider to answer for a withdrawal.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; the sweeper writes the message.
pub struct PayoutStatusQuery {
    withdraw_id: Id,
}

/// A withdrawal as an answer finds it.
#[derive(Debug)]
struct Withdrawal {
    user_id: String,
    psp: String,
    currency: String,
    amount: Decimal,
    day: NaiveDate,
    status: String,
}

const LOCK: &str = "
    SELECT id, user_id, psp, currency, amount, day, status FROM withdrawals
    WHERE id = ANY($1) ORDER BY id FOR UPDATE";

const LOCK_DAYS: &str = "
    SELECT 1 FROM withdrawal_days
    WHERE (user_id, currency, day) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::date[]))
    ORDER BY user_id, currency, day FOR UPDATE";

const GIVE_BACK: &str = "
    UPDATE withdrawal_days d SET amount = d.amount - g.amount
    FROM (SELECT u, c, d, sum(a) AS amount
          FROM unnest($1::text[], $2::text[], $3::date[], $4::numeric[]) AS g (u, c, d, a)
          GROUP BY 1, 2, 3) AS g
    WHERE (d.user_id, d.currency, d.day) = (g.u, g.c, g.d)";

const SETTLE: &str = "
    UPDATE withdrawals w SET status = s.status, psp_ref = s.psp_ref, reason = s.reason,
           finished_at = now(), next_check_at = NULL
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS s (id, status, psp_ref, reason)
    WHERE w.id = s.id";

impl Function for PayoutAck {
    const NAME: &'static str = "payout-ack";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "withdraw_id";
    const FIELDS: &'static [&'static str] = &["withdraw_id", "status"];
    type Command = Answer;

    fn interface() -> Interface {
        Interface::of::<Self>()
            .command::<PayoutAckPayload>(
                "payout.{psp}.ack",
                &[ACK_CONFLICT, PROVIDER_MISMATCH, UNKNOWN_WITHDRAWAL],
            )
            .events::<withdraw::PspField>(&[PAID, DECLINED, Status::STUCK], &[])
            .sends::<PayoutStatusQuery>(
                "payout-status",
                "payout.{psp}.status.{partition}",
                "Asks the payment provider about a withdrawal that has waited too long for its answer",
                "`<withdraw_id>:status:<n>`, n the query's number",
            )
    }

    fn validate(
        &self,
        _ctx: &Context,
        subject: &str,
        _id: &str,
        p: &Payload,
    ) -> Result<Answer, Invalid> {
        let psp = answer::answerer(subject, "payout").ok_or(Invalid::Malformed)?;
        let paid = match p.get("status").and_then(|s| s.as_str()) {
            Some("paid") => true,
            Some("declined") => false,
            _ => return Err(Invalid::Malformed),
        };
        Ok(Answer {
            psp: psp.to_owned(),
            paid,
            psp_ref: answer::free_text(p, "psp_ref"),
            reason: answer::free_text(p, "reason"),
        })
    }

    fn key(id: &str, a: &Answer) -> String {
        format!("{}:{id}:{}", a.psp, a.status().as_str())
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<Answer>],
    ) -> Result<Vec<Outcome>, StepError> {
        let ids: Vec<&str> = commands.iter().map(|c| c.id.as_str()).collect();
        let withdrawals: HashMap<String, Withdrawal> = tx
            .query(LOCK, &[&ids])
            .await?
            .iter()
            .map(|r| {
                let w = Withdrawal {
                    user_id: r.get(1),
                    psp: r.get(2),
                    currency: r.get(3),
                    amount: r.get(4),
                    day: r.get(5),
                    status: r.get(6),
                };
                (r.get(0), w)
            })
            .collect();

        // Decide every answer in order first, so that only what gets a posting is locked.
        // The declined withdrawals, whose amounts go back to their days.
        let mut declined: Vec<&Withdrawal> = Vec::new();
        let (outcomes, endings) = answer::decide(
            ctx.config.transfers.unknown_retry,
            commands,
            &withdrawals,
            UNKNOWN_WITHDRAWAL,
            |index, command, w| {
                let a = &command.body;
                let currency = answer::currency(ctx, &command.id, &w.currency)?;
                let held = WalletKey::user(&w.user_id, Kind::Held, &w.psp, currency);
                // Out of the platform, or back to main.
                let to = if a.paid {
                    held.counterpart(&saga::PAYOUTS.account(&w.psp))
                } else {
                    declined.push(w);
                    WalletKey::main(&w.user_id, currency)
                };
                let event = Event {
                    user_id: Some(w.user_id.clone()),
                    currency: Some(currency.code().to_owned()),
                    amount: Some(currency.format(w.amount)),
                    ..Event::new(ENTITY, &command.id, a.status())
                }
                .with("psp", Some(&w.psp));
                Ok(Ok(Ending {
                    index,
                    posting: format!("{}:{}", Self::NAME, command.key),
                    from: held,
                    take: Take::Amount,
                    to,
                    amount: w.amount,
                    event,
                    id: &command.id,
                    status: a.status(),
                    reference: a.psp_ref.as_deref(),
                    reason: a.reason.as_deref(),
                }))
            },
        )?;

        // The declined withdrawals' days, locked in key order before any wallet.
        if !declined.is_empty() {
            let days: BTreeSet<(&str, &str, NaiveDate)> = declined
                .iter()
                .map(|w| (w.user_id.as_str(), w.currency.as_str(), w.day))
                .collect();
            let (u, c, d): (Vec<&str>, Vec<&str>, Vec<NaiveDate>) = days.into_iter().collect();
            tx.query(LOCK_DAYS, &[&u, &c, &d]).await?;
            let (u, c, d, a): (Vec<&str>, Vec<&str>, Vec<NaiveDate>, Vec<Decimal>) = declined
                .iter()
                .map(|w| (w.user_id.as_str(), w.currency.as_str(), w.day, w.amount))
                .collect();
            tx.execute(GIVE_BACK, &[&u, &c, &d, &a]).await?;
        }
        answer::end(ctx, tx, endings, SETTLE, outcomes).await
    }

    fn background(
        &self,
        ctx: Arc<Context>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        sweeper::run(&saga::WITHDRAWALS, ctx, shutdown)
    }
}
