//! Outcome events (CONTRACT §4): `wallet.events.<entity>.<status>`, `Nats-Msg-Id`
//! `<entity>:<id>:<status>`.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::outbox::OutboxMessage;
use crate::wallet::WalletSnapshot;

/// An event's status, the last token of its subject (`wallet.events.deposit.completed`).
/// Typed so that a status is never a stray string: the contract's are constants here, and a
/// function with statuses of its own names them once with [`Status::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Status(&'static str);

impl Status {
    pub const COMPLETED: Status = Status("completed");
    pub const REJECTED: Status = Status("rejected");
    pub const PENDING: Status = Status("pending");
    pub const FAILED: Status = Status("failed");
    pub const STUCK: Status = Status("stuck");
    pub const GRANTED: Status = Status("granted");

    /// A function's own status: lower-case, a subject token.
    pub const fn new(status: &'static str) -> Self {
        Self(status)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Why a command was rejected: the `reason` of its `rejected` event (CONTRACT §5). The
/// contract's are constants here; a function with rules of its own names its reasons once with
/// [`Reason::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Reason(&'static str);

impl Reason {
    pub const INVALID_USER_ID: Reason = Reason("invalid_user_id");
    pub const INVALID_AMOUNT: Reason = Reason("invalid_amount");
    pub const UNKNOWN_CURRENCY: Reason = Reason("unknown_currency");
    pub const INSUFFICIENT_FUNDS: Reason = Reason("insufficient_funds");
    pub const BALANCE_LIMIT: Reason = Reason("balance_limit");
    pub const UNKNOWN_PROVIDER: Reason = Reason("unknown_provider");
    pub const UNKNOWN_CAMPAIGN: Reason = Reason("unknown_campaign");
    pub const CAMPAIGN_INACTIVE: Reason = Reason("campaign_inactive");
    pub const LIMIT_REACHED: Reason = Reason("limit_reached");
    pub const CAMPAIGN_EXHAUSTED: Reason = Reason("campaign_exhausted");

    /// A function's own reason: lower-case, snake_case.
    pub const fn new(reason: &'static str) -> Self {
        Self(reason)
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

/// The version of the events' schema, in every event as `schema_version`: a change that
/// breaks a reader raises it; a new optional field does not.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// An outcome event. Its JSON Schema (`schemas/<function>/event.json`) is generated from this
/// type, its `entity`, `status` and `reason` narrowed per function ([`crate::interface`]).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(description = "An outcome event (CONTRACT §4)")]
pub struct Event {
    /// [`EVENT_SCHEMA_VERSION`].
    #[schemars(range(min = 1))]
    pub schema_version: u32,
    /// The command's id (`deposit_id`, `transfer_id`, `grant_id`).
    #[schemars(with = "crate::interface::Id")]
    pub id: String,
    #[schemars(with = "String")]
    pub entity: &'static str,
    #[schemars(with = "String")]
    pub status: Status,
    #[schemars(with = "Option<crate::interface::Id>")]
    pub user_id: Option<String>,
    #[schemars(with = "Option<crate::interface::CurrencyCode>")]
    pub currency: Option<String>,
    /// The command's amount, with the currency's minor-unit digits.
    #[schemars(with = "Option<crate::interface::Balance>")]
    pub amount: Option<String>,
    /// The changed wallet's balance right after this command (CONTRACT §4).
    #[schemars(with = "Option<crate::interface::Balance>")]
    pub balance: Option<String>,
    #[schemars(with = "Option<String>")]
    pub reason: Option<Reason>,
    /// Entity-specific fields (`provider`, `campaign_id`).
    #[serde(flatten)]
    #[schemars(skip)]
    pub extra: Map<String, Value>,
    #[schemars(with = "crate::interface::Timestamp")]
    pub at: String,
}

impl Event {
    pub fn new(entity: &'static str, id: &str, status: Status) -> Self {
        Self {
            schema_version: EVENT_SCHEMA_VERSION,
            id: id.to_owned(),
            entity,
            status,
            user_id: None,
            currency: None,
            amount: None,
            balance: None,
            reason: None,
            extra: Map::new(),
            at: now(),
        }
    }

    pub fn rejected(entity: &'static str, id: &str, reason: Reason) -> Self {
        Self {
            reason: Some(reason),
            ..Self::new(entity, id, Status::REJECTED)
        }
    }

    pub fn is_rejection(&self) -> bool {
        self.status == Status::REJECTED
    }

    /// Adds an entity-specific field (`provider`, `campaign_id`); `None` is `null`.
    pub fn with(mut self, field: &str, value: Option<&str>) -> Self {
        self.extra
            .insert(field.to_owned(), value.map_or(Value::Null, Value::from));
        self
    }

    pub fn subject(&self) -> String {
        format!("wallet.events.{}.{}", self.entity, self.status)
    }

    pub fn msg_id(&self) -> String {
        format!("{}:{}:{}", self.entity, self.id, self.status)
    }

    /// The outbox row that publishes this event once `wallets` are in the cache.
    pub fn into_outbox(self, wallets: Vec<WalletSnapshot>) -> OutboxMessage {
        OutboxMessage {
            subject: self.subject(),
            msg_id: self.msg_id(),
            payload: serde_json::to_vec(&self).unwrap_or_default().into(),
            wallets,
            rejection: self
                .is_rejection()
                .then_some(self.reason.unwrap_or(Reason::new("unspecified"))),
            traceparent: None,
        }
    }
}

/// RFC 3339 in UTC with milliseconds, as the contract's example.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
