//! `walletctl teardown`: removes a namespaced deployment — its streams (and their consumers), its
//! database and its Redis keys. For benchmarks, tests and dev stacks; it refuses the empty
//! namespace, and the namespace must be typed again to confirm.

use async_nats::jetstream;
use wallet_runtime::Config;
use wallet_runtime::db;
use wallet_runtime::streams::Topology;

/// Returns one line per thing removed.
pub async fn teardown(config: &Config, topology: &Topology) -> anyhow::Result<Vec<String>> {
    let ns = config.names.namespace();
    anyhow::ensure!(
        !ns.is_empty(),
        "teardown removes a namespaced deployment only; WALLET_NAMESPACE is empty"
    );
    let mut report = Vec::new();
    let js = jetstream::new(crate::nats(config).await?);
    let shards = config.shard_map()?;
    for (def, shard) in topology.streams_in(shards.as_ref()) {
        let name = config.names.name(&def.name_on(shard));
        if js.delete_stream(&name).await.is_ok() {
            report.push(format!("stream {name}: deleted"));
        }
    }
    if db::drop_database(config).await? {
        report.push("database: dropped".into());
    }
    for shard in shards.iter().flat_map(|m| m.shards()) {
        if db::drop_database(&config.on_shard(shard)).await? {
            report.push(format!("shard {}: database dropped", shard.name));
        }
    }
    let client = wallet_runtime::cache::client(config)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = config.names.redis_key("*");
    let mut removed = 0usize;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            removed += keys.len();
            let () = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    report.push(format!("redis: {removed} key(s) removed"));
    Ok(report)
}
