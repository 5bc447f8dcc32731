//! Transfers out: `{transfer_id, user_id, provider, amount, currency}` moves the amount from the
//! user's `main` wallet to its `in_transit` amount for the provider, records the transfer as
//! `pending`, and asks the provider to credit its game wallet.
//!
//! Guarantee: the provider's request (`provider.<provider>.transfer`, `Nats-Msg-Id` = the
//! transfer id) goes into the outbox in the transaction that debits `main`, so it is published
//! if and only if the debit committed. Without the funds nothing moves and the transfer is
//! `rejected` with `insufficient_funds`; an id another transfer (out or in) already holds is
//! `rejected` with `transfer_exists`. `provider-ack` finishes what this starts.

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::Serialize;
use wallet_runtime::function::Transaction;
use wallet_runtime::function::partner_command;
use wallet_runtime::interface::{
    Amount, Balance, CurrencyCode, Id, Interface, Provider, ProviderField,
};
use wallet_runtime::money::Currency;
use wallet_runtime::outbox::OutboxMessage;
use wallet_runtime::transfers::{self, Direction, Pending, TRANSFER_EXISTS};
use wallet_runtime::wallet::{Kind, WalletKey};
use wallet_runtime::{
    Command, Context, Event, Function, Invalid, Outcome, Payload, Reason, Status, StepError,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct TransferOut;

#[derive(Debug)]
pub struct TransferCommand {
    pub user_id: String,
    pub provider: String,
    pub currency: Currency,
    pub amount: Decimal,
}

impl TransferCommand {
    fn main(&self) -> WalletKey {
        WalletKey::main(&self.user_id, self.currency)
    }

    fn in_transit(&self) -> WalletKey {
        WalletKey::user(
            &self.user_id,
            Kind::InTransit,
            &self.provider,
            self.currency,
        )
    }

    /// A transfer event with the command's fields.
    fn event(&self, id: &str, status: Status) -> Event {
        Event {
            user_id: Some(self.user_id.clone()),
            currency: Some(self.currency.code().to_owned()),
            amount: Some(self.currency.format(self.amount)),
            ..Event::new(ENTITY, id, status)
        }
        .with("provider", Some(&self.provider))
    }
}

const ENTITY: &str = "transfer";

impl Function for TransferOut {
    const NAME: &'static str = "transfer-out";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "transfer_id";
    const FIELDS: &'static [&'static str] =
        &["transfer_id", "user_id", "provider", "amount", "currency"];
    type Command = TransferCommand;

    fn interface() -> Interface {
        use Reason as R;
        Interface::of::<Self>()
            .command::<TransferOutCommand>("wallet.transfer-out", &[])
            .events::<ProviderField>(
                &[Status::PENDING, Status::REJECTED],
                &[
                    R::INVALID_USER_ID,
                    R::UNKNOWN_PROVIDER,
                    R::UNKNOWN_CURRENCY,
                    R::INVALID_AMOUNT,
                    R::INSUFFICIENT_FUNDS,
                    R::BALANCE_LIMIT,
                    TRANSFER_EXISTS,
                ],
            )
            .sends::<ProviderTransfer>(
                "provider-transfer",
                "provider.{provider}.transfer.{partition}",
                "Asks the provider's adapter to credit its game wallet; published if and only if the debit committed",
                "the transfer's id",
            )
    }

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<TransferCommand, Invalid> {
        let (user_id, provider, currency, amount) = partner_command(
            ctx,
            p,
            (ENTITY, id),
            ("provider", &ctx.config.providers, Reason::UNKNOWN_PROVIDER),
        )?;
        Ok(TransferCommand {
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
        commands: &'a [&'a Command<TransferCommand>],
    ) -> Result<Vec<Outcome>, StepError> {
        // An id another transfer holds is refused before anything moves.
        let ids: Vec<&str> = commands.iter().map(|c| c.id.as_str()).collect();
        let taken = transfers::taken(tx, &ids).await?;
        let keys = commands
            .iter()
            .filter(|c| !taken.contains(&c.id))
            .flat_map(|c| [c.body.main(), c.body.in_transit()]);
        let mut book = ctx.ledger.open(tx, keys).await?;
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut pending = Vec::new();
        for command in commands {
            let c = &command.body;
            let rejected = |reason| {
                let event = Event {
                    reason: Some(reason),
                    ..c.event(&command.id, Status::REJECTED)
                };
                Outcome::Done(vec![event.into_outbox(Vec::new())])
            };
            if taken.contains(&command.id) {
                outcomes.push(rejected(TRANSFER_EXISTS));
                continue;
            }
            let (main, in_transit) = (c.main(), c.in_transit());
            let posted = book.post(
                &format!("{}:{}", Self::NAME, command.key),
                &[(&main, -c.amount), (&in_transit, c.amount)],
            )?;
            if let Err(refused) = posted {
                outcomes.push(rejected(refused.reason()));
                continue;
            }
            let (Some(main), Some(in_transit)) = (book.snapshot(&main), book.snapshot(&in_transit))
            else {
                return Err(StepError::permanent("transfer wallets not opened"));
            };
            let event = Event {
                balance: Some(main.balance.clone()),
                ..c.event(&command.id, Status::PENDING)
            };
            outcomes.push(Outcome::Done(vec![
                event.into_outbox(vec![main, in_transit]),
                request(&command.id, c),
            ]));
            pending.push(Pending {
                id: &command.id,
                user_id: &c.user_id,
                provider: &c.provider,
                currency: c.currency,
                amount: Some(c.amount),
            });
        }
        book.write(tx).await?;
        let recorded = transfers::record(ctx, tx, Direction::Out, &pending).await?;
        if recorded.len() < pending.len() {
            // A transfer in took one of the ids since `taken` looked: decided again, it is refused.
            return Err(StepError::transient(
                "a transfer id was taken by a concurrent transfer in",
            ));
        }
        Ok(outcomes)
    }
}

/// `provider.<provider>.transfer` (CONTRACT §3): what the provider's adapter needs to credit
/// its game wallet.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ProviderTransfer<'a> {
    /// The transfer's id: the provider's ack names it.
    #[schemars(with = "Id")]
    transfer_id: &'a str,
    #[schemars(with = "Id")]
    user_id: &'a str,
    #[schemars(with = "Balance")]
    amount: String,
    #[schemars(with = "CurrencyCode")]
    currency: &'a str,
}

fn request(id: &str, c: &TransferCommand) -> OutboxMessage {
    OutboxMessage::new(
        // On its user's partition, which the adapter's ack echoes (docs/sharding.md).
        wallet_runtime::partition::subject(
            &format!("provider.{}.transfer", c.provider),
            &c.user_id,
        ),
        id.to_owned(),
        &ProviderTransfer {
            transfer_id: id,
            user_id: &c.user_id,
            amount: c.currency.format(c.amount),
            currency: c.currency.code(),
        },
    )
}

/// `wallet.transfer-out` (CONTRACT §3): move `amount` from the user's `main` wallet to
/// `provider`'s game wallet.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `validate` reads the payload.
pub struct TransferOutCommand {
    /// The command's id, and the transfer's.
    transfer_id: Id,
    user_id: Id,
    provider: Provider,
    amount: Amount,
    currency: CurrencyCode,
}
