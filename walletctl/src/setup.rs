//! `walletctl setup`: the database, its schema, the streams and consumers. Idempotent.

use wallet_runtime::Config;
use wallet_runtime::db;
use wallet_runtime::streams::Topology;

/// Returns one line per thing it looked at, saying what it changed.
pub async fn setup(config: &Config, topology: &Topology) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    let created = db::create_database_if_missing(&config.database_url).await?;
    report.push(format!(
        "database: {}",
        if created { "created" } else { "exists" }
    ));
    let applied = db::migrate(&config.database_url).await?;
    if applied.is_empty() {
        report.push("migrations: up to date".to_owned());
    }
    report.extend(
        applied
            .into_iter()
            .map(|m| format!("migration {m}: applied")),
    );
    let js = async_nats::jetstream::new(crate::nats(config).await?);
    report.extend(topology.apply(&js, &config.names).await?);
    Ok(report)
}
