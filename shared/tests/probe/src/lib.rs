//! `probe`: the function `shared/tests/` runs the runtime with. No deployment runs it; its stream
//! exists only in those tests (`shared/tests/streams.toml`).
//!
//! `{probe_id, user_id, amount, currency, act?}` credits the user's `main` wallet from the
//! platform's `probe` account, like a deposit, and its `completed` event carries `batch`: how
//! many commands its transaction applied. `act` asks for what the runtime must survive:
//! - `"poison"`: the transaction of any batch holding it fails (a permanent error), so the
//!   runtime must decide the batch command by command and dead-letter this one alone;
//! - `"retry"`: it cannot be decided yet (`Outcome::Retry`), until its last allowed delivery
//!   dead-letters it with the reason `probe_retry`.
//!
//! With `PROBE_BACKGROUND=panic` its background task panics once it runs: the runtime must log
//! it and exit non-zero.

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use wallet_runtime::function::{Transaction, currency_and_amount};
use wallet_runtime::money::Currency;
use wallet_runtime::wallet::WalletKey;
use wallet_runtime::{
    CancellationToken, Command, Context, Event, Function, Invalid, Outcome, Payload, Reason,
    Status, StepError, ids,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct Probe;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Credit,
    Poison,
    Retry,
}

#[derive(Debug)]
pub struct ProbeCommand {
    pub user_id: String,
    pub currency: Currency,
    pub amount: Decimal,
    pub act: Act,
}

const ENTITY: &str = "probe";

/// The dead-letter reason of a `retry` command on its last allowed delivery.
pub const PROBE_RETRY: &str = "probe_retry";

impl Function for Probe {
    const NAME: &'static str = "probe";
    const ENTITY: &'static str = ENTITY;
    const ID_FIELD: &'static str = "probe_id";
    const FIELDS: &'static [&'static str] = &["probe_id", "user_id", "amount", "currency", "act"];
    type Command = ProbeCommand;

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<ProbeCommand, Invalid> {
        let mut rejection = Event::rejected(ENTITY, id, Reason::INVALID_USER_ID);
        let Some(user_id) = ids::from_value(p.get("user_id")) else {
            return Err(rejection.into());
        };
        rejection.user_id = Some(user_id.to_owned());
        let (currency, amount) = currency_and_amount(ctx, p, rejection)?;
        let act = match p.get("act").and_then(|a| a.as_str()) {
            None => Act::Credit,
            Some("poison") => Act::Poison,
            Some("retry") => Act::Retry,
            Some(_) => return Err(Invalid::Malformed),
        };
        Ok(ProbeCommand {
            user_id: user_id.to_owned(),
            currency,
            amount,
            act,
        })
    }

    async fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<ProbeCommand>],
    ) -> Result<Vec<Outcome>, StepError> {
        if commands.iter().any(|c| c.body.act == Act::Poison) {
            return Err(StepError::permanent("probe: a poison command in the batch"));
        }
        let wallets = |c: &ProbeCommand| {
            (
                WalletKey::main(&c.user_id, c.currency),
                WalletKey::platform("probe", c.currency),
            )
        };
        let credits = commands.iter().filter(|c| c.body.act == Act::Credit);
        let keys = credits.clone().flat_map(|c| {
            let (main, platform) = wallets(&c.body);
            [main, platform]
        });
        let mut book = ctx.ledger.open(tx, keys).await?;
        let batch = credits.count().to_string();
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            let c = &command.body;
            if c.act == Act::Retry {
                outcomes.push(Outcome::Retry {
                    after: Duration::from_millis(100),
                    reason: PROBE_RETRY,
                });
                continue;
            }
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
            }
            .with("batch", Some(&batch));
            outcomes.push(Outcome::Done(vec![event.into_outbox(vec![snapshot])]));
        }
        book.write(tx).await?;
        Ok(outcomes)
    }

    fn background(
        &self,
        _ctx: Arc<Context>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let panic = std::env::var("PROBE_BACKGROUND").is_ok_and(|v| v == "panic");
        async move {
            assert!(!panic, "probe: PROBE_BACKGROUND=panic");
            shutdown.cancelled().await;
        }
    }
}
