//! PostgreSQL: the connection pool, database creation and the embedded migrations.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::error_chain;

mod embedded {
    refinery::embed_migrations!("migrations");
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("migration: {0}")]
    Migration(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(error_chain(&e))
    }
}

fn pg_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    config.keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("wallet-functions");
    }
    Ok(config)
}

/// A pool of `size` connections. Nothing connects until the first use, so a process starts (and
/// reports itself not ready) while PostgreSQL is down.
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        pg_config(url)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| DbError::Postgres(e.to_string()))
}

async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "setup connection closed");
        }
    });
    Ok(client)
}

/// The database `url` names, and a connection to its server's `postgres` database.
async fn admin(url: &str) -> Result<(String, tokio_postgres::Client), DbError> {
    let config = pg_config(url)?;
    let name = config
        .get_dbname()
        .map(str::to_owned)
        .or_else(|| config.get_user().map(str::to_owned))
        .ok_or_else(|| DbError::Postgres("the URL names no database".into()))?;
    let mut admin = config.clone();
    admin.dbname("postgres");
    Ok((name, connect(&admin).await?))
}

/// `CREATE DATABASE` and `DROP DATABASE` take no parameters: a quoted identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops the database `url` names (closing its connections); true when it existed.
pub async fn drop_database(url: &str) -> Result<bool, DbError> {
    let (name, client) = admin(url).await?;
    let existed = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quoted(&name)
        ))
        .await?;
    Ok(existed)
}

/// Creates the database `url` names when it does not exist; true when it created it.
pub async fn create_database_if_missing(url: &str) -> Result<bool, DbError> {
    let (name, client) = admin(url).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quoted(&name)))
        .await
    {
        Ok(()) => Ok(true),
        // Another setup created it meanwhile.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs the migrations not yet applied; returns their names. Concurrent runs take turns on an
/// advisory lock.
pub async fn migrate(url: &str) -> Result<Vec<String>, DbError> {
    let mut client = connect(&pg_config(url)?).await?;
    // Any constant: it only has to be the same for every setup.
    client
        .execute("SELECT pg_advisory_lock(7301550003)", &[])
        .await?;
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(|e| DbError::Migration(e.to_string()))?;
    client
        .execute("SELECT pg_advisory_unlock(7301550003)", &[])
        .await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
