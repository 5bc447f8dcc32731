//! Deposits: `{deposit_id, user_id, amount, currency}` credits the user's `main` wallet.
//!
//! Double entry: `main` is credited and the platform's `deposits` account debited by the same
//! amount. The platform account is never locked (see the ledger), so deposits of different users
//! never wait for each other.

use rust_decimal::Decimal;
use wallet_runtime::function::currency_and_amount;
use wallet_runtime::ledger::Refused;
use wallet_runtime::money::Currency;
use wallet_runtime::wallet::WalletKey;
use wallet_runtime::{
    Command, Context, Event, Function, Invalid, Outcome, Payload, Reason, Status, StepError, ids,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct Deposit;

#[derive(Debug)]
pub struct DepositCommand {
    pub user_id: String,
    pub currency: Currency,
    pub amount: Decimal,
}

const ENTITY: &str = "deposit";

impl Function for Deposit {
    const NAME: &'static str = "deposit";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "deposit_id";
    const FIELDS: &'static [&'static str] = &["deposit_id", "user_id", "amount", "currency"];
    type Command = DepositCommand;

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<DepositCommand, Invalid> {
        let rejection = |reason| Event::rejected(ENTITY, id, reason);
        let Some(user_id) = ids::from_value(p.get("user_id")) else {
            return Err(rejection(Reason::INVALID_USER_ID).into());
        };
        let known = Event {
            user_id: Some(user_id.to_owned()),
            ..rejection(Reason::UNKNOWN_CURRENCY)
        };
        let (currency, amount) = currency_and_amount(ctx, p, known)?;
        Ok(DepositCommand {
            user_id: user_id.to_owned(),
            currency,
            amount,
        })
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a wallet_runtime::function::Transaction<'a>,
        commands: &'a [&'a Command<DepositCommand>],
    ) -> Result<Vec<Outcome>, StepError> {
        let wallets = |c: &DepositCommand| {
            (
                WalletKey::main(&c.user_id, c.currency),
                WalletKey::platform("deposits", c.currency),
            )
        };
        let keys = commands.iter().flat_map(|c| {
            let (main, platform) = wallets(&c.body);
            [main, platform]
        });
        let mut book = ctx.ledger.open(tx, keys).await?;
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            let c = &command.body;
            let (main, platform) = wallets(c);
            let posted = book.post(
                &format!("{}:{}", Self::NAME, command.key),
                &[(&main, c.amount), (&platform, -c.amount)],
            )?;
            match posted {
                Ok(()) => {}
                Err(Refused::BalanceLimit) => {
                    let event = Event {
                        user_id: Some(c.user_id.clone()),
                        currency: Some(c.currency.code().to_owned()),
                        amount: Some(c.currency.format(c.amount)),
                        ..Event::rejected(ENTITY, &command.id, Refused::BalanceLimit.reason())
                    };
                    outcomes.push(Outcome::Done(vec![event.into_outbox(Vec::new())]));
                    continue;
                }
                Err(Refused::Overdraft) => {
                    return Err(StepError::permanent("a deposit cannot overdraw"));
                }
            }
            let snapshot = book
                .snapshot(&main)
                .ok_or_else(|| StepError::permanent("main wallet not opened"))?;
            let event = Event {
                user_id: Some(c.user_id.clone()),
                currency: Some(c.currency.code().to_owned()),
                amount: Some(c.currency.format(c.amount)),
                balance: Some(snapshot.balance.clone()),
                ..Event::new(ENTITY, &command.id, Status::COMPLETED)
            };
            outcomes.push(Outcome::Done(vec![event.into_outbox(vec![snapshot])]));
        }
        book.write(tx).await?;
        Ok(outcomes)
    }
}
