//! The connections and settings a running function shares with its handler.

use async_nats::jetstream;
use deadpool_postgres::Pool;

use crate::cache::BalanceCache;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::names::Names;
use crate::outbox::{InHand, Publisher};

#[derive(Debug)]
pub struct Context {
    pub config: Config,
    pub names: Names,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub pool: Pool,
    pub cache: BalanceCache,
    /// The Redis connection the cache uses, for functions that keep state of their own there.
    pub redis: redis::aio::ConnectionManager,
    pub ledger: Ledger,
    /// Outbox rows committed here and not yet published, which the relay leaves alone.
    pub in_hand: InHand,
}

impl Context {
    pub fn publisher(&self) -> Publisher {
        Publisher {
            pool: self.pool.clone(),
            js: self.js.clone(),
            cache: self.cache.clone(),
            names: self.names.clone(),
            in_hand: self.in_hand.clone(),
        }
    }
}
