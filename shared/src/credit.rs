//! Crediting a user's `main` wallet from a platform account: what a deposit does, and what a
//! function scaffolded from the template starts from.
//!
//! One place holds the validation of `{user_id, amount, currency}` (in the contract's order), the
//! postings, the refusal of a credit that would pass the currency's balance limit
//! (`balance_limit`) and the `completed` event with the new balance; a function that credits
//! holds only its own rules.

use rust_decimal::Decimal;

use crate::context::Context;
use crate::error::StepError;
use crate::events::{Event, Reason, Status};
use crate::function::{Command, Invalid, Outcome, Payload, Transaction, currency_and_amount};
use crate::ids;
use crate::ledger::Refused;
use crate::money::Currency;
use crate::wallet::WalletKey;

/// A valid credit command's fields.
#[derive(Debug)]
pub struct Credit {
    pub user_id: String,
    pub currency: Currency,
    pub amount: Decimal,
}

impl Credit {
    /// `user_id`, then `currency` and `amount`; a rejection of `entity` names the first invalid
    /// field and carries those that were valid.
    #[allow(clippy::result_large_err)] // As `Function::validate`.
    pub fn validate(
        ctx: &Context,
        entity: &'static str,
        id: &str,
        p: &Payload,
    ) -> Result<Self, Invalid> {
        let mut rejection = Event::rejected(entity, id, Reason::INVALID_USER_ID);
        let Some(user_id) = ids::from_value(p.get("user_id")) else {
            return Err(rejection.into());
        };
        rejection.user_id = Some(user_id.to_owned());
        let (currency, amount) = currency_and_amount(ctx, p, rejection)?;
        Ok(Self {
            user_id: user_id.to_owned(),
            currency,
            amount,
        })
    }

    /// An event of `entity` about this credit: its user, currency and amount.
    pub fn event(&self, entity: &'static str, id: &str, status: Status) -> Event {
        Event {
            user_id: Some(self.user_id.clone()),
            currency: Some(self.currency.code().to_owned()),
            amount: Some(self.currency.format(self.amount)),
            ..Event::new(entity, id, status)
        }
    }

    /// This credit rejected with `reason`.
    pub fn rejected(&self, entity: &'static str, id: &str, reason: Reason) -> Event {
        Event {
            reason: Some(reason),
            ..self.event(entity, id, Status::REJECTED)
        }
    }
}

/// Credits each command's `main` wallet from the platform account `platform`, in order, in one
/// book; one outcome per command: `completed` with the new balance, or `rejected` with
/// `balance_limit`. `function` names the postings (`<function>:<key>`), `entity` the events.
pub async fn apply<C: Send + Sync>(
    ctx: &Context,
    tx: &Transaction<'_>,
    (function, entity, platform): (&str, &'static str, &str),
    commands: &[&Command<C>],
    credit: impl Fn(&C) -> &Credit,
) -> Result<Vec<Outcome>, StepError> {
    let wallets = |c: &Credit| {
        let main = WalletKey::main(&c.user_id, c.currency);
        let counterpart = main.counterpart(platform);
        (main, counterpart)
    };
    let keys = commands.iter().flat_map(|c| {
        let (main, platform) = wallets(credit(&c.body));
        [main, platform]
    });
    let mut book = ctx.ledger.open(tx, keys).await?;
    let mut outcomes = Vec::with_capacity(commands.len());
    for command in commands {
        let c = credit(&command.body);
        let (main, platform) = wallets(c);
        let legs = [(&main, c.amount), (&platform, -c.amount)];
        match book.post(&format!("{function}:{}", command.key), &legs)? {
            Ok(()) => {}
            Err(Refused::BalanceLimit) => {
                let event = c.rejected(entity, &command.id, Refused::BalanceLimit.reason());
                outcomes.push(Outcome::Done(vec![event.into_outbox(Vec::new())]));
                continue;
            }
            Err(Refused::Overdraft) => {
                return Err(StepError::permanent("a credit cannot overdraw"));
            }
        }
        let snapshot = book
            .snapshot(&main)
            .ok_or_else(|| StepError::permanent("main wallet not opened"))?;
        let event = Event {
            balance: Some(snapshot.balance.clone()),
            ..c.event(entity, &command.id, Status::COMPLETED)
        };
        outcomes.push(Outcome::Done(vec![event.into_outbox(vec![snapshot])]));
    }
    book.write(tx).await?;
    Ok(outcomes)
}
