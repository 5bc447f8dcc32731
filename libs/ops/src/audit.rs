//! `walletctl audit`: checks the invariants of CONTRACT §5 and §6 (the ledger, wallets,
//! transfers, campaigns) against PostgreSQL, and the balance cache and the campaign counters in
//! Redis against PostgreSQL. Read-only.

use std::collections::HashMap;
use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;
use wallet_runtime::Config;
use wallet_runtime::partition::Partition;
use wallet_runtime::saga::{self, Saga};
use wallet_runtime::shards::{Shard, ShardMap};

/// One invariant and what was found.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub breaches: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

/// `--json`: `{"ok": …, "checks": [{"name", "breaches"}], "notes": […]}`.
impl Serialize for Report {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("Report", 3)?;
        m.serialize_field("ok", &self.ok())?;
        m.serialize_field("checks", &self.checks)?;
        m.serialize_field("notes", &self.notes)?;
        m.end()
    }
}

impl Report {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.breaches.is_empty())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for note in &self.notes {
            writeln!(f, "      {note}")?;
        }
        for c in &self.checks {
            if c.breaches.is_empty() {
                writeln!(f, "ok    {}", c.name)?;
            } else {
                writeln!(f, "FAIL  {} ({} breach(es))", c.name, c.breaches.len())?;
                for b in c.breaches.iter().take(20) {
                    writeln!(f, "        {b}")?;
                }
            }
        }
        writeln!(
            f,
            "{}",
            if self.ok() {
                "audit: clean"
            } else {
                "audit: BREACHED"
            }
        )
    }
}

/// A saga that parks money in a user wallet while it waits for its partner's answer (`parked`):
/// its first step posts `<first>:<id>` (two legs: `main` debited, the parked wallet credited), the
/// answer that ends it `<answer>:<partner>:<id>:<answer's status>`: one debit of the parked
/// wallet, and its credit to a user wallet (or, summed with the transaction's others, a platform
/// account). The parked wallets match the open sagas; each saga moved its amount once at its
/// start and once at its end, as its status says.
fn saga_checks(saga: &Saga) -> Option<[(String, String); 3]> {
    let Saga {
        table,
        rows,
        entity: noun,
        partner,
        first,
        answer,
        ends: (s0, _),
        answers: (a0, a1),
        ..
    } = saga;
    let parked = saga.parked?;
    Some([
            (
                format!("every {parked} amount equals the sum of its pending {table}"),
                format!(
                    "WITH pending AS (
                         SELECT user_id, {partner}, currency, sum(amount) AS total FROM {table}
                         WHERE status = 'pending' AND ({rows}) GROUP BY 1, 2, 3),
                     wallets AS (SELECT owner, provider, currency, balance FROM accounts WHERE kind = '{parked}')
                     SELECT coalesce(w.owner, p.user_id) || ' ' || coalesce(w.provider, p.{partner}) || ' '
                            || coalesce(w.currency, p.currency) || ': {parked} ' || coalesce(w.balance, 0)
                            || ', pending {table} ' || coalesce(p.total, 0)
                     FROM wallets w FULL JOIN pending p
                       ON (w.owner, w.provider, w.currency) = (p.user_id, p.{partner}, p.currency)
                     WHERE coalesce(w.balance, 0) <> coalesce(p.total, 0)"
                ),
            ),
            (
                format!("every {noun} has one debit of its amount"),
                format!(
                    "SELECT t.id || ': ' || count(p.id) || ' debit leg(s), ' || coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0)
                            || ' moved for ' || t.amount
                     FROM {table} t LEFT JOIN postings p ON p.command = '{first}:' || t.id
                     WHERE ({rows})
                     GROUP BY t.id, t.amount
                     HAVING count(p.id) <> 2 OR coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0) <> t.amount"
                ),
            ),
            (
                format!(
                    "every finished {noun} has exactly one final posting, matching its status; a pending one none"
                ),
                format!(
                    "WITH finals AS (
                         SELECT substring(command from '^{answer}:[a-z0-9-]+:(.*):[a-z]+$') AS id,
                                substring(command from ':([a-z]+)$') AS ack,
                                count(*) FILTER (WHERE amount < 0) AS legs,
                                -sum(amount) FILTER (WHERE amount < 0) AS moved
                         FROM postings WHERE command LIKE '{answer}:%' GROUP BY 1, 2)
                     SELECT t.id || ' ' || t.status || ': '
                            || coalesce(string_agg(f.ack || ' (' || f.legs || ' debit leg(s), ' || f.moved || ')', ', '), 'no final posting')
                     FROM {table} t LEFT JOIN finals f ON f.id = t.id
                     WHERE ({rows})
                     GROUP BY t.id, t.status, t.amount
                     HAVING count(f.id) <> CASE WHEN t.status = 'pending' THEN 0 ELSE 1 END
                         OR bool_or(f.legs <> 1 OR f.moved <> t.amount
                                    OR f.ack <> CASE t.status WHEN '{s0}' THEN '{a0}' ELSE '{a1}' END)"
                ),
            ),
        ])
}

/// Every saga's platform accounts ([`saga::Platform`]), each explained by the rows of the saga
/// that ended positively.
fn explained_checks() -> Vec<(String, String)> {
    saga::ALL
        .iter()
        .filter_map(|s| s.platform.map(|p| (s, p)))
        .map(|(s, p)| {
            let (purpose, per_row, partner, table, rows) =
                (p.purpose, p.per_row, s.partner, s.table, s.rows);
            let (ended, label) = (s.ends.0, p.explained_by);
            (
                p.check.to_owned(),
                format!(
                    "WITH expected (purpose, currency, total) AS (
                         SELECT '{purpose}:' || {partner}, currency, sum({per_row}) FROM {table}
                         WHERE ({rows}) AND status = '{ended}' GROUP BY 1, 2),
                     posted AS (
                         SELECT a.provider AS purpose, a.currency, coalesce(sum(p.amount), 0) AS total
                         FROM accounts a LEFT JOIN postings p ON (p.partition, p.account_id) = (a.partition, a.id)
                         WHERE a.kind = 'platform' AND starts_with(a.provider, '{purpose}:') GROUP BY 1, 2)
                     SELECT coalesce(x.purpose, e.purpose) || ' ' || coalesce(x.currency, e.currency)
                            || ': posted ' || coalesce(x.total, 0) || ', {label} ' || coalesce(e.total, 0)
                     FROM posted x FULL JOIN expected e ON (x.purpose, x.currency) = (e.purpose, e.currency)
                     WHERE coalesce(x.total, 0) <> coalesce(e.total, 0)"
                ),
            )
        })
        .collect()
}

/// Each check is one query returning one row per breach, described as text.
const CHECKS: &[(&str, &str)] = &[
    (
        "the ledger sums to zero in every currency",
        "SELECT a.currency || ': postings sum to ' || sum(p.amount)
         FROM postings p JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id)
         GROUP BY a.currency HAVING sum(p.amount) <> 0",
    ),
    (
        // A journal entry is a transaction's postings (V6); before V6, a command's.
        "every journal entry's postings sum to zero per currency",
        "SELECT e.entry || ' ' || a.currency || ': ' || sum(p.amount)
         FROM postings p JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id),
              LATERAL (SELECT coalesce('transaction ' || p.entry, p.command) AS entry) e
         GROUP BY e.entry, a.currency HAVING sum(p.amount) <> 0",
    ),
    (
        // V11 on: a partition's postings balance on their own, so the partition can move.
        "every journal entry since the ledger was partitioned sums to zero within each partition",
        "SELECT 'transaction ' || p.entry || ' ' || a.currency || ' in partition ' || p.partition
                || ': ' || sum(p.amount)
         FROM postings p JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id)
         WHERE p.entry > (SELECT max(entry) FROM partitioned_since)
         GROUP BY p.entry, p.partition, a.currency HAVING sum(p.amount) <> 0",
    ),
    (
        "every user wallet is in its owner's partition",
        "SELECT owner || ' ' || kind || ' ' || provider || ' ' || currency || ': partition '
                || partition || ', its owner''s ' || wallet_partition(owner)
         FROM accounts WHERE owner <> '' AND partition <> wallet_partition(owner)",
    ),
    (
        // V13: a split moves them by this column.
        "every transfer, withdrawal, daily amount and grant is in its user's partition",
        "SELECT r.what || ' of ' || r.user_id || ': partition ' || r.partition
                || ', its user''s ' || wallet_partition(r.user_id)
         FROM (SELECT 'transfer ' || id AS what, user_id, partition FROM transfers
               UNION ALL SELECT 'withdrawal ' || id, user_id, partition FROM withdrawals
               UNION ALL SELECT 'daily amount ' || currency || ' ' || day, user_id, partition
                         FROM withdrawal_days
               UNION ALL SELECT 'grant ' || id, user_id, partition FROM grants) r
         WHERE r.partition <> wallet_partition(r.user_id)",
    ),
    (
        // V12: empty on one PostgreSQL, where every partition is this database's.
        "every wallet is in a partition the shard map gives this database",
        "SELECT a.owner || ' ' || a.kind || ' ' || a.provider || ' ' || a.currency || ': partition '
                || a.partition || ', which the map gives to ' || coalesce(m.shard, 'no shard')
         FROM accounts a LEFT JOIN partition_map m USING (partition)
         WHERE m.shard IS DISTINCT FROM (SELECT name FROM shard_self)",
    ),
    (
        "every wallet's balance equals the sum of its postings",
        "SELECT a.owner || ' ' || a.kind || ' ' || a.provider || ' ' || a.currency
                || ': balance ' || a.balance || ', postings ' || coalesce(s.total, 0)
         FROM accounts a
         LEFT JOIN (SELECT partition, account_id, sum(amount) AS total, count(*) AS n
                    FROM postings GROUP BY 1, 2) s
                ON (s.partition, s.account_id) = (a.partition, a.id)
         WHERE a.kind <> 'platform' AND (a.balance <> coalesce(s.total, 0) OR a.version <> coalesce(s.n, 0))",
    ),
    (
        "every posting's account exists",
        "SELECT 'posting ' || p.id || ': no account ' || p.account_id || ' in partition ' || p.partition
         FROM postings p
         WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE (a.partition, a.id) = (p.partition, p.account_id))",
    ),
    (
        "no user wallet is below zero",
        "SELECT owner || ' ' || kind || ' ' || provider || ' ' || currency || ': ' || balance
         FROM accounts WHERE kind <> 'platform' AND balance < 0",
    ),
    (
        "every posting to a user wallet names its command; only platform accounts get a transaction's sum",
        "SELECT 'posting ' || p.id || ' to ' || a.owner || ' ' || a.kind || ' ' || a.currency || ': no command'
         FROM postings p JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id)
         WHERE p.command IS NULL AND a.kind <> 'platform'",
    ),
    (
        "every posting's command is remembered by dedup",
        "SELECT DISTINCT p.command FROM postings p
         WHERE p.command IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM commands c WHERE c.function || ':' || c.id = p.command)",
    ),
    (
        "every user's withdrawals of a day count its pending and paid withdrawals",
        "WITH counted AS (
             SELECT user_id, currency, day, sum(amount) AS total FROM withdrawals
             WHERE status <> 'declined' GROUP BY 1, 2, 3)
         SELECT coalesce(d.user_id, c.user_id) || ' ' || coalesce(d.currency, c.currency) || ' '
                || coalesce(d.day, c.day) || ': counted ' || coalesce(d.amount, 0)
                || ', pending and paid ' || coalesce(c.total, 0)
         FROM withdrawal_days d FULL JOIN counted c
           ON (d.user_id, d.currency, d.day) = (c.user_id, c.currency, c.day)
         WHERE coalesce(d.amount, 0) <> coalesce(c.total, 0)",
    ),
    (
        // A transfer in's answer credits `main` with what came back and takes from `game` what
        // its row says it took (the rest: the players' results, a platform sum).
        "every completed transfer in credited main with what came back and took what it recorded from game; any other none",
        "WITH finals AS (
             SELECT substring(p.command from '^provider-ack:[a-z0-9-]+:(.*):[a-z]+$') AS id,
                    sum(p.amount) FILTER (WHERE a.kind = 'main') AS credited,
                    -sum(p.amount) FILTER (WHERE a.kind = 'game') AS took,
                    count(*) AS legs
             FROM postings p JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id)
             WHERE p.command LIKE 'provider-ack:%' GROUP BY 1)
         SELECT t.id || ' ' || t.status || ': ' || coalesce(f.legs, 0) || ' leg(s), credited '
                || coalesce(f.credited, 0) || ', took ' || coalesce(f.took, 0) || '; returned '
                || coalesce(t.returned::text, 'none') || ', taken ' || coalesce(t.taken::text, 'none')
         FROM transfers t LEFT JOIN finals f ON f.id = t.id
         WHERE t.direction = 'in'
           AND (coalesce(f.credited, 0) <> coalesce(t.returned, 0)
                OR coalesce(f.took, 0) <> coalesce(t.taken, 0)
                OR (t.status <> 'completed' AND f.id IS NOT NULL))",
    ),
    (
        "every game wallet holds its completed transfers out less what completed transfers in took",
        "WITH expected AS (
             SELECT user_id, provider, currency,
                    sum(CASE direction WHEN 'out' THEN amount ELSE -taken END) AS total
             FROM transfers WHERE status = 'completed' GROUP BY 1, 2, 3),
         wallets AS (SELECT owner, provider, currency, balance FROM accounts WHERE kind = 'game')
         SELECT coalesce(w.owner, e.user_id) || ' ' || coalesce(w.provider, e.provider) || ' '
                || coalesce(w.currency, e.currency) || ': game ' || coalesce(w.balance, 0)
                || ', transfers explain ' || coalesce(e.total, 0)
         FROM wallets w FULL JOIN expected e
           ON (w.owner, w.provider, w.currency) = (e.user_id, e.provider, e.currency)
         WHERE coalesce(w.balance, 0) <> coalesce(e.total, 0)",
    ),
    (
        "every campaign's totals equal its grants and stay within its budget",
        "SELECT c.id || ': granted ' || c.granted || ' in ' || c.grants || ' grant(s); grants sum to '
                || coalesce(g.total, 0) || ' in ' || coalesce(g.n, 0) || '; budget ' || c.budget
         FROM campaigns c
         LEFT JOIN (SELECT campaign_id, sum(amount) AS total, count(*) AS n FROM grants GROUP BY 1) g
                ON g.campaign_id = c.id
         WHERE c.granted <> coalesce(g.total, 0) OR c.grants <> coalesce(g.n, 0) OR c.granted > c.budget",
    ),
    (
        "no user has more grants of a campaign than its per-user limit",
        "SELECT g.campaign_id || ' ' || g.user_id || ': ' || count(*) || ' grants, limit ' || c.per_user
         FROM grants g JOIN campaigns c ON c.id = g.campaign_id
         GROUP BY g.campaign_id, g.user_id, c.per_user HAVING count(*) > c.per_user",
    ),
    (
        "every grant credited exactly its amount",
        // The campaign's side is in the transaction's one posting to its platform account (V6).
        "SELECT g.id || ': ' || count(p.id) FILTER (WHERE p.amount > 0) || ' credit(s), '
                || coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0) || ' credited for ' || g.amount
         FROM grants g LEFT JOIN postings p ON p.command = 'bonus-grant:' || g.id
         GROUP BY g.id, g.amount
         HAVING count(p.id) FILTER (WHERE p.amount > 0) <> 1
             OR coalesce(sum(p.amount) FILTER (WHERE p.amount > 0), 0) <> g.amount",
    ),
    (
        "no event has waited over 5 minutes in the outbox",
        "SELECT sum(cardinality(msg_ids)) || ' unpublished, oldest ' || min(created_at) FROM outbox
         WHERE created_at < now() - interval '5 minutes' HAVING count(*) > 0",
    ),
];

/// The audit of the one database, or with a shard map (`SHARDS_FILE`) of every shard's: each
/// check and note then names its shard, and each shard's database must be the one the map says,
/// holding the map's partitions.
pub async fn audit(config: &Config) -> anyhow::Result<Report> {
    let Some(map) = config.shard_map()? else {
        return audit_database(config, None).await;
    };
    let mut report = Report::default();
    for shard in map.shards() {
        let config = config.on_shard(shard);
        let mut one = audit_database(&config, Some(shard)).await?;
        one.checks.insert(0, map_check(&config, &map, shard).await?);
        let named = |s: String| format!("shard {}: {s}", shard.name);
        report.notes.extend(one.notes.into_iter().map(named));
        report.checks.extend(one.checks.into_iter().map(|c| Check {
            name: named(c.name),
            ..c
        }));
    }
    let mut pgs = Vec::new();
    for shard in map.shards() {
        pgs.push(crate::postgres(&config.on_shard(shard)).await?);
    }
    let check = quota_check(&pgs.iter().collect::<Vec<_>>()).await?;
    report.checks.push(Check {
        name: format!("every shard: {}", check.name),
        ..check
    });
    Ok(report)
}

/// Every campaign's quotas, one per shard, and the quota moves in transit sum to its budget
/// (docs/sharding.md, step 5). Each shard's grants stay within its quota by a constraint (V14),
/// so the campaign's grants stay within its budget. On one PostgreSQL the quota is the budget.
async fn quota_check(pgs: &[&tokio_postgres::Client]) -> anyhow::Result<Check> {
    let mut sums: std::collections::BTreeMap<String, (Decimal, Decimal, Decimal)> =
        Default::default();
    for pg in pgs {
        for row in pg
            .query(
                "SELECT c.id, c.budget, c.quota + coalesce(sum(m.amount), 0), c.granted
                 FROM campaigns c
                 LEFT JOIN quota_moves m ON m.campaign_id = c.id AND m.outgoing AND NOT m.credited
                 GROUP BY c.id",
                &[],
            )
            .await?
        {
            let sum = sums.entry(row.get(0)).or_default();
            sum.0 = row.get(1);
            sum.1 += row.get::<_, Decimal>(2);
            sum.2 += row.get::<_, Decimal>(3);
        }
    }
    let breaches = sums
        .into_iter()
        .filter(|(_, (budget, quotas, granted))| quotas != budget || granted > budget)
        .map(|(id, (budget, quotas, granted))| {
            format!("{id}: quotas and moves in transit sum to {quotas}, granted {granted}, budget {budget}")
        })
        .collect();
    Ok(Check {
        name: "every campaign's quotas and quota moves in transit sum to its budget".to_owned(),
        breaches,
    })
}

/// The shard's database is `shard`'s and holds the map's partitions as `map` places them.
async fn map_check(config: &Config, map: &ShardMap, shard: &Shard) -> anyhow::Result<Check> {
    let pg = crate::postgres(config).await?;
    let mut breaches = Vec::new();
    let is: Option<String> = pg
        .query_opt("SELECT name FROM shard_self", &[])
        .await?
        .map(|r| r.get(0));
    if is.as_deref() != Some(shard.name.as_str()) {
        breaches.push(format!(
            "the database is {}, not shard `{}`'s",
            is.map_or("no shard's".to_owned(), |n| format!("shard `{n}`'s")),
            shard.name
        ));
    }
    let stored: HashMap<i16, String> = pg
        .query("SELECT partition, shard FROM partition_map", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for p in (0..wallet_runtime::partition::PARTITIONS).filter_map(Partition::new) {
        let (want, key) = (&map.shard_of(p).name, p.as_smallint());
        if stored.get(&key) != Some(want) {
            breaches.push(format!(
                "partition {}: the database's map says {:?}, SHARDS_FILE `{want}`",
                p.get(),
                stored.get(&key)
            ));
        }
    }
    Ok(Check {
        name: "the database is this shard's, and its partition map is SHARDS_FILE's".to_owned(),
        breaches,
    })
}

async fn audit_database(config: &Config, shard: Option<&Shard>) -> anyhow::Result<Report> {
    let pg = crate::postgres(config).await?;
    let mut report = Report::default();
    // One snapshot for every check: they see the same ledger.
    pg.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let counts = pg
        .query_one(
            "SELECT (SELECT count(*) FROM accounts WHERE kind <> 'platform'), (SELECT count(*) FROM postings),
                    (SELECT count(*) FROM commands), (SELECT coalesce(sum(cardinality(msg_ids)), 0)::bigint FROM outbox),
                    (SELECT count(*) FROM transfers), (SELECT count(*) FROM transfers WHERE status = 'pending')",
            &[],
        )
        .await?;
    let (wallets, postings, commands, outbox, transfers, pending): (i64, i64, i64, i64, i64, i64) = (
        counts.get(0),
        counts.get(1),
        counts.get(2),
        counts.get(3),
        counts.get(4),
        counts.get(5),
    );
    report.notes.push(format!(
        "checked {wallets} wallets, {postings} postings, {commands} commands, {transfers} transfers ({pending} pending); {outbox} message(s) waiting in the outbox"
    ));
    // Collected: no closure is held across the awaits below (the audit runs in spawned tasks).
    let sagas: Vec<(String, String)> = saga::ALL
        .iter()
        .filter_map(|s| saga_checks(s))
        .flatten()
        .collect();
    let checks = CHECKS.iter().map(|(n, q)| (n.to_string(), q.to_string()));
    for (name, sql) in checks.chain(explained_checks()).chain(sagas) {
        let breaches = pg
            .query(&sql, &[])
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        report.checks.push(Check { name, breaches });
    }
    report
        .checks
        .push(campaign_check(config, &pg, &mut report.notes).await?);
    if shard.is_none() {
        report.checks.push(quota_check(&[&pg]).await?);
    }
    if outbox == 0 {
        report.checks.push(cache_check(config, &pg, shard).await?);
    } else {
        report.notes.push(format!(
            "skipped: the balance cache check ({outbox} event(s) still carry balances to the cache); run audit again once they are published"
        ));
    }
    pg.batch_execute("COMMIT").await?;
    Ok(report)
}

/// Every cached wallet matches PostgreSQL. Only meaningful with the outbox empty: an event
/// waiting there still carries its balances to the cache.
/// With a shard, only the cached wallets of its partitions.
async fn cache_check(
    config: &Config,
    pg: &tokio_postgres::Client,
    shard: Option<&Shard>,
) -> anyhow::Result<Check> {
    let name = "the balance cache agrees with PostgreSQL".to_owned();
    let client = wallet_runtime::cache::client(config)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let prefix = config.names.redis_key("bal:");
    let keys: Vec<String> = {
        let mut iter: redis::AsyncIter<String> =
            redis::AsyncCommands::scan_match(&mut conn, format!("{prefix}*")).await?;
        let mut keys = Vec::new();
        while let Some(k) = futures::StreamExt::next(&mut iter).await {
            keys.push(k?);
        }
        keys.into_iter()
            .filter(|k| shard.is_none_or(|s| s.holds(Partition::of(&k[prefix.len()..]))))
            .collect()
    };
    let owners: Vec<&str> = keys.iter().map(|k| &k[prefix.len()..]).collect();
    let partitions: Vec<i16> = owners
        .iter()
        .map(|o| Partition::of(o).as_smallint())
        .collect();
    let rows = pg
        .query(
            "SELECT a.owner, a.kind, a.provider, a.currency, a.balance
             FROM accounts a JOIN unnest($1::smallint[], $2::text[]) AS k (partition, owner)
               ON (a.partition, a.owner) = (k.partition, k.owner)
             WHERE a.kind <> 'platform'",
            &[&partitions, &owners],
        )
        .await?;
    let truth: HashMap<(String, String), Decimal> = rows
        .iter()
        .map(|r| {
            let (owner, kind, provider, currency): (String, String, String, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            (
                (
                    owner,
                    wallet_runtime::wallet::field(&kind, &provider, &currency),
                ),
                r.get(4),
            )
        })
        .collect();
    let mut breaches = Vec::new();
    for key in &keys {
        let owner = &key[prefix.len()..];
        let fields: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        for (field, value) in fields.into_iter().filter(|(f, _)| !f.starts_with('~')) {
            let cached = value
                .split_once('|')
                .and_then(|(_, b)| b.parse::<Decimal>().ok());
            let stored = truth.get(&(owner.to_owned(), field.clone()));
            if cached.is_none() || cached.as_ref() != stored {
                breaches.push(format!(
                    "{owner} {field}: cache {value}, postgres {stored:?}"
                ));
            }
        }
    }
    Ok(Check { name, breaches })
}

/// Redis's counters of every loaded campaign equal PostgreSQL's committed grants plus the live
/// reservations. Meaningful when no grant is in flight. On a shard, its own: each shard counts
/// its grants against its quota, in Redis and in PostgreSQL.
async fn campaign_check(
    config: &Config,
    pg: &tokio_postgres::Client,
    notes: &mut Vec<String>,
) -> anyhow::Result<Check> {
    use wallet_campaigns::campaign::minor;
    use wallet_campaigns::reservations::Record;
    let name = "Redis campaign counters equal PostgreSQL's committed grants plus live reservations"
        .to_owned();
    let reservations = crate::campaign::reservations(config).await?;
    let mut breaches = Vec::new();
    for row in pg
        .query(
            "SELECT id, currency, granted FROM campaigns ORDER BY id",
            &[],
        )
        .await?
    {
        let (id, currency, granted): (String, String, Decimal) =
            (row.get(0), row.get(1), row.get(2));
        let Some(currency) = config.currencies.get(&currency) else {
            continue;
        };
        let Some((epoch, reserved, users)) = reservations.counters(&id).await? else {
            notes.push(format!(
                "campaign {id}: not loaded in Redis (its next grant loads it)"
            ));
            continue;
        };
        let mut want_users: HashMap<String, i64> = pg
            .query(
                "SELECT user_id, count(*) FROM grants WHERE campaign_id = $1 GROUP BY user_id",
                &[&id],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let mut want = minor(granted, currency);
        let pending = reservations.pending(&id, isize::MAX).await?;
        // A reservation whose grant PostgreSQL holds is counted there already.
        let ids: Vec<&str> = pending.iter().map(|(g, _, _)| g.as_str()).collect();
        let committed: std::collections::HashSet<String> = pg
            .query("SELECT id FROM grants WHERE id = ANY($1)", &[&ids])
            .await?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        for (grant, _, record) in pending {
            if let Some(Record::Reserved(r)) = record
                && r.epoch == epoch
                && !committed.contains(&grant)
            {
                want += r.amount_minor;
                *want_users.entry(r.user).or_default() += 1;
            }
        }
        if reserved != want {
            breaches.push(format!(
                "{id}: Redis reserved {reserved} minor units, expected {want}"
            ));
        }
        let have_users: HashMap<String, i64> = users.into_iter().filter(|(_, n)| *n != 0).collect();
        want_users.retain(|_, n| *n != 0);
        for (user, n) in &want_users {
            if have_users.get(user) != Some(n) {
                breaches.push(format!(
                    "{id} {user}: Redis counts {:?} grant(s), expected {n}",
                    have_users.get(user)
                ));
            }
        }
        for (user, n) in &have_users {
            if !want_users.contains_key(user) {
                breaches.push(format!(
                    "{id} {user}: Redis counts {n} grant(s), expected none"
                ));
            }
        }
    }
    Ok(Check { name, breaches })
}
