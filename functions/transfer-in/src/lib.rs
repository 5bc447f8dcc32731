//! Transfers in: `{transfer_id, user_id, provider, currency, amount?}` asks a game provider to
//! return a player's money to `main`: `amount`, or everything the player holds there when it is
//! absent or null. It records the transfer as `pending` and asks the provider; nothing moves yet,
//! since only the provider knows what the player holds after playing.
//!
//! Guarantee: the provider's request (`provider.<provider>.withdraw`, `Nats-Msg-Id` = the
//! transfer id) goes into the outbox in the transaction that records the transfer, so it is
//! published if and only if the transfer exists. `provider-ack` finishes it on the provider's
//! answer (the amount it returned), and its sweeper asks the provider again when the answer is
//! late, as for transfers out. Transfers out and in share one id space: an id already taken by
//! another transfer is rejected `transfer_exists`.

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::Serialize;
use wallet_runtime::function::{Transaction, currency_and_amount, currency_of, partner_of};
use wallet_runtime::interface::{
    Amount, Balance, CurrencyCode, Id, Interface, Provider, ProviderField,
};
use wallet_runtime::money::Currency;
use wallet_runtime::outbox::OutboxMessage;
use wallet_runtime::transfers::{self, Direction, Pending, TRANSFER_EXISTS};
use wallet_runtime::{
    Command, Context, Event, Function, Invalid, Outcome, Payload, Reason, Status, StepError,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct TransferIn;

const ENTITY: &str = "transfer_in";

#[derive(Debug)]
pub struct TransferInCommand {
    pub user_id: String,
    pub provider: String,
    pub currency: Currency,
    /// `None`: everything the player holds at the provider.
    pub amount: Option<Decimal>,
}

impl TransferInCommand {
    fn event(&self, id: &str, status: Status) -> Event {
        Event {
            user_id: Some(self.user_id.clone()),
            currency: Some(self.currency.code().to_owned()),
            amount: self.amount.map(|a| self.currency.format(a)),
            ..Event::new(ENTITY, id, status)
        }
        .with("provider", Some(&self.provider))
    }
}

impl Function for TransferIn {
    const NAME: &'static str = "transfer-in";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "transfer_id";
    const FIELDS: &'static [&'static str] =
        &["transfer_id", "user_id", "provider", "currency", "amount"];
    type Command = TransferInCommand;

    fn interface() -> Interface {
        use Reason as R;
        Interface::of::<Self>()
            .command::<TransferInPayload>("wallet.transfer-in", &[])
            .events::<ProviderField>(
                &[Status::PENDING, Status::REJECTED],
                &[
                    R::INVALID_USER_ID,
                    R::UNKNOWN_PROVIDER,
                    R::UNKNOWN_CURRENCY,
                    R::INVALID_AMOUNT,
                    TRANSFER_EXISTS,
                ],
            )
            .sends::<ProviderWithdraw>(
                "provider-withdraw",
                "provider.{provider}.withdraw.{partition}",
                "Asks the provider's adapter to return the player's money (its answer, on `provider.{provider}.ack`, says how much); published if and only if the transfer was recorded",
                "the transfer's id",
            )
    }

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<TransferInCommand, Invalid> {
        let (user_id, provider, rejection) = partner_of(
            p,
            (ENTITY, id),
            ("provider", &ctx.config.providers, Reason::UNKNOWN_PROVIDER),
        )?;
        let (currency, amount) = if p.get("amount").is_none_or(|a| a.is_null()) {
            (currency_of(ctx, p, rejection)?.0, None)
        } else {
            let (currency, amount) = currency_and_amount(ctx, p, rejection)?;
            (currency, Some(amount))
        };
        Ok(TransferInCommand {
            user_id: user_id.to_owned(),
            provider: provider.to_owned(),
            currency,
            amount,
        })
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<TransferInCommand>],
    ) -> Result<Vec<Outcome>, StepError> {
        let pending: Vec<Pending<'_>> = commands
            .iter()
            .map(|c| Pending {
                id: &c.id,
                user_id: &c.body.user_id,
                provider: &c.body.provider,
                currency: c.body.currency,
                amount: c.body.amount,
            })
            .collect();
        let recorded = transfers::record(ctx, tx, Direction::In, &pending).await?;
        Ok(commands
            .iter()
            .map(|command| {
                let c = &command.body;
                if !recorded.contains(&command.id) {
                    let event = Event {
                        reason: Some(TRANSFER_EXISTS),
                        ..c.event(&command.id, Status::REJECTED)
                    };
                    return Outcome::Done(vec![event.into_outbox(Vec::new())]);
                }
                let event = c.event(&command.id, Status::PENDING);
                Outcome::Done(vec![event.into_outbox(Vec::new()), request(&command.id, c)])
            })
            .collect())
    }
}

/// `provider.<provider>.withdraw` (CONTRACT §3): what the provider's adapter needs to return a
/// player's money.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProviderWithdraw<'a> {
    /// The transfer's id: the provider's ack names it.
    #[schemars(with = "Id")]
    transfer_id: &'a str,
    #[schemars(with = "Id")]
    user_id: &'a str,
    #[schemars(with = "CurrencyCode")]
    currency: &'a str,
    /// What to return; null: everything the player holds.
    #[schemars(with = "Option<Balance>")]
    amount: Option<String>,
}

fn request(id: &str, c: &TransferInCommand) -> OutboxMessage {
    OutboxMessage::new(
        // On its user's partition, which the adapter's ack echoes (docs/sharding.md).
        wallet_runtime::partition::subject(
            &format!("provider.{}.withdraw", c.provider),
            &c.user_id,
        ),
        id.to_owned(),
        &ProviderWithdraw {
            transfer_id: id,
            user_id: &c.user_id,
            currency: c.currency.code(),
            amount: c.amount.map(|a| c.currency.format(a)),
        },
    )
}

/// `wallet.transfer-in` (CONTRACT §3): bring a player's money back from `provider` to `main`.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `validate` reads the payload.
pub struct TransferInPayload {
    /// The command's id, and the transfer's: unique among transfers out and in.
    transfer_id: Id,
    user_id: Id,
    provider: Provider,
    currency: CurrencyCode,
    /// What to bring back; absent or null: everything the player holds at the provider.
    amount: Option<Amount>,
}
