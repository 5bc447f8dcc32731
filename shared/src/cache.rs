//! The balance cache in Redis: one hash per user who asked for a balance, one field per wallet,
//! each value `<version>|<balance>`.
//!
//! A user's hash is created by a read that missed (a fill from PostgreSQL of all the user's
//! wallets, which marks it complete with the `~all` field) and kept current by the functions'
//! write-throughs after each commit; a write-through updates the hashes that exist and creates
//! none. Writes are versioned: a value replaces the cached one only if its version (the wallet's
//! count of postings) is higher, so an older snapshot never overwrites a newer one whatever order
//! writers and readers arrive in. Redis is never the source of truth: losing it costs a reload.
//!
//! Why a write-through creates no hash: a hash lost with a Redis restart may have held a newer
//! balance than a write still on its way (another replica's, or the outbox relay's), which would
//! then have been the only value left. With no hash it goes nowhere, and the next read fills from
//! PostgreSQL. It also keeps Redis to the users who read, not every user who transacts.
//!
//! A fill is begun before PostgreSQL is read ([`BalanceCache::begin_fill`] leaves a ticket in the
//! hash) and completes only if that ticket is still there ([`BalanceCache::fill`]). Versions alone
//! cannot protect a fill: if the hash is lost between its read and its write (Redis restarted
//! empty, the key evicted or deleted), a newer balance written through meanwhile is lost with it,
//! and the fill would mark its older snapshot complete, to be served until the next write. With
//! the ticket, a surviving hash holds every write-through made since the fill began (its versions
//! keep the newest), and any write committed before is in what the fill read.
//!
//! Connections: `REDIS_URL` carries AUTH (`redis://:password@host`, or `user:password@` for an
//! ACL user); `rediss://` is TLS, verified against `REDIS_TLS_CA` when set, else the system's
//! roots. [`client`] is the one place that builds a client from the configuration.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::config::Config;
use crate::error::StepError;
use crate::names::Names;
use crate::wallet::WalletSnapshot;

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
/// Fields that are not wallets start with `~`: the complete mark and a fill's ticket.
const COMPLETE: &str = "~all";
const TICKET: &str = "~fill";

/// `KEYS` the users' hashes; `ARGV[1]` a fill's ticket when the triples are all of the one user's
/// wallets (the call writes nothing and returns 0 unless the ticket is still in the hash), else
/// '' for a write-through (which skips the hashes that do not exist); `ARGV[2]` the TTL in
/// seconds; then, for each key in order, its count of triples and the (field, version, balance)
/// triples themselves. One call serves many users: Redis pays its per-call cost (parsing, the
/// script's setup) once per chunk instead of once per user (Redis's CPU per `deposit-max` run:
/// about −12 %).
///
/// Only a fill sets the TTL (and [`BalanceCache::begin_fill`], which creates the hash): a hash
/// lives `TTL` from its last fill, then is filled again from PostgreSQL on the next read.
const WRITE: &str = r"
local ticket, ttl, a = ARGV[1], ARGV[2], 3
local fill = ticket ~= ''
if fill and redis.call('HGET', KEYS[1], '~fill') ~= ticket then return 0 end
for k = 1, #KEYS do
  local key, n = KEYS[k], tonumber(ARGV[a])
  a = a + 1
  if fill or redis.call('EXISTS', key) == 1 then
    for i = a, a + 3 * n - 1, 3 do
      local cur = redis.call('HGET', key, ARGV[i])
      if not cur or tonumber(string.match(cur, '^(%-?%d+)|')) < tonumber(ARGV[i + 1]) then
        redis.call('HSET', key, ARGV[i], ARGV[i + 1] .. '|' .. ARGV[i + 2])
      end
    end
  end
  a = a + 3 * n
end
if fill then
  redis.call('HSET', KEYS[1], '~all', '1')
  redis.call('HDEL', KEYS[1], '~fill')
  redis.call('EXPIRE', KEYS[1], ttl)
end
return 1
";

/// Users per script call: large enough that the per-call cost vanishes, small enough that one
/// call holds Redis (single-threaded) for well under a millisecond.
const USERS_PER_CALL: usize = 100;

/// A fill begun by [`BalanceCache::begin_fill`].
#[derive(Debug)]
pub struct FillTicket(String);

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

    /// Writes snapshots through after a commit (newer versions only, to the users' hashes that
    /// exist), one script call per `USERS_PER_CALL` users, all in one pipeline. The pipeline
    /// loads the script first, so a Redis that restarted or was flushed needs nothing else. All
    /// keys of a call live on the one Redis this connects to (standalone or a Sentinel-managed
    /// primary; not Redis Cluster).
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
            pipe.invoke_script(&self.invocation("", chunk)).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// One call of [`WRITE`] for `users` and their snapshots; `ticket` is a fill's, or ''.
    fn invocation(
        &self,
        ticket: &str,
        users: &[(&str, Vec<&WalletSnapshot>)],
    ) -> redis::ScriptInvocation<'_> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(ticket).arg(TTL.as_secs());
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
                .filter(|(f, _)| !f.starts_with('~'))
                .filter_map(|(f, v)| v.split_once('|').map(|(_, b)| (f, b.to_owned())))
                .collect(),
        ))
    }

    /// Leaves a fill's ticket in the user's hash; call it before reading the user's wallets from
    /// PostgreSQL, then hand the ticket to [`BalanceCache::fill`]. A later ticket replaces it (of
    /// two concurrent fills, the one begun last completes).
    pub async fn begin_fill(&self, user: &str) -> Result<FillTicket, StepError> {
        let ticket = FillTicket(uuid::Uuid::new_v4().simple().to_string());
        let key = self.key(user);
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .hset(&key, TICKET, &ticket.0)
            .ignore()
            .expire(&key, TTL.as_secs() as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(ticket)
    }

    /// Stores all of a user's wallets as read from PostgreSQL since `ticket` was left and marks
    /// the hash complete; false (nothing written) when the ticket is gone: the hash was lost
    /// meanwhile, or another fill began after this one.
    pub async fn fill(
        &self,
        user: &str,
        ticket: &FillTicket,
        snapshots: &[WalletSnapshot],
    ) -> Result<bool, StepError> {
        let inv = self.invocation(&ticket.0, &[(user, snapshots.iter().collect())]);
        let mut conn = self.conn.clone();
        Ok(inv.invoke_async::<i64>(&mut conn).await? == 1)
    }
}
