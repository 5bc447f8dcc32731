//! The wallet value types: which wallet ([`WalletKey`]: partition, owner, [`Kind`], provider,
//! currency) and
//! a wallet's balance after some posting ([`WalletSnapshot`]), as events and the cache carry it.
//!
//! They sit below the ledger, the cache and the events, which all speak of wallets and of nothing
//! else in each other.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::money::Currency;
use crate::partition::Partition;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Main,
    Bonus,
    Game,
    InTransit,
    /// Money on its way out to a payment provider (a withdrawal not yet paid or declined).
    Held,
    Platform,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Bonus => "bonus",
            Kind::Game => "game",
            Kind::InTransit => "in_transit",
            Kind::Held => "held",
            Kind::Platform => "platform",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "main" => Kind::Main,
            "bonus" => Kind::Bonus,
            "game" => Kind::Game,
            "in_transit" => Kind::InTransit,
            "held" => Kind::Held,
            "platform" => Kind::Platform,
            _ => return None,
        })
    }
}

/// A wallet: its partition, owner, kind, provider (game and in_transit: the game provider; held:
/// the payment provider; a platform account: its purpose) and currency. The derived order is the
/// order in which new wallets are created, the order of the accounts' unique key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalletKey {
    /// A user wallet's is its owner's; a platform account has one per partition, and a command
    /// posts to the one of its user's partition.
    pub partition: Partition,
    pub owner: String,
    pub kind: Kind,
    pub provider: String,
    pub currency: Currency,
}

impl WalletKey {
    pub fn user(owner: &str, kind: Kind, provider: &str, currency: Currency) -> Self {
        Self {
            partition: Partition::of(owner),
            owner: owner.to_owned(),
            kind,
            provider: provider.to_owned(),
            currency,
        }
    }

    pub fn main(owner: &str, currency: Currency) -> Self {
        Self::user(owner, Kind::Main, "", currency)
    }

    /// A platform account, named by what it counts (`deposits`, `bonus:<campaign>`, …), in
    /// `partition`: the partition of the user wallets it is the counterpart of.
    pub fn platform(purpose: &str, partition: Partition, currency: Currency) -> Self {
        Self {
            partition,
            owner: String::new(),
            kind: Kind::Platform,
            provider: purpose.to_owned(),
            currency,
        }
    }

    /// The platform account `purpose` that balances this wallet: in its partition and currency.
    pub fn counterpart(&self, purpose: &str) -> Self {
        Self::platform(purpose, self.partition, self.currency)
    }

    pub fn is_platform(&self) -> bool {
        self.kind == Kind::Platform
    }
}

/// A wallet's balance after some posting, as the cache stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletSnapshot {
    pub owner: String,
    /// `main:USD`, `game:alpha:USD`, …
    pub field: String,
    pub version: i64,
    /// Exactly the currency's minor-unit digits.
    pub balance: String,
}

impl WalletSnapshot {
    pub fn new(key: &WalletKey, version: i64, balance: Decimal) -> Self {
        Self {
            owner: key.owner.clone(),
            field: field(key.kind.as_str(), &key.provider, key.currency.code()),
            version,
            balance: key.currency.format(balance),
        }
    }
}

pub fn field(kind: &str, provider: &str, currency: &str) -> String {
    if provider.is_empty() {
        format!("{kind}:{currency}")
    } else {
        format!("{kind}:{provider}:{currency}")
    }
}
