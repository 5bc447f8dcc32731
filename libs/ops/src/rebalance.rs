//! `walletctl campaign rebalance`: moves campaign quota to the shards that ask for it
//! (docs/sharding.md, step 5; the columns are V14's).
//!
//! Each shard grants a campaign only within its quota, and the quotas sum to the budget, so the
//! budget holds although no transaction sees two shards. This is what keeps the whole budget
//! reachable: a grant past its shard's quota leaves its amount in `wanted` and waits, and a round
//! moves quota to it from the shards with the most left.
//!
//! **A move is a saga of three transactions, each idempotent.** The source takes the quota and
//! records the move (`quota_moves`, `outgoing`), the destination adds it once by the move's id,
//! and the source marks it `credited`. A move not yet credited is in transit; every round first
//! finishes those, so a rebalancer stopped at any line loses no quota and adds none, and the
//! quotas plus what is in transit always sum to the budget (`walletctl audit` checks it).
//!
//! **`spare_elsewhere`.** Each round also tells every shard what the others have left, the bound
//! its grants use to refuse `campaign_exhausted` with certainty: what is left anywhere only
//! shrinks, so a sum of values read one after another is never too small. A move keeps the bound
//! true on its own: the source adds what it gives to its bound in the transaction that takes it.
//! A round writes a shard's bound only while its quota is what the round read and moved, so a
//! move it did not see cannot make the bound too low.
//!
//! One rebalancer runs at a time: it holds an advisory lock in the first shard's database. One
//! that lost its lock's connection may run a round beside its successor: each move still takes
//! only what its source has and is added once, and neither writes a bound past the other's move.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rust_decimal::{Decimal, RoundingStrategy};
use wallet_runtime::Config;
use wallet_runtime::money::Currencies;

/// Taken on the first shard's database for as long as a rebalancer runs.
const LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('walletctl campaign rebalance'))";

const IN_TRANSIT: &str = "
    SELECT id, campaign_id, amount, to_shard FROM quota_moves WHERE outgoing AND NOT credited";

/// Every live campaign's quota on one shard. An ended campaign grants nothing more.
const STATE: &str = "
    SELECT id, currency, quota, granted, wanted FROM campaigns
    WHERE ends_at IS NULL OR ends_at > now() ORDER BY id";

/// The source's side: only while the quota left covers it (grants may have taken it since).
const TAKE: &str = "
    WITH taken AS (
        UPDATE campaigns SET quota = quota - $3, spare_elsewhere = spare_elsewhere + $3
        WHERE id = $2 AND quota - granted >= $3
        RETURNING id
    )
    INSERT INTO quota_moves (id, campaign_id, amount, from_shard, to_shard, outgoing)
    SELECT $1, id, $3, $4, $5, true FROM taken";

/// The destination's side, once per move id (one statement: one transaction); its demand is
/// answered, and what it received is no longer elsewhere.
const ADD: &str = "
    WITH moved AS (
        INSERT INTO quota_moves (id, campaign_id, amount, from_shard, to_shard, outgoing)
        VALUES ($1, $2, $3, $4, $5, false) ON CONFLICT (id) DO NOTHING
        RETURNING campaign_id, amount
    )
    UPDATE campaigns c SET quota = c.quota + m.amount, wanted = 0,
        spare_elsewhere = greatest(c.spare_elsewhere - m.amount, 0)
    FROM moved m WHERE c.id = m.campaign_id";

const CREDITED: &str = "UPDATE quota_moves SET credited = true WHERE id = $1";

/// Only while the quota is what this round read and moved: a quota another rebalancer moved
/// meanwhile (one that lost its lock's connection) or a split changed would make the bound too
/// low. The next round writes it.
const BOUND: &str = "
    UPDATE campaigns SET spare_elsewhere = $2
    WHERE id = $1 AND quota = $3 AND spare_elsewhere <> $2";

struct Shard {
    name: String,
    pg: tokio_postgres::Client,
}

/// One campaign on one shard, as a round read it.
#[derive(Debug, Clone)]
struct Quota {
    quota: Decimal,
    spare: Decimal,
    wanted: Decimal,
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    finished: usize,
    moves: Vec<String>,
}

/// The rebalancer over every shard of `config`'s map.
struct Rebalancer {
    shards: Vec<Shard>,
    currencies: Currencies,
}

impl Rebalancer {
    /// Connects to every shard and takes the rebalancer's lock.
    async fn connect(config: &Config) -> anyhow::Result<Self> {
        let mut shards = Vec::new();
        for database in crate::databases(config)? {
            shards.push(Shard {
                name: database.shard.clone().unwrap_or_default(),
                pg: crate::postgres(&database).await?,
            });
        }
        let locked: bool = shards[0].pg.query_one(LOCK, &[]).await?.get(0);
        anyhow::ensure!(
            locked,
            "another `walletctl campaign rebalance` is running (it holds the lock in shard {}'s database)",
            shards[0].name
        );
        Ok(Self {
            shards,
            currencies: config.currencies.clone(),
        })
    }

    fn shard(&self, name: &str) -> anyhow::Result<&Shard> {
        self.shards
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("a quota move names shard `{name}`, which the map lacks"))
    }

    /// Finishes the moves in transit, then moves quota to where it is wanted and tells each
    /// shard what the others have left.
    async fn round(&mut self) -> anyhow::Result<Round> {
        let mut round = Round::default();
        for source in &self.shards {
            for row in source.pg.query(IN_TRANSIT, &[]).await? {
                let (id, campaign, amount, to): (String, String, Decimal, String) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                self.finish(source, &id, &campaign, amount, &to).await?;
                round.finished += 1;
            }
        }
        if self.shards.len() < 2 {
            return Ok(round);
        }
        // campaign → (its minor unit, each shard's quota in map order)
        let mut campaigns: BTreeMap<String, (u32, Vec<Option<Quota>>)> = BTreeMap::new();
        let n = self.shards.len();
        for (i, shard) in self.shards.iter().enumerate() {
            for row in shard.pg.query(STATE, &[]).await? {
                let Some(unit) = self.currencies.get(row.get(1)).map(|c| c.minor_unit) else {
                    continue;
                };
                let (quota, granted, wanted): (Decimal, Decimal, Decimal) =
                    (row.get(2), row.get(3), row.get(4));
                let entry = campaigns
                    .entry(row.get(0))
                    .or_insert_with(|| (unit, vec![None; n]));
                entry.1[i] = Some(Quota {
                    quota,
                    spare: quota - granted,
                    wanted,
                });
            }
        }
        for (campaign, (unit, mut quotas)) in campaigns {
            // A donor granted meanwhile: this round's figures are stale for the campaign.
            let mut stale = false;
            'wanting: for wanting in 0..n {
                let Some(mut need) = quotas[wanting].as_ref().map(|q| q.wanted) else {
                    continue;
                };
                while need > Decimal::ZERO {
                    // The shard with the most left gives half of it, or all that is needed.
                    let Some((donor, spare)) = quotas
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != wanting)
                        .filter_map(|(i, q)| Some((i, q.as_ref()?.spare)))
                        .filter(|(_, spare)| *spare > Decimal::ZERO)
                        .max_by_key(|(_, spare)| *spare)
                    else {
                        break;
                    };
                    let half = (spare / Decimal::TWO)
                        .round_dp_with_strategy(unit, RoundingStrategy::AwayFromZero);
                    let amount = spare.min(need.max(half));
                    let (from, to) = (&self.shards[donor].name, &self.shards[wanting].name);
                    let id = format!(
                        "{campaign}:{from}:{to}:{}",
                        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
                    );
                    let taken = self.shards[donor]
                        .pg
                        .execute(TAKE, &[&id, &campaign, &amount, from, to])
                        .await?;
                    if taken == 0 {
                        stale = true;
                        break 'wanting;
                    }
                    self.finish(&self.shards[donor], &id, &campaign, amount, to)
                        .await?;
                    round.moves.push(format!(
                        "campaign {campaign}: {amount} from shard {from} to {to}"
                    ));
                    if let Some(q) = quotas[donor].as_mut() {
                        q.quota -= amount;
                        q.spare -= amount;
                    }
                    if let Some(q) = quotas[wanting].as_mut() {
                        q.quota += amount;
                        q.spare += amount;
                        q.wanted = Decimal::ZERO;
                    }
                    need -= amount;
                }
            }
            if stale {
                continue; // Read again next round.
            }
            let total: Decimal = quotas.iter().flatten().map(|q| q.spare).sum();
            for (shard, quota) in self.shards.iter().zip(&quotas) {
                if let Some(q) = quota {
                    shard
                        .pg
                        .execute(BOUND, &[&campaign, &(total - q.spare), &q.quota])
                        .await?;
                }
            }
        }
        Ok(round)
    }

    /// The rest of a move `source` took: the destination adds it once, then the source marks
    /// it credited.
    async fn finish(
        &self,
        source: &Shard,
        id: &str,
        campaign: &str,
        amount: Decimal,
        to: &str,
    ) -> anyhow::Result<()> {
        self.shard(to)?
            .pg
            .execute(ADD, &[&id, &campaign, &amount, &source.name, &to])
            .await?;
        source.pg.execute(CREDITED, &[&id]).await?;
        Ok(())
    }
}

/// One round, or (with `every`) a round every `every` until `stop`; `say` hears each move. A
/// round that fails (a shard down, the lock held by another rebalancer) is said once and tried
/// again, on new connections, every `every`: a rebalancer outlives its servers' outages, and a
/// second one waits for the first to stop.
pub async fn run(
    config: &Config,
    every: Option<Duration>,
    stop: wallet_runtime::CancellationToken,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let Some(every) = every else {
        Rebalancer::connect(config).await?.round().await?.tell(say);
        return Ok(());
    };
    let mut connected: Option<Rebalancer> = None;
    let mut failing = false;
    loop {
        match attempt(config, &mut connected).await {
            Ok(round) => {
                if std::mem::take(&mut failing) {
                    say("rebalancing again".to_owned());
                }
                round.tell(say);
            }
            Err(e) => {
                connected = None;
                if !std::mem::replace(&mut failing, true) {
                    say(format!(
                        "a round failed, trying again every {every:?}: {e:#}"
                    ));
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// A round on `connected`, connecting first if it is not.
async fn attempt(config: &Config, connected: &mut Option<Rebalancer>) -> anyhow::Result<Round> {
    let rebalancer = match connected {
        Some(r) => r,
        None => connected.insert(Rebalancer::connect(config).await?),
    };
    rebalancer.round().await
}

impl Round {
    fn tell(self, say: &mut dyn FnMut(String)) {
        if self.finished > 0 {
            say(format!(
                "finished {} move(s) left in transit",
                self.finished
            ));
        }
        self.moves.into_iter().for_each(say);
    }
}
