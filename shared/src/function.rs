//! What a JetStream function provides: its names, its payload's validation and its effect.
//!
//! Everything else — pulling, decoding, dedup, the transaction, the outbox, acknowledgements,
//! dead letters, retries — is the runtime's. A function's [`Function::apply`] sees only commands
//! that are valid and new, all in one transaction, and returns one [`Outcome`] per command.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use deadpool_postgres::Transaction;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::context::Context;
use crate::error::{ConfigError, StepError};
use crate::events::{Event, Reason};
use crate::interface::Interface;
use crate::money::{Currency, parse_amount};
use crate::outbox::OutboxMessage;

/// A command's JSON object. Unknown fields are ignored by construction: a function reads the
/// fields it knows.
pub type Payload = Map<String, Value>;

/// A valid, new command.
#[derive(Debug)]
pub struct Command<C> {
    pub id: String,
    /// What dedup remembers it by ([`Function::key`]).
    pub key: String,
    pub body: C,
    /// When JetStream stored it: the time of its first delivery, whatever the redeliveries.
    pub stored_at: SystemTime,
}

/// Why a payload is not a valid command.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Built once per invalid command and moved once.
pub enum Invalid {
    /// A field is invalid: this rejection event is the command's outcome, remembered by dedup.
    Rejected(Event),
    /// Not a command at all: dead-lettered `malformed`, not remembered.
    Malformed,
}

/// What [`Function::screen`] decided for a command, before any transaction.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // One per command of a batch, moved once.
pub enum Screened {
    /// On to the transaction.
    Proceed,
    /// Answered without PostgreSQL: this event is published, the command acknowledged, and
    /// nothing is stored in PostgreSQL (the function remembers the answer where it decided it).
    Answered(Event),
    /// Dead-letter it with this reason (an id the screen remembers with another payload).
    DeadLetter(&'static str),
}

impl From<Event> for Invalid {
    fn from(e: Event) -> Self {
        Invalid::Rejected(e)
    }
}

/// Reads a payload's `currency`, then its `amount` (the digits an amount may have depend on its
/// currency, CONTRACT §2). `rejection` carries the fields validated so far; on failure it is
/// returned with its reason (`unknown_currency` or `invalid_amount`) and, for the latter, the
/// currency.
#[allow(clippy::result_large_err)] // As `validate`: the rejection moves once into the outbox.
pub fn currency_and_amount(
    ctx: &Context,
    p: &Payload,
    rejection: Event,
) -> Result<(Currency, rust_decimal::Decimal), Invalid> {
    let (currency, mut rejection) = currency_of(ctx, p, rejection)?;
    let Ok(amount) = parse_amount(p.get("amount"), currency) else {
        rejection.reason = Some(Reason::INVALID_AMOUNT);
        rejection.currency = Some(currency.code().to_owned());
        return Err(rejection.into());
    };
    Ok((currency, amount))
}

/// Reads a payload's `currency`, one of the configured ones, or returns `rejection` with
/// `unknown_currency`; gives `rejection` back for the fields that follow.
#[allow(clippy::result_large_err)]
pub fn currency_of(
    ctx: &Context,
    p: &Payload,
    mut rejection: Event,
) -> Result<(Currency, Event), Invalid> {
    match p
        .get("currency")
        .and_then(|c| c.as_str())
        .and_then(|c| ctx.config.currencies.get(c))
    {
        Some(currency) => Ok((currency, rejection)),
        None => {
            rejection.reason = Some(Reason::UNKNOWN_CURRENCY);
            Err(rejection.into())
        }
    }
}

/// The fields of a command that moves a user's money through a partner (a transfer to a game
/// provider, a withdrawal through a payment provider), in the contract's order: `user_id`, the
/// partner (`field`, one of `known`, else rejected `unknown`), then `currency` and `amount`. A
/// rejection of `entity` carries the fields valid so far, and `field` (null until it is valid).
#[allow(clippy::result_large_err)] // As `validate`: the rejection moves once into the outbox.
pub fn partner_command<'p>(
    ctx: &Context,
    p: &'p Payload,
    entity: (&'static str, &str),
    partner: (&'static str, &[String], Reason),
) -> Result<(&'p str, &'p str, Currency, rust_decimal::Decimal), Invalid> {
    let (user_id, partner, rejection) = partner_of(p, entity, partner)?;
    let (currency, amount) = currency_and_amount(ctx, p, rejection)?;
    Ok((user_id, partner, currency, amount))
}

/// The first two fields of a [`partner_command`], and the rejection that carries them, for the
/// fields that follow.
#[allow(clippy::result_large_err)]
pub fn partner_of<'p>(
    p: &'p Payload,
    (entity, id): (&'static str, &str),
    (field, known, unknown): (&'static str, &[String], Reason),
) -> Result<(&'p str, &'p str, Event), Invalid> {
    let mut rejection = Event::rejected(entity, id, Reason::INVALID_USER_ID).with(field, None);
    let Some(user_id) = crate::ids::from_value(p.get("user_id")) else {
        return Err(rejection.into());
    };
    rejection.user_id = Some(user_id.to_owned());
    let Some(partner) = p
        .get(field)
        .and_then(|v| v.as_str())
        .filter(|p| known.iter().any(|k| k == p))
    else {
        rejection.reason = Some(unknown);
        return Err(rejection.into());
    };
    Ok((user_id, partner, rejection.with(field, Some(partner))))
}

/// How one command ended inside the transaction.
#[derive(Debug)]
pub enum Outcome {
    /// Decided: these messages go out through the outbox; the command id is remembered.
    Done(Vec<OutboxMessage>),
    /// Not for this function to decide: dead-letter it with this reason.
    DeadLetter(&'static str),
    /// Not decidable yet: redeliver `after` this delay; on the command's last allowed delivery it
    /// is dead-lettered with `reason` instead (JetStream would never deliver it again).
    Retry {
        after: Duration,
        reason: &'static str,
    },
}

pub trait Function: Send + Sync + Sized + 'static {
    /// The folder and binary name; the consumer in `streams.toml`; the token of `dlq.<function>`.
    const NAME: &'static str;
    /// The `entity` of its outcome events.
    const ENTITY: &'static str;
    /// The payload field that holds the command id.
    const ID_FIELD: &'static str;
    /// The payload's fields in the contract's order; their values are the dedup fingerprint.
    const FIELDS: &'static [&'static str];

    type Command: Send + Sync + 'static;

    /// Reads the function's own settings from its environment (a limit, a list of partners),
    /// once at start-up, after the runtime's own settings and before any connection: a bad value
    /// is one line on stderr and exit 64, as for the runtime's. Nothing by default.
    fn configure(self, _config: &Config) -> Result<Self, ConfigError> {
        Ok(self)
    }

    /// The messages it reads and writes, with their schemas generated from its payload types
    /// (`--interface`; `walletctl interface` makes asyncapi.yaml and schemas/ of them).
    fn interface() -> Interface;

    // A rejection is an event that moves once into the outbox; boxing it buys nothing.
    #[allow(clippy::result_large_err)]
    /// Checks the fields in the contract's order; `subject` is the one the command arrived on,
    /// without the namespace. A rejection is an event with status `rejected`, its `reason` and
    /// the fields that were valid.
    fn validate(
        &self,
        ctx: &Context,
        subject: &str,
        id: &str,
        payload: &Payload,
    ) -> Result<Self::Command, Invalid>;

    /// What dedup remembers a valid command by; its id unless one id can name several commands
    /// (a provider's ack is `<provider>:<transfer_id>:<status>`). A rejection is remembered by id.
    fn key(id: &str, _command: &Self::Command) -> String {
        id.to_owned()
    }

    /// Decides what it can from state faster than PostgreSQL, before the transaction (the bonus
    /// campaigns' Redis reservations); one answer per command. Everything proceeds by default.
    fn screen<'a>(
        &'a self,
        _ctx: &'a Context,
        commands: &'a [&'a Command<Self::Command>],
    ) -> impl Future<Output = Result<Vec<Screened>, StepError>> + Send + 'a {
        async move { Ok(commands.iter().map(|_| Screened::Proceed).collect()) }
    }

    /// Applies valid new commands, in order, inside one transaction; one outcome per command.
    fn apply<'a>(
        &'a self,
        ctx: &'a Context,
        tx: &'a Transaction<'a>,
        commands: &'a [&'a Command<Self::Command>],
    ) -> impl Future<Output = Result<Vec<Outcome>, StepError>> + Send + 'a;

    /// Work that runs beside the consumer on every replica until `shutdown` (a sweeper); it must
    /// be safe with any number of replicas. None by default.
    fn background(
        &self,
        _ctx: Arc<Context>,
        _shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        async {}
    }
}
