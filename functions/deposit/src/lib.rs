//! Deposits: `{deposit_id, user_id, amount, currency}` credits the user's `main` wallet.
//!
//! Double entry: `main` is credited and the platform's `deposits` account debited by the same
//! amount. The platform account is never locked (see the ledger), so deposits of different users
//! never wait for each other.

use schemars::JsonSchema;
use wallet_runtime::credit::{self, Credit};
use wallet_runtime::function::Transaction;
use wallet_runtime::interface::{Amount, CurrencyCode, Id, Interface, NoFields};
use wallet_runtime::{
    Command, Context, Function, Invalid, Outcome, Payload, Reason, Status, StepError,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct Deposit;

const ENTITY: &str = "deposit";

/// `wallet.deposit` (CONTRACT §3): credit `amount` of `currency` to the user's `main` wallet.
#[derive(Debug, JsonSchema)]
#[allow(dead_code)] // Its schema is the documentation; `Credit::validate` reads the payload.
pub struct DepositCommand {
    /// The command's id: one deposit, whatever its redeliveries.
    deposit_id: Id,
    user_id: Id,
    amount: Amount,
    currency: CurrencyCode,
}

impl Function for Deposit {
    const NAME: &'static str = "deposit";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "deposit_id";
    const FIELDS: &'static [&'static str] = &["deposit_id", "user_id", "amount", "currency"];
    type Command = Credit;

    fn interface() -> Interface {
        use Reason as R;
        Interface::of::<Self>()
            .command::<DepositCommand>("wallet.deposit", &[])
            .events::<NoFields>(
                &[Status::COMPLETED, Status::REJECTED],
                &[
                    R::INVALID_USER_ID,
                    R::UNKNOWN_CURRENCY,
                    R::INVALID_AMOUNT,
                    R::BALANCE_LIMIT,
                ],
            )
    }

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<Credit, Invalid> {
        Credit::validate(ctx, ENTITY, id, p)
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<Credit>],
    ) -> Result<Vec<Outcome>, StepError> {
        credit::apply(ctx, tx, (Self::NAME, ENTITY, "deposits"), commands, |c| c).await
    }
}
