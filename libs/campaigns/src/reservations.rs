//! Campaign state in Redis: what lets a flash crowd be answered without PostgreSQL.
//!
//! Per campaign `C` (under `<ns>:bonus:`, or `<ns>:bonus:<shard>:` on each shard of several,
//! where `budget` is what that shard may grant: docs/sharding.md, step 5): `c:C` a hash of its
//! parameters (minor units, epoch milliseconds) with `reserved`, the budget taken by committed grants plus live reservations,
//! and `epoch`; `u:C` a hash of grants per user (committed plus live); `p:C` a sorted set of live
//! reservations by the time they were made. Per grant, `g:<grant_id>`: its record,
//! `R|amount|token|epoch|user|campaign` (reserved, until the reconciler settles it), `C|…`
//! (committed) or `X|reason|campaign|user` (rejected); committed and rejected records are kept
//! 25 hours. A rejection is written `x|…` by the script that decides it and becomes `X|…` once the
//! caller checked PostgreSQL ([`Reservations::confirm`]): a caller that fails between the two
//! (PostgreSQL down) leaves an `x` record, and whoever reads it next checks it again instead of
//! answering it unchecked.
//!
//! So Redis holds, at most: per campaign its parameters, one counter per user it granted to, and
//! its live reservations (those younger than `BONUS_RESERVATION_TIMEOUT`, or waiting for the
//! reconciler); per grant, about 100 bytes for 25 hours after it was decided. A grant whose record
//! expired (or was lost) is decided again, and a decision made afresh is checked against
//! PostgreSQL before it is answered ([`crate`]'s screen): a copy of a granted grant is never
//! refused, and never holds budget.
//!
//! Under `maxmemory`: `noeviction` (writes then fail, the batch is held as in an outage, and the
//! alert is Redis's memory) or a `volatile-*` policy, which evicts only records with a TTL (a
//! rejection or a committed record decided again, checked as above) are safe. An `allkeys-*`
//! policy may evict a campaign's counters (reloaded from PostgreSQL: safe) or a live reservation
//! (its budget stays counted until the campaign is next reloaded: grants are refused early, never
//! granted past the budget).
//!
//! [`RESERVE`] decides one grant atomically: a grant id with a record gets that record back (a
//! redelivery never reserves twice); otherwise the window, the per-user limit and the budget are
//! checked, in the contract's order, and the amount reserved or the rejection recorded. Redis is
//! never the source of truth: a campaign missing from Redis (never loaded, or lost with Redis's
//! data) is loaded from PostgreSQL ([`Reservations::load`]) before any grant of it is answered,
//! under a new epoch, and a reservation made under an older epoch counts for nothing.

use redis::aio::ConnectionManager;
use wallet_runtime::StepError;
use wallet_runtime::names::Names;

/// How long a rejection answered from Redis is remembered (the contract asks at least 24 hours),
/// and a committed grant's record.
pub const REJECTION_TTL_SECS: u64 = 25 * 3600;

/// KEYS: campaign, users, pending, grant. ARGV: grant id, user ('' when invalid), now (ms),
/// token for a new reservation, rejection TTL, campaign id.
/// Returns {'missing'} | {'known', record} | {'new', record}.
const RESERVE: &str = include_str!("scripts/reserve.lua");

/// KEYS: campaign, users, pending. ARGV: epoch, reserved, starts, ends, per_user, budget,
/// amount, min, max, then (user, grants) pairs. Replaces the campaign's state unless Redis
/// already holds this epoch or a later one. Returns 1 when it loaded.
const LOAD: &str = include_str!("scripts/load.lua");

/// KEYS: campaign, users, pending. ARGV: the committed records' TTL, then (grant id, token,
/// action, pg token) quadruples, where
/// action is `commit` (PostgreSQL holds this reservation's grant), `duplicate` (it holds the grant
/// under another reservation), `release` (it never committed) or `forget` (an older epoch).
/// A record whose token changed meanwhile is left alone.
const RECONCILE: &str = include_str!("scripts/reconcile.lua");

/// Marks rejections checked against PostgreSQL.
const CONFIRM: &str = include_str!("scripts/confirm.lua");

/// KEYS: campaign. ARGV: a bound of its budget. Lowers the budget to it, never raises it.
const LOWER: &str = include_str!("scripts/lower.lua");

/// A grant's record in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Reserved(Reservation),
    Committed(Reservation),
    Rejected {
        reason: String,
        campaign: String,
        user: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub amount_minor: i64,
    pub token: String,
    pub epoch: i64,
    pub user: String,
    pub campaign: String,
}

impl Reservation {
    /// Its record once committed.
    pub fn committed_record(&self) -> String {
        format!(
            "C|{}|{}|{}|{}|{}",
            self.amount_minor, self.token, self.epoch, self.user, self.campaign
        )
    }
}

impl Record {
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.splitn(6, '|').collect();
        match parts.as_slice() {
            [kind @ ("R" | "C"), amount, token, epoch, user, campaign] => {
                let r = Reservation {
                    amount_minor: amount.parse().ok()?,
                    token: (*token).to_owned(),
                    epoch: epoch.parse().ok()?,
                    user: (*user).to_owned(),
                    campaign: (*campaign).to_owned(),
                };
                Some(if *kind == "R" {
                    Record::Reserved(r)
                } else {
                    Record::Committed(r)
                })
            }
            ["X" | "x", reason, rest @ ..] => {
                let rest = rest.join("|");
                let (campaign, user) = rest.split_once('|')?;
                Some(Record::Rejected {
                    reason: (*reason).to_owned(),
                    campaign: campaign.to_owned(),
                    user: user.to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// A rejection the script decided that no caller has checked against PostgreSQL yet.
fn unchecked(record: &str) -> bool {
    record.starts_with("x|")
}

/// What [`Reservations::reserve`] found or did for one grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The campaign is not in Redis: load it, then ask again.
    Missing,
    /// The grant's record. `fresh`: decided now, or a rejection decided earlier by a caller that
    /// never checked it; either way, to check against PostgreSQL before it is answered.
    Record { record: Record, fresh: bool },
}

/// One grant to reserve.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub grant: &'a str,
    pub campaign: &'a str,
    /// `None`: the command's `user_id` is invalid.
    pub user: Option<&'a str>,
}

/// Campaign state to load (minor units, epoch milliseconds).
#[derive(Debug)]
pub struct State {
    pub epoch: i64,
    pub reserved: i64,
    pub starts_ms: Option<i64>,
    pub ends_ms: Option<i64>,
    pub per_user: i32,
    pub budget: i64,
    pub amount: Result<i64, (i64, i64)>,
    pub users: Vec<(String, i64)>,
}

/// The action the reconciler takes on one live reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Commit,
    Duplicate,
    Release,
    Forget,
}

#[derive(Clone)]
pub struct Reservations {
    conn: ConnectionManager,
    /// `<ns>:bonus:`, or `<ns>:bonus:<shard>:` on a shard: each shard keeps its own state.
    prefix: String,
    reserve: redis::Script,
    load: redis::Script,
    reconcile: redis::Script,
    confirm: redis::Script,
    lower: redis::Script,
}

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservations").finish_non_exhaustive()
    }
}

impl Reservations {
    /// The state of the one PostgreSQL (`shard` none) or of `shard`'s quotas: a shard's
    /// campaign counts its grants against its quota (docs/sharding.md, step 5), and its
    /// reconciler settles only its own reservations.
    pub fn new(conn: ConnectionManager, names: &Names, shard: Option<&str>) -> Self {
        let prefix = match shard {
            None => names.redis_key("bonus:"),
            Some(shard) => names.redis_key(&format!("bonus:{shard}:")),
        };
        Self {
            conn,
            prefix,
            reserve: redis::Script::new(RESERVE),
            load: redis::Script::new(LOAD),
            reconcile: redis::Script::new(RECONCILE),
            confirm: redis::Script::new(CONFIRM),
            lower: redis::Script::new(LOWER),
        }
    }

    pub fn campaign_key(&self, campaign: &str) -> String {
        format!("{}c:{campaign}", self.prefix)
    }
    pub fn users_key(&self, campaign: &str) -> String {
        format!("{}u:{campaign}", self.prefix)
    }
    pub fn pending_key(&self, campaign: &str) -> String {
        format!("{}p:{campaign}", self.prefix)
    }
    pub fn grant_key(&self, grant: &str) -> String {
        format!("{}g:{grant}", self.prefix)
    }

    /// Reserves `claims` in one round trip (a pipeline of [`RESERVE`] calls by SHA; the script
    /// is loaded once and again only after Redis forgot it).
    pub async fn reserve(
        &self,
        claims: &[Claim<'_>],
        now_ms: i64,
    ) -> Result<Vec<Reserved>, StepError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let invocations: Vec<redis::ScriptInvocation> = claims
            .iter()
            .map(|c| {
                let mut i = self.reserve.prepare_invoke();
                i.key(self.campaign_key(c.campaign))
                    .key(self.users_key(c.campaign))
                    .key(self.pending_key(c.campaign))
                    .key(self.grant_key(c.grant))
                    .arg(c.grant)
                    .arg(c.user.unwrap_or(""))
                    .arg(now_ms)
                    .arg(uuid::Uuid::new_v4().simple().to_string())
                    .arg(REJECTION_TTL_SECS)
                    .arg(c.campaign);
                i
            })
            .collect();
        let replies: Vec<Vec<String>> = self.pipeline(&self.reserve, &invocations).await?;
        replies
            .into_iter()
            .map(|reply| match reply.as_slice() {
                [m] if m == "missing" => Ok(Reserved::Missing),
                [how, raw] => Record::parse(raw)
                    .map(|record| Reserved::Record {
                        record,
                        fresh: how == "new" || unchecked(raw),
                    })
                    .ok_or_else(|| StepError::permanent(format!("bonus: bad record `{raw}`"))),
                other => Err(StepError::permanent(format!("bonus: bad reply {other:?}"))),
            })
            .collect()
    }

    /// Runs `invocations` of `script` in one pipeline by SHA; loads the script and retries once
    /// when Redis does not know it (a restart, `SCRIPT FLUSH`).
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        invocations: &[redis::ScriptInvocation<'_>],
    ) -> Result<Vec<T>, StepError> {
        let mut conn = self.conn.clone();
        for attempt in 0..2 {
            let mut pipe = redis::pipe();
            for i in invocations {
                pipe.invoke_script(i);
            }
            match pipe.query_async::<Vec<T>>(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        && attempt == 0 =>
                {
                    script.prepare_invoke().load_async(&mut conn).await?;
                }
                r => return Ok(r?),
            }
        }
        Err(StepError::transient("bonus: script not loaded"))
    }

    /// Marks the rejections of `grants` checked against PostgreSQL (see the module's docs); a
    /// grant whose record is no longer an unchecked rejection is left as it is.
    pub async fn confirm(&self, grants: &[&str]) -> Result<(), StepError> {
        if grants.is_empty() {
            return Ok(());
        }
        let mut i = self.confirm.prepare_invoke();
        for grant in grants {
            i.key(self.grant_key(grant));
        }
        let mut conn = self.conn.clone();
        i.invoke_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Remembers a rejection decided outside the script (`unknown_campaign`).
    pub async fn reject(
        &self,
        grant: &str,
        reason: &str,
        campaign: &str,
        user: &str,
    ) -> Result<(), StepError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.grant_key(grant))
            .arg(format!("X|{reason}|{campaign}|{user}"))
            .arg("EX")
            .arg(REJECTION_TTL_SECS)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Loads a campaign's state unless Redis holds this epoch or a later one; true when loaded.
    pub async fn load(&self, campaign: &str, s: &State) -> Result<bool, StepError> {
        let opt = |v: Option<i64>| v.map_or(String::new(), |v| v.to_string());
        let (amount, min, max) = match s.amount {
            Ok(a) => (a.to_string(), String::new(), String::new()),
            Err((lo, hi)) => (String::new(), lo.to_string(), hi.to_string()),
        };
        let mut i = self.load.prepare_invoke();
        i.key(self.campaign_key(campaign))
            .key(self.users_key(campaign))
            .key(self.pending_key(campaign))
            .arg(s.epoch)
            .arg(s.reserved)
            .arg(opt(s.starts_ms))
            .arg(opt(s.ends_ms))
            .arg(s.per_user)
            .arg(s.budget)
            .arg(amount)
            .arg(min)
            .arg(max);
        for (user, n) in &s.users {
            i.arg(user).arg(n);
        }
        let mut conn = self.conn.clone();
        let loaded: i64 = i.invoke_async(&mut conn).await?;
        Ok(loaded == 1)
    }

    /// Lowers a loaded campaign's budget to `bound` (minor units) if it is higher: on a shard,
    /// the bound its database knows now (V14), lower than the one it was loaded with once the
    /// other shards have granted, so that Redis refuses more of a spent campaign's grants.
    pub async fn lower_budget(&self, campaign: &str, bound: i64) -> Result<bool, StepError> {
        let mut conn = self.conn.clone();
        let lowered: i64 = self
            .lower
            .key(self.campaign_key(campaign))
            .arg(bound)
            .invoke_async(&mut conn)
            .await?;
        Ok(lowered == 1)
    }

    /// Records `record` for a grant PostgreSQL holds committed (its record had expired or was lost).
    pub async fn remember_committed(&self, grant: &str, record: &str) -> Result<(), StepError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.grant_key(grant))
            .arg(record)
            .arg("EX")
            .arg(REJECTION_TTL_SECS)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Live reservations of `campaign` with their records, oldest first, at most `limit`.
    pub async fn pending(
        &self,
        campaign: &str,
        limit: isize,
    ) -> Result<Vec<(String, i64, Option<Record>)>, StepError> {
        let mut conn = self.conn.clone();
        let ids: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(self.pending_key(campaign))
            .arg(0)
            .arg(limit - 1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|(g, _)| self.grant_key(g)).collect();
        let records: Vec<Option<String>> =
            redis::cmd("MGET").arg(keys).query_async(&mut conn).await?;
        Ok(ids
            .into_iter()
            .zip(records)
            .map(|((g, at), r)| (g, at, r.as_deref().and_then(Record::parse)))
            .collect())
    }

    /// Applies the reconciler's decisions (grant, token, action, PostgreSQL's token).
    pub async fn reconcile(
        &self,
        campaign: &str,
        decisions: &[(String, String, Action, String)],
    ) -> Result<(), StepError> {
        if decisions.is_empty() {
            return Ok(());
        }
        let mut i = self.reconcile.prepare_invoke();
        i.key(self.campaign_key(campaign))
            .key(self.users_key(campaign))
            .key(self.pending_key(campaign))
            .key(self.grant_key(""))
            .arg(REJECTION_TTL_SECS);
        for (grant, token, action, pg_token) in decisions {
            let action = match action {
                Action::Commit => "commit",
                Action::Duplicate => "duplicate",
                Action::Release => "release",
                Action::Forget => "forget",
            };
            i.arg(grant).arg(token).arg(action).arg(pg_token);
        }
        let mut conn = self.conn.clone();
        let _: i64 = i.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// The epoch of the campaign's state in Redis; `None` when not loaded.
    pub async fn epoch(&self, campaign: &str) -> Result<Option<i64>, StepError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HGET")
            .arg(self.campaign_key(campaign))
            .arg("epoch")
            .query_async(&mut conn)
            .await?)
    }

    /// The campaign's counters as Redis holds them: (epoch, reserved, users) or `None` when not loaded.
    pub async fn counters(
        &self,
        campaign: &str,
    ) -> Result<Option<(i64, i64, Vec<(String, i64)>)>, StepError> {
        let mut conn = self.conn.clone();
        let (epoch, reserved): (Option<i64>, Option<i64>) = redis::cmd("HMGET")
            .arg(self.campaign_key(campaign))
            .arg("epoch")
            .arg("reserved")
            .query_async(&mut conn)
            .await?;
        let (Some(epoch), Some(reserved)) = (epoch, reserved) else {
            return Ok(None);
        };
        let users: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(self.users_key(campaign))
            .query_async(&mut conn)
            .await?;
        Ok(Some((epoch, reserved, users)))
    }
}
