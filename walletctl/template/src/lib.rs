//! `scaffold-example`: `{ scaffold_example_id, user_id, amount, currency }` credits the user's `main` wallet from
//! the platform's `scaffold-example` account, up to 1,000 per command.
//!
//! Scaffolded by `walletctl new-function`: change the payload, the rules and the postings here;
//! the runtime does the rest (dedup, the transaction, the outbox, acknowledgements, dead letters).

use rust_decimal::Decimal;
use schemars::JsonSchema;
use wallet_runtime::credit::{self, Credit};
use wallet_runtime::function::Transaction;
use wallet_runtime::interface::{Amount, CurrencyCode, Id, Interface, NoFields};
use wallet_runtime::{
    Command, Context, Function, Invalid, Outcome, Payload, Reason, Status, StepError,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct ScaffoldExample;

const ENTITY: &str = "scaffold_example";

/// The example rule: no command moves more than this...
pub const LIMIT: Decimal = Decimal::from_parts(1000, 0, 0, false, 0);
/// ...or it is rejected with this reason.
pub const OVER_LIMIT: Reason = Reason::new("over_limit");

/// The command (`function.toml`'s subject): its schema documents it (`--interface`,
/// `make interface`), in the order of `FIELDS`.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `validate` reads the payload.
pub struct ScaffoldExampleCommand {
    /// The command's id: one effect, whatever its redeliveries.
    scaffold_example_id: Id,
    user_id: Id,
    amount: Amount,
    currency: CurrencyCode,
}

impl Function for ScaffoldExample {
    const NAME: &'static str = "scaffold-example";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "scaffold_example_id";
    const FIELDS: &'static [&'static str] =
        &["scaffold_example_id", "user_id", "amount", "currency"];
    type Command = Credit;

    /// What it reads and writes; every reason `validate` and `apply` can give is listed.
    fn interface() -> Interface {
        use Reason as R;
        Interface::of::<Self>()
            .command::<ScaffoldExampleCommand>("wallet.scaffold-example", &[])
            .events::<NoFields>(
                &[Status::COMPLETED, Status::REJECTED],
                &[
                    R::INVALID_USER_ID,
                    R::UNKNOWN_CURRENCY,
                    R::INVALID_AMOUNT,
                    OVER_LIMIT,
                    R::BALANCE_LIMIT,
                ],
            )
    }

    /// The payload's fields in the contract's order, then this function's own rule.
    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<Credit, Invalid> {
        let credit = Credit::validate(ctx, ENTITY, id, p)?;
        if credit.amount > LIMIT {
            return Err(credit.rejected(ENTITY, id, OVER_LIMIT).into());
        }
        Ok(credit)
    }

    /// The postings of a batch of valid new commands, inside its transaction: each credits the
    /// user's `main` wallet from this function's platform account. A function that moves money
    /// otherwise opens `ctx.ledger` itself (see `deposit`, `transfer-out`).
    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<Credit>],
    ) -> Result<Vec<Outcome>, StepError> {
        let accounts = (Self::NAME, ENTITY, "scaffold-example");
        credit::apply(ctx, tx, accounts, commands, |c| c).await
    }
}
