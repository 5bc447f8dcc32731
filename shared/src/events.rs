//! Outcome events (CONTRACT §4): `wallet.events.<entity>.<status>`, `Nats-Msg-Id`
//! `<entity>:<id>:<status>`.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::cache::WalletSnapshot;
use crate::outbox::OutboxMessage;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    pub entity: &'static str,
    pub status: &'static str,
    pub user_id: Option<String>,
    pub currency: Option<String>,
    pub amount: Option<String>,
    pub balance: Option<String>,
    pub reason: Option<&'static str>,
    /// Entity-specific fields (`provider`, `campaign_id`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    pub at: String,
}

impl Event {
    pub fn new(entity: &'static str, id: &str, status: &'static str) -> Self {
        Self {
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

    pub fn rejected(entity: &'static str, id: &str, reason: &'static str) -> Self {
        Self {
            reason: Some(reason),
            ..Self::new(entity, id, "rejected")
        }
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
        }
    }
}

/// RFC 3339 in UTC with milliseconds, as the contract's example.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
