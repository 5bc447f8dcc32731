//! `walletctl shards split`: moves some partitions of one shard to a new shard's database, on a
//! live system, losing nothing and deciding nothing twice (docs/sharding.md, "Splitting a
//! shard").
//!
//! The moved partitions stop for the time of the copy, and only they. Their commands are
//! refused at their publishers meanwhile (no stream takes their subjects: a client retries),
//! and every other partition flows on. The steps, each safe to run again after a crash:
//!
//! 1. the new shard's database is created and migrated;
//! 2. the old shard's streams stop taking the moved partitions' subjects;
//! 3. what they already hold of them is decided by the old shard's functions (the split waits
//!    until those streams hold none of their messages: a work queue drops a message once it is
//!    acknowledged, after its commit);
//! 4. every shard's database is told the partitions' new shard, under a lock that waits for the
//!    old shard's sagas' sweepers, which from then on skip rows of partitions the map gives to
//!    another shard; the old shard's outbox is waited for until it holds nothing written
//!    before;
//! 5. the partitions' rows are copied to the new database (with the rows of no partition,
//!    which every shard keeps), its identity sequences set above the copied ids, and its
//!    campaigns' totals counted from the grants it now holds;
//! 6. the new shard's streams and consumers are created: the moved partitions' commands flow
//!    again, to the new shard's functions;
//! 7. the partitions' rows are deleted from the old database, and its campaigns' totals
//!    counted again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::stream::ConsumerErrorKind;
use futures::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use wallet_runtime::Config;
use wallet_runtime::shards::{Shard, ShardMap, ranges};
use wallet_runtime::streams::{StreamDef, Topology};

/// The tables whose rows carry a partition, in the order they are copied (a grant refers to
/// its campaign, which every shard holds whole). `true`: rows of no partition too, which every
/// shard keeps (docs/sharding.md, step 4).
const PARTITIONED: [(&str, bool); 8] = [
    ("accounts", false),
    ("postings", false),
    ("commands", true),
    ("transfers", false),
    ("withdrawals", false),
    ("withdrawal_days", false),
    ("grants", false),
    ("grant_releases", true),
];

/// Tables every shard holds whole.
const WHOLE: [&str; 1] = ["campaigns"];

/// A campaign's grants, counted on one shard.
macro_rules! totals {
    () => {
        "(SELECT c.id, coalesce(sum(g.amount), 0) AS granted, count(g.id) AS grants
          FROM campaigns c LEFT JOIN grants g ON g.campaign_id = c.id GROUP BY c.id) t"
    };
}

/// Each shard's campaign rows count the grants it holds, and its quota of the budget covers
/// them (docs/sharding.md, step 5). The new shard's copied rows are the old shard's: its quota
/// becomes exactly the grants it received, and what the old shard had left is elsewhere.
/// Done once: a row already counted is left alone when the split runs again.
const NEW_SHARD_CAMPAIGNS: &str = concat!(
    "UPDATE campaigns c SET granted = t.granted, grants = t.grants, quota = t.granted, wanted = 0,
         spare_elsewhere = c.spare_elsewhere + c.quota - c.granted
     FROM ",
    totals!(),
    " WHERE c.id = t.id AND (c.granted, c.grants, c.quota) IS DISTINCT FROM (t.granted, t.grants, t.granted)"
);

/// The old shard gives up the quota of the grants that left with their partitions, so the
/// quotas still sum to the budget. Under the campaigns' locks (taken first, in the grant
/// batches' order), so no batch commits a grant between the count and the update.
const OLD_SHARD_LOCK: &str = "SELECT id FROM campaigns ORDER BY id FOR UPDATE";
const OLD_SHARD_CAMPAIGNS: &str = concat!(
    "UPDATE campaigns c SET granted = t.granted, grants = t.grants,
         quota = c.quota - (c.granted - t.granted)
     FROM ",
    totals!(),
    " WHERE c.id = t.id AND (c.granted, c.grants) IS DISTINCT FROM (t.granted, t.grants)"
);

/// Rows deleted per statement when the old shard lets its moved partitions go.
const PRUNE_BATCH: i64 = 10_000;

/// What a split moves: `partitions` from shard `from` to the new shard `to`.
struct Move<'a> {
    from: &'a Shard,
    to: &'a Shard,
    partitions: Vec<i16>,
}

/// Splits the shard map `current` into `target`, which must be `current` with one new shard
/// holding partitions taken from one existing shard. Tells `say` each step as it is done (a
/// split may take minutes).
pub async fn split(
    config: &Config,
    topology: &Topology,
    current: &ShardMap,
    target: &ShardMap,
    drain_timeout: Duration,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let m = plan(current, target)?;
    let moved = ranges(
        &m.partitions
            .iter()
            .map(|&p| u16::try_from(p).expect("a partition"))
            .collect::<Vec<_>>(),
    );
    let (old, new) = (config.on_shard(m.from), config.on_shard(m.to));

    let mut lines = Vec::new();
    crate::setup::database(&new, &mut lines).await?;
    // Before anything stops: a database that is already another shard's is refused here, not
    // by the setup at the end, after the copy.
    let is: Option<String> = crate::postgres(&new)
        .await?
        .query_opt("SELECT name FROM shard_self", &[])
        .await?
        .map(|r| r.get(0));
    if let Some(is) = is.filter(|is| *is != m.to.name) {
        bail!(
            "{} is shard `{is}`'s database; the new map gives it to the new shard `{}`",
            wallet_runtime::config::redact(&new.database_url),
            m.to.name
        );
    }
    say(format!("shard {}: {}", m.to.name, lines.join("; ")));

    let nats = crate::nats(config).await?;
    let js = async_nats::jetstream::new(nats);
    for (def, shard) in streams_of(topology, target, m.from) {
        let want = def.config(&config.names, true, Some(shard));
        js.update_stream(&want)
            .await
            .with_context(|| format!("updating stream {}", want.name))?;
    }
    say(format!(
        "shard {}: its streams no longer take partitions {moved}",
        m.from.name
    ));
    for line in drop_consumers(&js, config, topology, current, target).await? {
        say(line);
    }

    drain(&js, config, topology, target, &m, drain_timeout).await?;
    say(format!(
        "shard {}: its streams hold no command of partitions {moved}",
        m.from.name
    ));

    let fenced_at = fence(config, current, &m).await?;
    outbox_published(&old, fenced_at, drain_timeout).await?;
    say(format!(
        "every shard's map gives partitions {moved} to shard {}; shard {}'s outbox published what it held",
        m.to.name, m.from.name
    ));

    let copied = copy(&old, &new, &m.partitions).await?;
    say(format!(
        "shard {}: copied {copied} row(s) of partitions {moved} and of no partition",
        m.to.name
    ));

    // The new shard's name and the whole map, and its streams and consumers: the moved
    // partitions' commands flow again.
    for line in crate::setup::with_map(config, topology, Some(target)).await? {
        say(line);
    }

    let pruned = prune(&old, &m.partitions).await?;
    say(format!(
        "shard {}: deleted {pruned} row(s) of partitions {moved}",
        m.from.name
    ));
    Ok(())
}

/// Checks that `target` is `current` with one new shard taking partitions of one shard.
fn plan<'a>(current: &'a ShardMap, target: &'a ShardMap) -> anyhow::Result<Move<'a>> {
    let new: Vec<&Shard> = target
        .shards()
        .iter()
        .filter(|s| current.get(&s.name).is_none())
        .collect();
    let [to] = new.as_slice() else {
        bail!(
            "the new map must add exactly one shard to the current one; it adds {}",
            new.len()
        );
    };
    for shard in current.shards() {
        let Some(kept) = target.get(&shard.name) else {
            bail!("the new map drops shard `{}`", shard.name);
        };
        ensure!(
            kept.database_url == shard.database_url,
            "the new map changes shard `{}`'s database",
            shard.name
        );
    }
    ensure!(
        current
            .shards()
            .iter()
            .all(|s| s.database_url != to.database_url),
        "shard `{}`'s database is already another shard's",
        to.name
    );
    let from: BTreeSet<&str> = to
        .partitions()
        .iter()
        .map(|&p| current.shard_of(partition(p)).name.as_str())
        .collect();
    let [from] = from.into_iter().collect::<Vec<_>>()[..] else {
        bail!(
            "shard `{}` must take its partitions from one shard: a split divides one shard",
            to.name
        );
    };
    let from = current.get(from).expect("a shard of the map");
    // Every other partition stays where it is.
    for p in 0..wallet_runtime::partition::PARTITIONS {
        let (was, is) = (
            current.shard_of(partition(p)),
            target.shard_of(partition(p)),
        );
        ensure!(
            was.name == is.name || (was.name == from.name && is.name == to.name),
            "the new map moves partition {p} from shard `{}` to `{}`; a split moves partitions from `{}` to `{}` only",
            was.name,
            is.name,
            from.name,
            to.name
        );
    }
    Ok(Move {
        from,
        to,
        partitions: to
            .partitions()
            .iter()
            .map(|&p| i16::try_from(p).expect("below 256"))
            .collect(),
    })
}

fn partition(p: u16) -> wallet_runtime::partition::Partition {
    wallet_runtime::partition::Partition::new(p).expect("below PARTITIONS")
}

/// Deletes the consumers `current` has and `target` does not: a function that is not sharded
/// runs on a map of one shard, and on none of several (docs/sharding.md, step 5). Its commands
/// wait in its stream. A process of it still running then fails to fetch, and what it already
/// holds of a moved partition it does not decide (the runtime reads the map in the batch's
/// transaction).
async fn drop_consumers(
    js: &async_nats::jetstream::Context,
    config: &Config,
    topology: &Topology,
    current: &ShardMap,
    target: &ShardMap,
) -> anyhow::Result<Vec<String>> {
    let kept: BTreeSet<(String, String)> = topology
        .consumers_in(Some(target))
        .into_iter()
        .map(|(c, shard)| {
            let shard = shard.map(|s| s.name.as_str());
            (c.stream_on(shard), c.durable(shard))
        })
        .collect();
    let mut dropped = Vec::new();
    for (c, shard) in topology.consumers_in(Some(current)) {
        let shard = shard.map(|s| s.name.as_str());
        let (stream, durable) = (c.stream_on(shard), c.durable(shard));
        if kept.contains(&(stream.clone(), durable.clone())) {
            continue;
        }
        let (stream, durable) = (config.names.name(&stream), config.names.name(&durable));
        match js.delete_consumer_from_stream(&durable, &stream).await {
            Ok(_) => dropped.push(format!(
                "consumer {durable}: deleted: `{}` runs on no shard of {} (its commands wait in {stream})",
                c.function,
                target.shards().len()
            )),
            Err(e)
                if matches!(e.kind(), ConsumerErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting consumer {durable}")),
        }
    }
    Ok(dropped)
}

/// The streams of `shard` under `map` (each sharded function's, `DEPOSITS-a`).
fn streams_of<'a>(
    topology: &'a Topology,
    map: &'a ShardMap,
    shard: &'a Shard,
) -> impl Iterator<Item = (&'a StreamDef, &'a Shard)> {
    topology
        .streams_in(Some(map))
        .into_iter()
        .filter_map(move |(def, on)| on.filter(|on| on.name == shard.name).map(|on| (def, on)))
}

/// Waits until the old shard's streams hold no message on a moved partition's subject.
async fn drain(
    js: &async_nats::jetstream::Context,
    config: &Config,
    topology: &Topology,
    target: &ShardMap,
    m: &Move<'_>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let moved: BTreeSet<String> = m.partitions.iter().map(i16::to_string).collect();
    let deadline = Instant::now() + timeout;
    for (def, shard) in streams_of(topology, target, m.from) {
        let name = config.names.name(&def.name_on(Some(shard)));
        let stream = js.get_stream(&name).await?;
        loop {
            let mut held = 0;
            for subject in &def.subjects {
                let filter = config.names.subject(&format!("{subject}.*"));
                let mut counts = stream.info_with_subjects(&filter).await?;
                while let Some((subject, n)) = counts.try_next().await? {
                    if subject
                        .rsplit_once('.')
                        .is_some_and(|(_, p)| moved.contains(p))
                    {
                        held += n;
                    }
                }
            }
            if held == 0 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "stream {name} still holds {held} command(s) of the moved partitions after {timeout:?}: are shard `{}`'s functions running? Run the split again to go on",
                m.from.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Gives the moved partitions to the new shard in every current shard's map. Each transaction
/// first waits for the batches deciding commands there ([`MAP_LOCK`]), and on the old shard
/// for the sagas' sweepers (a sweep updates the due rows of `transfers` and `withdrawals`, and
/// locks them): once it commits, neither touches the moved rows there. Returns the old
/// database's time of the commit.
///
/// [`MAP_LOCK`]: wallet_runtime::shards::MAP_LOCK
async fn fence(
    config: &Config,
    current: &ShardMap,
    m: &Move<'_>,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    let mut fenced_at = None;
    for shard in current.shards() {
        let mut pg = crate::postgres(&config.on_shard(shard)).await?;
        let tx = pg.transaction().await?;
        // Waits for the batches under way there; those after it read the new owner. First:
        // a batch holding it may yet write the sagas' tables locked next.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&wallet_runtime::shards::MAP_LOCK],
        )
        .await?;
        if shard.name == m.from.name {
            tx.batch_execute("LOCK transfers, withdrawals IN SHARE ROW EXCLUSIVE MODE")
                .await?;
        }
        tx.execute(
            "UPDATE partition_map SET shard = $2 WHERE partition = ANY($1)",
            &[&m.partitions, &m.to.name],
        )
        .await?;
        let now: chrono::DateTime<chrono::Utc> = tx.query_one("SELECT now()", &[]).await?.get(0);
        tx.commit().await?;
        if shard.name == m.from.name {
            fenced_at = Some(now);
        }
    }
    fenced_at.context("the old shard is in the current map")
}

/// Waits until `config`'s outbox holds no row written before `at`: the relay publishes a
/// command's messages (its events, its requests to providers, which no split stops) and writes
/// its balances to the cache, and the copy takes no outbox row.
async fn outbox_published(
    config: &Config,
    at: chrono::DateTime<chrono::Utc>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pg = crate::postgres(config).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let left: i64 = pg
            .query_one("SELECT count(*) FROM outbox WHERE created_at <= $1", &[&at])
            .await?
            .get(0);
        if left == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the old shard's outbox still holds {left} row(s) after {timeout:?}: are its functions running? Run the split again to go on"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Copies the moved partitions' rows, the rows of no partition and the whole tables from `old`
/// to `new`, from one snapshot, in binary COPY; sets `new`'s identity sequences past the copied
/// ids. Rows `new` holds already are left alone (a split run again). Returns the rows copied.
async fn copy(old: &Config, new: &Config, partitions: &[i16]) -> anyhow::Result<u64> {
    let mut from = crate::postgres(old).await?;
    let mut to = crate::postgres(new).await?;
    let read = from
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let write = to.transaction().await?;
    let list = partitions
        .iter()
        .map(i16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut copied = 0;
    // The whole tables first: a grant refers to its campaign.
    let tables: Vec<(&str, String)> = WHOLE
        .iter()
        .map(|t| (*t, String::new()))
        .chain(PARTITIONED.iter().map(|(table, unplaced)| {
            let or_none = if *unplaced {
                " OR partition IS NULL"
            } else {
                ""
            };
            (*table, format!("WHERE partition IN ({list}){or_none}"))
        }))
        .collect();
    for (table, filter) in &tables {
        // Into a copy of the table's shape, then what the new database lacks: a split run again
        // after a crash finds some rows there already.
        write
            .batch_execute(&format!("CREATE TEMP TABLE incoming (LIKE {table})"))
            .await?;
        let out = read
            .copy_out(&format!(
                "COPY (SELECT * FROM {table} {filter}) TO STDOUT (FORMAT binary)"
            ))
            .await
            .with_context(|| format!("reading {table}"))?;
        let sink = write
            .copy_in("COPY incoming FROM STDIN (FORMAT binary)")
            .await?;
        futures::pin_mut!(sink);
        let mut out = out.map_err(anyhow::Error::from).boxed();
        while let Some(chunk) = out.next().await {
            sink.send(chunk?).await?;
        }
        sink.as_mut().finish().await?;
        copied += write
            .execute(
                &format!(
                    "INSERT INTO {table} OVERRIDING SYSTEM VALUE
                     SELECT * FROM incoming ON CONFLICT DO NOTHING"
                ),
                &[],
            )
            .await
            .with_context(|| format!("writing {table}"))?;
        write.batch_execute("DROP TABLE incoming").await?;
    }
    // The identity columns: the new database's next ids above every id it copied.
    for (table, column) in [("accounts", "id"), ("postings", "id"), ("outbox", "id")] {
        let last: Option<i64> = read
            .query_one(
                &format!(
                    "SELECT last_value FROM {}",
                    sequence(&read, table, column).await?
                ),
                &[],
            )
            .await?
            .get(0);
        if let Some(last) = last {
            let seq = sequence(&write, table, column).await?;
            write
                .execute(
                    &format!(
                        "SELECT setval('{seq}', greatest($1, (SELECT last_value FROM {seq})))"
                    ),
                    &[&last],
                )
                .await?;
        }
    }
    // Where the audit's check of each entry's sums per partition begins: past the old shard's
    // start too, since its entries came with the copy and those before V11 balance only as a
    // whole. (Entries are transaction ids of the database that wrote them: the new shard's
    // own first entries may fall below and go unchecked per partition; they are still checked
    // as a whole.)
    write
        .execute(
            "UPDATE partitioned_since SET entry = greatest(entry, $1)",
            &[&read
                .query_one("SELECT max(entry) FROM partitioned_since", &[])
                .await?
                .get::<_, Option<i64>>(0)
                .unwrap_or(0)],
        )
        .await?;
    write.execute(NEW_SHARD_CAMPAIGNS, &[]).await?;
    read.commit().await?;
    write.commit().await?;
    Ok(copied)
}

/// The sequence behind `table`'s identity `column`.
async fn sequence(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    column: &str,
) -> anyhow::Result<String> {
    tx.query_one("SELECT pg_get_serial_sequence($1, $2)", &[&table, &column])
        .await?
        .get::<_, Option<String>>(0)
        .with_context(|| format!("{table}.{column} has no sequence"))
}

/// Deletes the moved partitions' rows from the old database, in batches (its functions run on
/// meanwhile: none of them touches these rows). Rows of no partition stay.
async fn prune(old: &Config, partitions: &[i16]) -> anyhow::Result<u64> {
    let mut pg = crate::postgres(old).await?;
    let mut pruned = 0;
    // Postings before their accounts, grants' rows before nothing: no foreign keys between the
    // partitioned tables, but a reader of the audit should never see a posting without its wallet.
    for (table, _) in PARTITIONED.iter().rev() {
        loop {
            let n = pg
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                             SELECT ctid FROM {table} WHERE partition = ANY($1) LIMIT $2))"
                    ),
                    &[&partitions, &PRUNE_BATCH],
                )
                .await
                .with_context(|| format!("deleting from {table}"))?;
            pruned += n;
            if n == 0 {
                break;
            }
        }
    }
    let tx = pg.transaction().await?;
    tx.execute(OLD_SHARD_LOCK, &[]).await?;
    tx.execute(OLD_SHARD_CAMPAIGNS, &[]).await?;
    tx.commit().await?;
    // Redis still counts the moved users' grants in the old shard's state: reloaded from its
    // database (a reservation made before is made again, as after Redis lost its data).
    let reservations = crate::campaign::reservations(old).await?;
    let ids: Vec<String> = pg
        .query("SELECT id FROM campaigns", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in ids {
        wallet_campaigns::loader::load(&mut pg, &old.currencies, &reservations, &id).await?;
    }
    Ok(pruned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn map(shards: &[(&str, &str, &str)]) -> ShardMap {
        let text: String = shards
            .iter()
            .map(|(name, db, partitions)| {
                format!(
                    "[[shard]]\nname = \"{name}\"\ndatabase_url = \"postgres://h/{db}\"\npartitions = \"{partitions}\"\n"
                )
            })
            .collect();
        ShardMap::parse(&text).unwrap()
    }

    fn refused(current: &ShardMap, target: &ShardMap) -> String {
        match plan(current, target) {
            Ok(_) => panic!("a split of {current:?} into {target:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_split_adds_one_shard_holding_partitions_of_one_shard() {
        let current = map(&[("a", "a", "0-127"), ("b", "b", "128-255")]);
        let target = map(&[
            ("a", "a", "0-127"),
            ("b", "b", "128-191"),
            ("c", "c", "192-255"),
        ]);
        let m = plan(&current, &target).unwrap();
        assert_eq!((m.from.name.as_str(), m.to.name.as_str()), ("b", "c"));
        assert_eq!(m.partitions, (192..=255).collect::<Vec<i16>>());

        for (target, said) in [
            (current.clone(), "adds 0"),
            (
                map(&[
                    ("a", "a", "0-63"),
                    ("b", "b", "128-255"),
                    ("c", "c", "64-100"),
                    ("d", "d", "101-127"),
                ]),
                "adds 2",
            ),
            (
                map(&[
                    ("a", "a", "0-126"),
                    ("b", "b", "127-191"),
                    ("c", "c", "192-255"),
                ]),
                "moves partition 127 from shard `a` to `b`",
            ),
            (
                map(&[
                    ("a", "a", "0-100"),
                    ("b", "b", "128-255"),
                    ("c", "c", "101-127"),
                ]),
                "",
            ),
            (
                map(&[
                    ("a", "a", "0-100"),
                    ("b", "b", "160-255"),
                    ("c", "c", "101-159"),
                ]),
                "must take its partitions from one shard",
            ),
            (
                map(&[
                    ("a", "a", "0-127"),
                    ("b", "x", "128-191"),
                    ("c", "c", "192-255"),
                ]),
                "changes shard `b`'s database",
            ),
            (
                map(&[
                    ("a", "a", "0-127"),
                    ("b", "b", "128-191"),
                    ("c", "a", "192-255"),
                ]),
                "already another shard's",
            ),
        ] {
            if said.is_empty() {
                assert!(plan(&current, &target).is_ok());
            } else {
                let e = refused(&current, &target);
                assert!(e.contains(said), "{e}");
            }
        }
    }
}
