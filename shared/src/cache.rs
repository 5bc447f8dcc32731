//! The balance cache in Redis: one hash per user, one field per wallet, each value
//! `<version>|<balance>`.
//!
//! Writes are versioned: a value replaces the cached one only if its version (the wallet's count
//! of postings) is higher, so an older snapshot never overwrites a newer one whatever order
//! writers and readers arrive in. A hash is only answered from when it holds the `~all` field,
//! set by a fill from PostgreSQL of all the user's wallets; a write-through after a commit updates
//! fields but never marks the hash complete. Redis is never the source of truth: losing it costs
//! a reload.
//!
//! Connections: `REDIS_URL` carries AUTH (`redis://:password@host`, or `user:password@` for an
//! ACL user); `rediss://` is TLS, verified against `REDIS_TLS_CA` when set, else the system's
//! roots. [`client`] is the one place that builds a client from the configuration.

use std::time::Duration;

use redis::aio::ConnectionManager;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::StepError;
use crate::ledger::WalletKey;
use crate::names::Names;

/// A client for the configured Redis: TLS for `rediss://` URLs, trusting `REDIS_TLS_CA` when
/// set. Connects lazily.
pub fn client(config: &Config) -> redis::RedisResult<redis::Client> {
    match &config.redis_tls_ca {
        Some(ca) => redis::Client::build_with_tls(
            config.redis_url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(ca)?),
            },
        ),
        None => redis::Client::open(config.redis_url.as_str()),
    }
}

const TTL: Duration = Duration::from_secs(24 * 3600);
const COMPLETE: &str = "~all";

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

/// `KEYS` the users' hashes; `ARGV[1]` '1' when the triples are all of each user's wallets;
/// `ARGV[2]` the TTL in seconds; then, for each key in order, its count of triples and the
/// (field, version, balance) triples themselves. One call serves many users: Redis pays its
/// per-call cost (parsing, the script's setup) once per chunk instead of once per user (Redis's
/// CPU per `deposit-max` run: about −12 %).
///
/// The TTL is set when a fill marks the hash complete and when a write adds a field (so every
/// hash has one from its creation), not on every write: a hash lives `TTL` from its last fill or
/// new wallet, then is filled again from PostgreSQL. Refreshing it on each write was a third of
/// the script's Redis calls in a run of deposits.
const WRITE: &str = r"
local complete, ttl, a = ARGV[1], ARGV[2], 3
for k = 1, #KEYS do
  local key, n = KEYS[k], tonumber(ARGV[a])
  local added = complete == '1'
  a = a + 1
  for i = a, a + 3 * n - 1, 3 do
    local cur = redis.call('HGET', key, ARGV[i])
    local v = -1
    if cur then v = tonumber(string.match(cur, '^(%-?%d+)|')) else added = true end
    if v < tonumber(ARGV[i + 1]) then
      redis.call('HSET', key, ARGV[i], ARGV[i + 1] .. '|' .. ARGV[i + 2])
    end
  end
  a = a + 3 * n
  if complete == '1' then redis.call('HSET', key, '~all', '1') end
  if added then redis.call('EXPIRE', key, ttl) end
end
return 1
";

/// Users per script call: large enough that the per-call cost vanishes, small enough that one
/// call holds Redis (single-threaded) for well under a millisecond.
const USERS_PER_CALL: usize = 100;

#[derive(Clone)]
pub struct BalanceCache {
    conn: ConnectionManager,
    names: Names,
    script: redis::Script,
}

impl std::fmt::Debug for BalanceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceCache")
            .field("namespace", &self.names.namespace())
            .finish()
    }
}

impl BalanceCache {
    pub fn new(conn: ConnectionManager, names: Names) -> Self {
        Self {
            conn,
            names,
            script: redis::Script::new(WRITE),
        }
    }

    fn key(&self, user: &str) -> String {
        self.names.redis_key(&format!("bal:{user}"))
    }

    pub async fn ping(&self) -> Result<(), StepError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Writes snapshots through after a commit (newer versions only), one script call per
    /// `USERS_PER_CALL` users, all in one pipeline. The pipeline loads the script first, so a
    /// Redis that restarted or was flushed needs nothing else. All keys of a call live on the one
    /// Redis this connects to (standalone or a Sentinel-managed primary; not Redis Cluster).
    pub async fn write_through(&self, snapshots: &[WalletSnapshot]) -> Result<(), StepError> {
        if snapshots.is_empty() {
            return Ok(());
        }
        let mut by_user: std::collections::BTreeMap<&str, Vec<&WalletSnapshot>> =
            Default::default();
        for s in snapshots {
            by_user.entry(s.owner.as_str()).or_default().push(s);
        }
        let users: Vec<_> = by_user.into_iter().collect();
        let mut pipe = redis::pipe();
        pipe.load_script(&self.script).ignore();
        for chunk in users.chunks(USERS_PER_CALL) {
            pipe.invoke_script(&self.invocation(false, chunk)).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// One call of [`WRITE`] for `users` and their snapshots.
    fn invocation(
        &self,
        complete: bool,
        users: &[(&str, Vec<&WalletSnapshot>)],
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(if complete { "1" } else { "0" }).arg(TTL.as_secs());
        for (user, snaps) in users {
            inv.key(self.key(user)).arg(snaps.len());
            for s in snaps {
                inv.arg(&s.field).arg(s.version).arg(&s.balance);
            }
        }
        inv
    }

    /// The user's wallets as (field, balance), when the cache holds all of them.
    pub async fn read(&self, user: &str) -> Result<Option<Vec<(String, String)>>, StepError> {
        let mut conn = self.conn.clone();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key(user))
            .query_async(&mut conn)
            .await?;
        if !all.iter().any(|(f, _)| f == COMPLETE) {
            return Ok(None);
        }
        Ok(Some(
            all.into_iter()
                .filter(|(f, _)| f != COMPLETE)
                .filter_map(|(f, v)| v.split_once('|').map(|(_, b)| (f, b.to_owned())))
                .collect(),
        ))
    }

    /// Stores all of a user's wallets as read from PostgreSQL and marks the hash complete.
    pub async fn fill(&self, user: &str, snapshots: &[WalletSnapshot]) -> Result<(), StepError> {
        let inv = self.invocation(true, &[(user, snapshots.iter().collect())]);
        let mut conn = self.conn.clone();
        inv.invoke_async::<()>(&mut conn).await?;
        Ok(())
    }
}
