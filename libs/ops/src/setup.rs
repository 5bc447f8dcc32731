//! `walletctl setup`: the database, its schema, a PostgreSQL role per function, the streams and
//! consumers. Idempotent.

use anyhow::Context as _;
use wallet_runtime::Config;
use wallet_runtime::db;
use wallet_runtime::streams::Topology;

/// The functions' PostgreSQL roles and their grants.
pub const ROLES: &str = include_str!("roles.sql");

/// The role `function` connects as (`transfer-out` → `wallet_transfer_out`).
pub fn role(function: &str) -> String {
    format!("wallet_{}", function.replace('-', "_"))
}

/// Returns one line per thing it looked at, saying what it changed.
pub async fn setup(config: &Config, topology: &Topology) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
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
    let js = async_nats::jetstream::new(crate::nats(config).await?);
    report.extend(topology.apply(&js, &config.names).await?);
    Ok(report)
}
