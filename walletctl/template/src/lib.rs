//! `scaffold-example`: `{ scaffold_example_id, user_id, amount, currency }` credits the user's `main` wallet from
//! the platform's `scaffold-example` account, up to 1,000 per command.
//!
//! Scaffolded by `walletctl new-function`: change the payload, the rules and the postings here;
//! the runtime does the rest (dedup, the transaction, the outbox, acknowledgements, dead letters).

use rust_decimal::Decimal;
use wallet_runtime::function::Transaction;
use wallet_runtime::function::currency_and_amount;
use wallet_runtime::money::Currency;
use wallet_runtime::wallet::WalletKey;
use wallet_runtime::{
    Command, Context, Event, Function, Invalid, Outcome, Payload, Reason, Status, StepError, ids,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct ScaffoldExample;

#[derive(Debug)]
pub struct ScaffoldExampleCommand {
    pub user_id: String,
    pub currency: Currency,
    pub amount: Decimal,
}

const ENTITY: &str = "scaffold_example";

/// The example rule: no command moves more than this...
pub const LIMIT: Decimal = Decimal::from_parts(1000, 0, 0, false, 0);
/// ...or it is rejected with this reason.
pub const OVER_LIMIT: Reason = Reason::new("over_limit");

impl Function for ScaffoldExample {
    const NAME: &'static str = "scaffold-example";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "scaffold_example_id";
    const FIELDS: &'static [&'static str] =
        &["scaffold_example_id", "user_id", "amount", "currency"];
    type Command = ScaffoldExampleCommand;

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<ScaffoldExampleCommand, Invalid> {
        let mut rejection = Event::rejected(ENTITY, id, Reason::INVALID_USER_ID);
        let Some(user_id) = ids::from_value(p.get("user_id")) else {
            return Err(rejection.into());
        };
        rejection.user_id = Some(user_id.to_owned());
        let (currency, amount) = currency_and_amount(ctx, p, rejection.clone())?;
        rejection.currency = Some(currency.code().to_owned());
        if amount > LIMIT {
            rejection.reason = Some(OVER_LIMIT);
            rejection.amount = Some(currency.format(amount));
            return Err(rejection.into());
        }
        Ok(ScaffoldExampleCommand {
            user_id: user_id.to_owned(),
            currency,
            amount,
        })
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<ScaffoldExampleCommand>],
    ) -> Result<Vec<Outcome>, StepError> {
        let wallets = |c: &ScaffoldExampleCommand| {
            (
                WalletKey::main(&c.user_id, c.currency),
                WalletKey::platform("scaffold-example", c.currency),
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
            book.post(
                &format!("{}:{}", Self::NAME, command.key),
                &[(&main, c.amount), (&platform, -c.amount)],
            )?
            .map_err(|_| StepError::permanent("a credit cannot overdraw"))?;
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
