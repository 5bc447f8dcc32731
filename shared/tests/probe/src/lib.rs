//! `probe`: the function `shared/tests/` runs the runtime with. No deployment runs it; its stream
//! exists only in those tests (`shared/tests/streams.toml`).
//!
//! `{probe_id, user_id, amount, currency, act?}` credits the user's `main` wallet from the
//! platform's `probe` account, as a deposit does. `act` asks for what the runtime must survive:
//! - `"poison"`: the transaction of any batch holding it fails (a permanent error), so the
//!   runtime must decide the batch command by command and dead-letter this one alone;
//! - `"retry"`: it cannot be decided yet (`Outcome::Retry`), until its last allowed delivery
//!   dead-letters it with the reason `probe_retry`.
//!
//! With `PROBE_BACKGROUND=panic` its background task panics once it runs: the runtime must log
//! it and exit non-zero.

use std::sync::Arc;
use std::time::Duration;

use wallet_runtime::credit::{self, Credit};
use wallet_runtime::function::Transaction;
use wallet_runtime::{
    CancellationToken, Command, Context, Function, Invalid, Outcome, Payload, StepError,
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
    pub credit: Credit,
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

    fn interface() -> wallet_runtime::interface::Interface {
        wallet_runtime::interface::Interface::of::<Self>()
    }

    fn validate(
        &self,
        ctx: &Context,
        _subject: &str,
        id: &str,
        p: &Payload,
    ) -> Result<ProbeCommand, Invalid> {
        let credit = Credit::validate(ctx, ENTITY, id, p)?;
        let act = match p.get("act").and_then(|a| a.as_str()) {
            None => Act::Credit,
            Some("poison") => Act::Poison,
            Some("retry") => Act::Retry,
            Some(_) => return Err(Invalid::Malformed),
        };
        Ok(ProbeCommand { credit, act })
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
        let credits: Vec<_> = commands
            .iter()
            .copied()
            .filter(|c| c.body.act == Act::Credit)
            .collect();
        let accounts = (Self::NAME, ENTITY, "probe");
        let mut credited = credit::apply(ctx, tx, accounts, &credits, |c| &c.credit)
            .await?
            .into_iter();
        let retry = || Outcome::Retry {
            after: Duration::from_millis(100),
            reason: PROBE_RETRY,
        };
        commands
            .iter()
            .map(|c| match c.body.act {
                Act::Retry => Ok(retry()),
                _ => credited
                    .next()
                    .ok_or_else(|| StepError::permanent("probe: an outcome short")),
            })
            .collect()
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
