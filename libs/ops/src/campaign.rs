//! `walletctl campaign create|show|list`: bonus campaigns (CONTRACT §6).
//!
//! A campaign is created in PostgreSQL, then loaded into Redis by the same loader `bonus-grant`
//! uses when Redis lost it, so there is one definition of the Redis state. With a shard map it
//! is created in every shard's database, and its totals are the sums over every shard.

use std::fmt;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use wallet_campaigns::campaign::{self, Amount, Campaign, Created, from_minor};
use wallet_campaigns::loader::{self, Loaded};
use wallet_campaigns::reservations::{Record, Reservations};
use wallet_runtime::Config;
use wallet_runtime::money::{Currency, parse_amount};

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub currency: String,
    /// The most the campaign grants in total, in its currency.
    #[arg(long)]
    pub budget: String,
    /// Every grant's amount (or give --amount-min and --amount-max).
    #[arg(long, conflicts_with_all = ["amount_min", "amount_max"])]
    pub amount: Option<String>,
    /// A random amount per grant, fixed by the grant id, from this...
    #[arg(long, requires = "amount_max")]
    pub amount_min: Option<String>,
    /// ...to this, in the currency's minor units.
    #[arg(long, requires = "amount_min")]
    pub amount_max: Option<String>,
    /// Grants per user.
    #[arg(long)]
    pub per_user: i32,
    /// RFC 3339, inclusive.
    #[arg(long)]
    pub starts: Option<String>,
    /// RFC 3339, exclusive.
    #[arg(long)]
    pub ends: Option<String>,
}

fn money(flag: &str, text: &str, currency: Currency) -> anyhow::Result<Decimal> {
    parse_amount(Some(&serde_json::Value::String(text.to_owned())), currency).map_err(|_| {
        anyhow::anyhow!(
            "--{flag} `{text}` is not a positive amount with at most {} decimals in {}",
            currency.minor_unit,
            currency.code()
        )
    })
}

fn time(flag: &str, text: &Option<String>) -> anyhow::Result<Option<DateTime<Utc>>> {
    text.as_deref()
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| anyhow::anyhow!("--{flag} `{t}` is not an RFC 3339 time: {e}"))
        })
        .transpose()
}

impl CreateArgs {
    pub fn campaign(&self, config: &Config) -> anyhow::Result<Campaign> {
        let currency = config.currencies.get(&self.currency).ok_or_else(|| {
            anyhow::anyhow!(
                "--currency `{}` is not a configured currency",
                self.currency
            )
        })?;
        let amount = match (&self.amount, &self.amount_min, &self.amount_max) {
            (Some(a), None, None) => Amount::Fixed(money("amount", a, currency)?),
            (None, Some(lo), Some(hi)) => Amount::Between(
                money("amount-min", lo, currency)?,
                money("amount-max", hi, currency)?,
            ),
            _ => bail!("give --amount, or --amount-min and --amount-max"),
        };
        Ok(Campaign {
            id: self.id.clone(),
            currency,
            budget: money("budget", &self.budget, currency)?,
            amount,
            per_user: self.per_user,
            starts: time("starts", &self.starts)?,
            ends: time("ends", &self.ends)?,
        })
    }
}

/// The campaign state in Redis of `config`'s shard (or of the one PostgreSQL).
pub(crate) async fn reservations(config: &Config) -> anyhow::Result<Reservations> {
    let client = wallet_runtime::cache::client(config)?;
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .with_context(|| {
            format!(
                "cannot connect to Redis at {}",
                wallet_runtime::config::redact(&config.redis_url)
            )
        })?;
    Ok(Reservations::new(
        conn,
        &config.names,
        config.shard.as_deref(),
    ))
}

/// Creates the campaign in every database that holds campaigns (or finds it unchanged there),
/// each shard with its quota of the budget (docs/sharding.md, step 5), and loads it into each
/// shard's Redis state.
pub async fn create(config: &Config, args: &CreateArgs) -> anyhow::Result<String> {
    let c = args.campaign(config)?;
    let databases = crate::databases(config)?;
    let quotas = campaign::quotas(c.budget, c.currency, databases.len());
    let mut pgs = Vec::new();
    let mut created = false;
    for (database, quota) in databases.iter().zip(quotas) {
        let pg = crate::postgres(database).await?;
        created |= campaign::create(&pg, &config.currencies, &c, quota).await? == Created::Created;
        pgs.push(pg);
    }
    let verb = if created { "created" } else { "unchanged" };
    for (database, pg) in databases.iter().zip(&mut pgs) {
        let reservations = reservations(database).await?;
        // Loaded on creation; an unchanged campaign is loaded only if Redis lost it.
        if created || reservations.epoch(&c.id).await?.is_none() {
            let loaded = loader::load(pg, &config.currencies, &reservations, &c.id).await?;
            anyhow::ensure!(
                loaded == Loaded::Loaded,
                "campaign `{}` vanished while loading",
                c.id
            );
        }
    }
    Ok(match pgs.len() {
        1 => format!("campaign {}: {verb}", c.id),
        n => format!(
            "campaign {}: {verb} on {n} shards, each with its quota of the budget",
            c.id
        ),
    })
}

/// One campaign: parameters, what PostgreSQL committed, what Redis holds.
#[derive(Debug, Serialize)]
pub struct CampaignView {
    pub id: String,
    pub parameters: Vec<(&'static str, String)>,
    pub granted: String,
    pub grants: i64,
    pub users: i64,
    pub left: String,
    /// `None`: not loaded in Redis (the next grant loads it).
    pub redis: Option<RedisView>,
}

#[derive(Debug, Serialize)]
pub struct RedisView {
    pub epoch: i64,
    pub postgres_epoch: i64,
    pub reserved: String,
    pub reservations_in_flight: usize,
}

impl fmt::Display for CampaignView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "campaign  {}", self.id)?;
        for (k, v) in &self.parameters {
            writeln!(f, "{k:<9} {v}")?;
        }
        writeln!(
            f,
            "granted   {} in {} grant(s) to {} user(s); {} left",
            self.granted, self.grants, self.users, self.left
        )?;
        match &self.redis {
            None => writeln!(f, "redis     not loaded (the next grant loads it)"),
            Some(r) => writeln!(
                f,
                "redis     epoch {} (PostgreSQL {}), reserved {} with {} reservation(s) in flight",
                r.epoch, r.postgres_epoch, r.reserved, r.reservations_in_flight
            ),
        }
    }
}

/// The campaign, with its totals summed over every database that holds campaigns.
pub async fn show(config: &Config, id: &str) -> anyhow::Result<CampaignView> {
    let databases = crate::databases(config)?;
    let mut pgs = Vec::new();
    for database in &databases {
        pgs.push(crate::postgres(database).await?);
    }
    let pg = &pgs[0];
    let Some(row) = pg
        .query_opt(&format!("{} WHERE id = $1", campaign::SELECT), &[&id])
        .await?
    else {
        bail!("no campaign `{id}`");
    };
    let c = campaign::from_row(&row, &config.currencies)
        .ok_or_else(|| anyhow::anyhow!("campaign `{id}` has a currency no longer configured"))?;
    let epoch: i64 = pg
        .query_one("SELECT redis_epoch FROM campaigns WHERE id = $1", &[&id])
        .await?
        .get(0);
    let (mut granted, mut grants, mut users) = (Decimal::ZERO, 0_i64, 0_i64);
    for pg in &pgs {
        // A user's grants are all in the user's shard: the users of two shards are distinct.
        if let Some(totals) = pg
            .query_opt(
                "SELECT granted, grants, (SELECT count(DISTINCT user_id) FROM grants WHERE campaign_id = $1)
                 FROM campaigns WHERE id = $1",
                &[&id],
            )
            .await?
        {
            granted += totals.get::<_, Decimal>(0);
            grants += totals.get::<_, i64>(1);
            users += totals.get::<_, i64>(2);
        }
    }
    let cur = c.currency;
    // The first shard's Redis state: each shard keeps its own.
    let reservations = reservations(&databases[0]).await?;
    let redis = match reservations.counters(id).await? {
        None => None,
        Some((redis_epoch, reserved, _)) => {
            let live = reservations.pending(id, 100_000).await?;
            let live = live
                .iter()
                .filter(|(_, _, r)| matches!(r, Some(Record::Reserved(_))))
                .count();
            Some(RedisView {
                epoch: redis_epoch,
                postgres_epoch: epoch,
                reserved: cur.format(from_minor(reserved, cur)),
                reservations_in_flight: live,
            })
        }
    };
    Ok(CampaignView {
        id: id.to_owned(),
        parameters: c.lines(),
        granted: cur.format(granted),
        grants,
        users,
        left: cur.format(c.budget - granted),
        redis,
    })
}

/// A line of `walletctl campaign list`.
#[derive(Debug, Serialize)]
pub struct CampaignRow {
    pub id: String,
    pub currency: String,
    pub budget: String,
    pub granted: String,
    pub grants: i64,
    pub per_user: i64,
    pub amount: String,
}

/// Every campaign; `Display` is the table.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct CampaignList(pub Vec<CampaignRow>);

impl fmt::Display for CampaignList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:<4} {:>14} {:>14} {:>8} {:>8}  AMOUNT",
            "CAMPAIGN", "CUR", "BUDGET", "GRANTED", "GRANTS", "PER_USER"
        )?;
        for c in &self.0 {
            writeln!(
                f,
                "{:<24} {:<4} {:>14} {:>14} {:>8} {:>8}  {}",
                c.id, c.currency, c.budget, c.granted, c.grants, c.per_user, c.amount
            )?;
        }
        Ok(())
    }
}

/// Every campaign, with its totals summed over every database that holds campaigns.
pub async fn list(config: &Config) -> anyhow::Result<CampaignList> {
    let databases = crate::databases(config)?;
    let mut totals: std::collections::HashMap<String, (Decimal, i64)> = Default::default();
    for db in &databases[1..] {
        for row in crate::postgres(db)
            .await?
            .query("SELECT id, granted, grants FROM campaigns", &[])
            .await?
        {
            let t = totals.entry(row.get(0)).or_default();
            t.0 += row.get::<_, Decimal>(1);
            t.1 += row.get::<_, i64>(2);
        }
    }
    let pg = crate::postgres(&databases[0]).await?;
    let rows = pg.query(campaign::LIST, &[]).await?;
    let mut out = Vec::new();
    for row in rows {
        let Some(c) = campaign::from_row(&row, &config.currencies) else {
            continue;
        };
        let (elsewhere, elsewhere_n) = totals.get(&c.id).copied().unwrap_or_default();
        let (granted, grants): (Decimal, i64) = (
            row.get::<_, Decimal>(9) + elsewhere,
            row.get::<_, i64>(10) + elsewhere_n,
        );
        let amount = c
            .lines()
            .into_iter()
            .find(|(k, _)| *k == "amount")
            .map(|(_, v)| v)
            .unwrap_or_default();
        out.push(CampaignRow {
            id: c.id.clone(),
            currency: c.currency.code().to_owned(),
            budget: c.currency.format(c.budget),
            granted: c.currency.format(granted),
            grants,
            per_user: i64::from(c.per_user),
            amount,
        });
    }
    Ok(CampaignList(out))
}
