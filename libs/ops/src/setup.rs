//! `walletctl setup`: the database, its schema, a PostgreSQL role per function, the streams and
//! consumers. Idempotent.
//!
//! With a shard map (`SHARDS_FILE`), every shard's database is set up the same way and told which
//! shard it is and where every partition lives; the streams stop taking the bare command
//! subjects and each shard gets its own consumers (`wallet_runtime::streams`).

use anyhow::{Context as _, bail};
use wallet_runtime::Config;
use wallet_runtime::db;
use wallet_runtime::shards::{ShardMap, ranges};
use wallet_runtime::streams::Topology;

/// The functions' PostgreSQL roles and their grants.
pub const ROLES: &str = include_str!("roles.sql");

/// The role `function` connects as (`transfer-out` → `wallet_transfer_out`).
pub fn role(function: &str) -> String {
    format!("wallet_{}", function.replace('-', "_"))
}

/// Returns one line per thing it looked at, saying what it changed.
pub async fn setup(config: &Config, topology: &Topology) -> anyhow::Result<Vec<String>> {
    with_map(config, topology, config.shard_map()?.as_ref()).await
}

/// [`setup`] with the shard map `shards` instead of `SHARDS_FILE`'s.
pub(crate) async fn with_map(
    config: &Config,
    topology: &Topology,
    shards: Option<&ShardMap>,
) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    let nats = crate::nats(config).await?;
    match shards {
        None => database(config, &mut report).await?,
        Some(map) => {
            for shard in map.shards() {
                let config = config.on_shard(shard);
                let mut lines = Vec::new();
                database(&config, &mut lines).await?;
                lines.push(write_map(&config, map, &shard.name).await?);
                report.extend(
                    lines
                        .into_iter()
                        .map(|l| format!("shard {}: {l}", shard.name)),
                );
            }
        }
    }
    let js = async_nats::jetstream::new(nats);
    report.extend(topology.apply(&js, &config.names, shards).await?);
    Ok(report)
}

/// The database of `config`: created, migrated, with the functions' roles.
pub(crate) async fn database(config: &Config, report: &mut Vec<String>) -> anyhow::Result<()> {
    let created = db::create_database_if_missing(config).await?;
    report.push(format!(
        "database: {}",
        if created { "created" } else { "exists" }
    ));
    let applied = db::migrate(config).await?;
    if applied.is_empty() {
        report.push("migrations: up to date".to_owned());
    }
    report.extend(
        applied
            .into_iter()
            .map(|m| format!("migration {m}: applied")),
    );
    crate::postgres(config)
        .await?
        .batch_execute(ROLES)
        .await
        .context("creating the functions' roles")?;
    report.push("roles: one per function, with the grants of roles.sql".to_owned());
    Ok(())
}

/// Tells `shard`'s database (`config`'s) its name and the map, in one transaction. Refuses a
/// database that is another shard's, and a map that moves a partition it already placed:
/// the wallets of a moved partition would be left behind (moving one is a split).
async fn write_map(config: &Config, map: &ShardMap, shard: &str) -> anyhow::Result<String> {
    let mut pg = crate::postgres(config).await?;
    let tx = pg.transaction().await?;
    tx.batch_execute("LOCK shard_self, partition_map IN EXCLUSIVE MODE")
        .await?;
    let is: Option<String> = tx
        .query_opt("SELECT name FROM shard_self", &[])
        .await?
        .map(|r| r.get(0));
    if let Some(is) = is.as_deref().filter(|is| *is != shard) {
        bail!(
            "{} is shard `{is}`'s database; SHARDS_FILE gives it to shard `{shard}`",
            wallet_runtime::config::redact(&config.database_url)
        );
    }
    let (partitions, owners): (Vec<i16>, Vec<&str>) = map
        .shards()
        .iter()
        .flat_map(|s| {
            s.partitions()
                .iter()
                .map(|&p| (i16::try_from(p).expect("below 256"), s.name.as_str()))
        })
        .unzip();
    let moved: Vec<(i16, String, String)> = tx
        .query(
            "SELECT m.partition, m.shard, f.shard FROM partition_map m
             JOIN unnest($1::smallint[], $2::text[]) AS f (partition, shard) USING (partition)
             WHERE m.shard <> f.shard ORDER BY 1",
            &[&partitions, &owners],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    if let Some((p, from, to)) = moved.first() {
        bail!(
            "SHARDS_FILE moves {} partition(s), the first {p} from shard `{from}` to `{to}`: a partition's wallets move with a split (docs/sharding.md), never by editing the map",
            moved.len()
        );
    }
    tx.execute(
        "INSERT INTO shard_self (name) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&shard],
    )
    .await?;
    tx.execute(
        "INSERT INTO partition_map (partition, shard)
         SELECT * FROM unnest($1::smallint[], $2::text[]) ON CONFLICT DO NOTHING",
        &[&partitions, &owners],
    )
    .await?;
    tx.commit().await?;
    let own = map.get(shard).expect("a shard of the map").partitions();
    Ok(format!(
        "{}; partitions {} of {}",
        if is.is_some() {
            "map unchanged"
        } else {
            "map written"
        },
        ranges(own),
        wallet_runtime::partition::PARTITIONS
    ))
}
