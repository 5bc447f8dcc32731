//! Withdrawals: `{withdraw_id, user_id, psp, amount, currency}` moves the amount from the user's
//! `main` wallet to its `held` wallet for the payment provider `psp`, records the withdrawal as
//! `pending`, and asks the provider to pay it out. `payout-ack` settles it on the answer.
//!
//! Guarantees:
//! - the request (`payout.<psp>.request`, `Nats-Msg-Id` = the withdrawal's id) goes into the
//!   outbox in the transaction that debits `main`: it is published if and only if the debit
//!   committed;
//! - the daily limit per user and currency (`WITHDRAW_DAILY_LIMITS`) holds exactly on any number
//!   of replicas: a batch locks the `withdrawal_days` rows of its users, in key order and before
//!   any wallet, and counts its own commands one after another. The day is the UTC day JetStream
//!   stored the command, so a redelivery after midnight counts where the first delivery did;
//! - over the limit (`limit_exceeded`) or without the funds (`insufficient_funds`) nothing moves
//!   and nothing is counted.

use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::Serialize;
use wallet_runtime::config::Config;
use wallet_runtime::error::ConfigError;
use wallet_runtime::function::{Transaction, partner_command};
use wallet_runtime::interface::{Amount, Balance, CurrencyCode, Id, Interface};
use wallet_runtime::money::Currency;
use wallet_runtime::outbox::OutboxMessage;
use wallet_runtime::partition;
use wallet_runtime::wallet::{Kind, WalletKey};
use wallet_runtime::{
    Command, Context, Event, Function, Invalid, Outcome, Payload, Reason, Status, StepError, ids,
};

pub mod limits;

use limits::Limits;

pub const ENTITY: &str = "withdrawal";

/// The payment provider named is not one of `PAYMENT_PROVIDERS`.
pub const UNKNOWN_PSP: Reason = Reason::new("unknown_psp");
/// The withdrawal would take the user's withdrawals of the day past the currency's limit.
pub const LIMIT_EXCEEDED: Reason = Reason::new("limit_exceeded");

#[derive(Debug, Clone, Default)]
pub struct Withdraw {
    psps: Vec<String>,
    limits: Limits,
}

#[derive(Debug)]
pub struct WithdrawCommand {
    pub user_id: String,
    pub psp: String,
    pub currency: Currency,
    pub amount: Decimal,
}

impl WithdrawCommand {
    fn main(&self) -> WalletKey {
        WalletKey::main(&self.user_id, self.currency)
    }

    fn held(&self) -> WalletKey {
        WalletKey::user(&self.user_id, Kind::Held, &self.psp, self.currency)
    }

    fn event(&self, id: &str, status: Status) -> Event {
        Event {
            user_id: Some(self.user_id.clone()),
            currency: Some(self.currency.code().to_owned()),
            amount: Some(self.currency.format(self.amount)),
            ..Event::new(ENTITY, id, status)
        }
        .with("psp", Some(&self.psp))
    }
}

/// A user's withdrawals in one currency on one UTC day: the key of the limit.
type Day = (String, String, NaiveDate);

fn day_of(c: &Command<WithdrawCommand>) -> Day {
    let day = chrono::DateTime::<chrono::Utc>::from(c.stored_at).date_naive();
    (
        c.body.user_id.clone(),
        c.body.currency.code().to_owned(),
        day,
    )
}

/// Creates the batch's missing day rows and locks them all, in key order (two batches never
/// wait for each other in opposite orders), returning what each has counted so far. The keys
/// must be distinct: an upsert may not touch one row twice.
const LOCK_DAYS: &str = "
    INSERT INTO withdrawal_days (user_id, currency, day, partition, amount)
    SELECT u, c, d, p, 0
    FROM unnest($1::text[], $2::text[], $3::date[], $4::smallint[]) AS k (u, c, d, p)
    ORDER BY u, c, d
    ON CONFLICT (user_id, currency, day) DO UPDATE SET amount = withdrawal_days.amount
    RETURNING user_id, currency, day, amount";

const COUNT_DAYS: &str = "
    UPDATE withdrawal_days d SET amount = n.amount
    FROM unnest($1::text[], $2::text[], $3::date[], $4::numeric[]) AS n (user_id, currency, day, amount)
    WHERE (d.user_id, d.currency, d.day) = (n.user_id, n.currency, n.day)";

/// The withdrawal, pending; the sweeper's first status query is due after the ack timeout.
const RECORD: &str = "
    INSERT INTO withdrawals (id, user_id, psp, currency, amount, day, partition, next_check_at)
    SELECT w.*, now() + $8::float8 * interval '1 millisecond'
    FROM unnest(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::date[], $7::smallint[]
    ) AS w";

impl Function for Withdraw {
    const NAME: &'static str = "withdraw";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "withdraw_id";
    const FIELDS: &'static [&'static str] =
        &["withdraw_id", "user_id", "psp", "amount", "currency"];
    type Command = WithdrawCommand;

    /// `PAYMENT_PROVIDERS` (default `bank,card`) and `WITHDRAW_DAILY_LIMITS` (a limit for every
    /// configured currency, default `USD:10000,EUR:10000,VND:250000000,BTC:1`).
    fn configure(self, config: &Config) -> Result<Self, ConfigError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let psps = var("PAYMENT_PROVIDERS").unwrap_or_else(|| "bank,card".into());
        let psps: Vec<String> = psps.split(',').map(|p| p.trim().to_owned()).collect();
        if let Some(bad) = psps.iter().find(|p| !ids::is_valid_provider(p)) {
            return Err(ConfigError {
                var: "PAYMENT_PROVIDERS",
                message: format!("`{bad}` is not a provider name ([a-z0-9-]{{1,32}})"),
            });
        }
        let limits = var("WITHDRAW_DAILY_LIMITS").unwrap_or_else(|| limits::DEFAULT.into());
        let limits = Limits::parse(&limits, &config.currencies).map_err(|message| ConfigError {
            var: "WITHDRAW_DAILY_LIMITS",
            message,
        })?;
        Ok(Self { psps, limits })
    }

    fn interface() -> Interface {
        use Reason as R;
        Interface::of::<Self>()
            .command::<WithdrawPayload>("wallet.withdraw", &[])
            .events::<PspField>(
                &[Status::PENDING, Status::REJECTED],
                &[
                    R::INVALID_USER_ID,
                    UNKNOWN_PSP,
                    R::UNKNOWN_CURRENCY,
                    R::INVALID_AMOUNT,
                    LIMIT_EXCEEDED,
                    R::INSUFFICIENT_FUNDS,
                    R::BALANCE_LIMIT,
                ],
            )
            .sends::<PayoutRequest>(
                "payout-request",
                "payout.{psp}.request.{partition}",
                "Asks the payment provider to pay the withdrawal out; published if and only if the debit committed",
                "the withdrawal's id",
            )
    }

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<WithdrawCommand, Invalid> {
        let (user_id, psp, currency, amount) =
            partner_command(ctx, p, (ENTITY, id), ("psp", &self.psps, UNKNOWN_PSP))?;
        Ok(WithdrawCommand {
            user_id: user_id.to_owned(),
            psp: psp.to_owned(),
            currency,
            amount,
        })
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<WithdrawCommand>],
    ) -> Result<Vec<Outcome>, StepError> {
        let keys: BTreeSet<Day> = commands.iter().map(|c| day_of(c)).collect();
        let (users, currencies, days): (Vec<&str>, Vec<&str>, Vec<NaiveDate>) = keys
            .iter()
            .map(|(u, c, d)| (u.as_str(), c.as_str(), *d))
            .collect();
        let mut counted: HashMap<Day, Decimal> = tx
            .query(
                LOCK_DAYS,
                &[
                    &users,
                    &currencies,
                    &days,
                    &partition::of_users(users.iter().copied()),
                ],
            )
            .await?
            .iter()
            .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
            .collect();

        let wallets = commands.iter().flat_map(|c| [c.body.main(), c.body.held()]);
        let mut book = ctx.ledger.open(tx, wallets).await?;
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut pending: Vec<(&Command<WithdrawCommand>, NaiveDate)> = Vec::new();
        for command in commands {
            let c = &command.body;
            let day = day_of(command);
            let so_far = counted.get(&day).copied().unwrap_or_default();
            let refused = if so_far + c.amount > self.limits.of(c.currency) {
                Some(LIMIT_EXCEEDED)
            } else {
                let (main, held) = (c.main(), c.held());
                let legs = [(&main, -c.amount), (&held, c.amount)];
                book.post(&format!("{}:{}", Self::NAME, command.key), &legs)?
                    .err()
                    .map(|r| r.reason())
            };
            if let Some(reason) = refused {
                let event = Event {
                    reason: Some(reason),
                    ..c.event(&command.id, Status::REJECTED)
                };
                outcomes.push(Outcome::Done(vec![event.into_outbox(Vec::new())]));
                continue;
            }
            counted.insert(day.clone(), so_far + c.amount);
            let (Some(main), Some(held)) = (book.snapshot(&c.main()), book.snapshot(&c.held()))
            else {
                return Err(StepError::permanent("withdrawal wallets not opened"));
            };
            let event = Event {
                balance: Some(main.balance.clone()),
                ..c.event(&command.id, Status::PENDING)
            };
            outcomes.push(Outcome::Done(vec![
                event.into_outbox(vec![main, held]),
                request(&command.id, c),
            ]));
            pending.push((command, day.2));
        }
        book.write(tx).await?;
        if pending.is_empty() {
            return Ok(outcomes);
        }
        let totals: Vec<Decimal> = keys
            .iter()
            .map(|k| counted.get(k).copied().unwrap_or_default())
            .collect();
        tx.execute(COUNT_DAYS, &[&users, &currencies, &days, &totals])
            .await?;
        let column = |f: fn(&WithdrawCommand) -> &str| -> Vec<&str> {
            pending.iter().map(|(c, _)| f(&c.body)).collect()
        };
        let ids: Vec<&str> = pending.iter().map(|(c, _)| c.id.as_str()).collect();
        let amounts: Vec<Decimal> = pending.iter().map(|(c, _)| c.body.amount).collect();
        let days: Vec<NaiveDate> = pending.iter().map(|(_, d)| *d).collect();
        let timeout_ms = ctx.config.transfers.ack_timeout.as_secs_f64() * 1000.0;
        let users = column(|c| &c.user_id);
        tx.execute(
            RECORD,
            &[
                &ids,
                &users,
                &column(|c| &c.psp),
                &column(|c| c.currency.code()),
                &amounts,
                &days,
                &partition::of_users(users.iter().copied()),
                &timeout_ms,
            ],
        )
        .await?;
        Ok(outcomes)
    }
}

/// `payout.<psp>.request` (CONTRACT §3): what the payment provider needs to pay the user.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PayoutRequest<'a> {
    /// The withdrawal's id: the provider's answer names it.
    #[schemars(with = "Id")]
    withdraw_id: &'a str,
    #[schemars(with = "Id")]
    user_id: &'a str,
    #[schemars(with = "Balance")]
    amount: String,
    #[schemars(with = "CurrencyCode")]
    currency: &'a str,
}

fn request(id: &str, c: &WithdrawCommand) -> OutboxMessage {
    OutboxMessage::new(
        // On its user's partition, which the adapter's answer echoes (docs/sharding.md).
        wallet_runtime::partition::subject(&format!("payout.{}.request", c.psp), &c.user_id),
        id.to_owned(),
        &PayoutRequest {
            withdraw_id: id,
            user_id: &c.user_id,
            amount: c.currency.format(c.amount),
            currency: c.currency.code(),
        },
    )
}

/// `wallet.withdraw` (CONTRACT §3): pay `amount` of the user's `main` wallet out through `psp`.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `validate` reads the payload.
pub struct WithdrawPayload {
    /// The command's id, and the withdrawal's.
    withdraw_id: Id,
    user_id: Id,
    /// A configured payment provider (`PAYMENT_PROVIDERS`, default `bank`, `card`).
    #[schemars(regex(pattern = "^[a-z0-9-]{1,32}$"))]
    psp: String,
    amount: Amount,
    currency: CurrencyCode,
}

/// The field withdrawal events add.
#[derive(Debug, JsonSchema)]
pub struct PspField {
    /// The withdrawal's payment provider; null when the command named none that is configured.
    #[schemars(regex(pattern = "^[a-z0-9-]{1,32}$"))]
    pub psp: Option<String>,
}
