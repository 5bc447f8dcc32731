//! What an operator does to a deployment, as a library: `walletctl` is its command line, and the
//! test kit and `chaos` call the same code, so a test sets a system up exactly as an operator does.
//!
//! Each module is one command's work and returns what it found (lines, a report, a count); the
//! command line prints it and picks the exit code.

use anyhow::Context as _;
use wallet_runtime::Config;

pub mod audit;
pub mod campaign;
pub mod catalog;
pub mod client;
pub mod dlq;
pub mod rebalance;
pub mod setup;
pub mod split;
pub mod status;
pub mod teardown;
pub mod transfer;

/// A NATS connection for one command: fails fast when NATS is down.
pub async fn nats(config: &Config) -> anyhow::Result<async_nats::Client> {
    let servers: Vec<&str> = config.nats_url.split(',').map(str::trim).collect();
    config
        .nats_auth
        .options()
        .await
        .context("NATS_CREDS")?
        .name("walletctl")
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(servers.as_slice())
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {}",
                wallet_runtime::config::redact(&config.nats_url)
            )
        })
}

/// One PostgreSQL connection for one command.
pub async fn postgres(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    wallet_runtime::db::client(config).await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {}",
            wallet_runtime::config::redact(&config.database_url)
        )
    })
}

/// The ledger's databases: with a shard map (`SHARDS_FILE`) every shard's, in the map's order;
/// otherwise `DATABASE_URL`'s.
pub fn databases(config: &Config) -> anyhow::Result<Vec<Config>> {
    Ok(match config.shard_map()? {
        None => vec![config.clone()],
        Some(map) => map.shards().iter().map(|s| config.on_shard(s)).collect(),
    })
}
