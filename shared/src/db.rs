//! PostgreSQL: the connection pool, database creation and the embedded migrations.
//!
//! Connections use TLS when `DATABASE_URL` says `sslmode=require`: rustls, verifying the server's
//! certificate and name against `PG_TLS_CA` (a PEM file) or, without it, the system's roots. Any
//! other `sslmode` connects in plain text (use it only on a trusted network). Every connection
//! commits synchronously ([`SESSION_DEFAULTS`]), and a function's pooled sessions keep their
//! plans on the indexes ([`POOLED_PLANS`]), unless the URL says otherwise.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::Config;

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
    #[error("TLS: {0}")]
    Tls(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(error_chain(&e))
    }
}

/// `DATABASE_URL`'s connection settings, with [`SESSION_DEFAULTS`] and `extra` for whatever its
/// `options` do not set.
fn pg_config(url: &str, extra: &[(&str, &str)]) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(5));
    config.keepalives_idle(Duration::from_secs(30));
    if config.get_application_name().is_none() {
        config.application_name("wallet-functions");
    }
    let mut options = config.get_options().unwrap_or_default().to_owned();
    for (setting, value) in SESSION_DEFAULTS.iter().chain(extra) {
        if !options.contains(setting) {
            options = format!("{options} -c {setting}={value}");
        }
    }
    config.options(options.trim_start());
    Ok(config)
}

/// Settings of every session, unless the URL sets them itself (`synchronous_commit=remote_apply`,
/// say): a command is acknowledged once its transaction commits, so that commit must be on disk
/// (and on the synchronous standbys), whatever the server's default.
const SESSION_DEFAULTS: [(&str, &str); 1] = [("synchronous_commit", "on")];

/// Settings of a function's pooled sessions besides [`SESSION_DEFAULTS`], unless the URL sets
/// them: plans that stay right while the tables grow.
///
/// A function prepares its statements once per connection and runs them for the connection's
/// life, against tables that start empty and grow by millions of rows. After five runs
/// PostgreSQL settles on a generic plan made for the table's size then, and replaces it only when
/// the table's statistics change, which without autovacuum is never: the accounts lock and the
/// answers' finishing updates kept sequential scans and hash joins made for tables of a few hundred
/// rows, 47–58 ms a batch after three minutes of mixed-all-peak (bench/ANALYSIS.md).
///
/// - `enable_seqscan=off`: every statement of a function finds its rows by key, so a plan made
///   on an empty table walks the index it will need at any size. A statement with no index to
///   use still runs, by a sequential scan.
/// - `enable_mergejoin=off`, `enable_hashjoin=off`: a batch joins its keys (an `unnest` of its
///   arrays) with a table, and on a table of a few thousand rows walking its whole index in a
///   merge join looks cheaper than a thousand probes. The wallets' lock for a batch of 1,000 on
///   10,255 wallets (`deposit-max`'s) planned so took 13 ms against 3 for the probes, and a
///   pooled session's lock of 1,000 wallets of 10,000 read 12,000 index entries per batch
///   against 1,000 (`tests/runtime.rs`); on millions of wallets it would read millions. A
///   nested loop of index probes stays right at any size.
/// - `jit=off`: with sequential scans priced out, such a statement's estimate would pass the JIT
///   threshold and compile for 100 ms or more; a batch's statements never gain from it.
///
/// Planning each batch's statements for their own arguments (`plan_cache_mode=force_custom_plan`)
/// fixed the plans too, but planning then took 14 of PostgreSQL's 87 busy seconds in 90 s of
/// mixed-all-peak, against 7 with these settings (pg_stat_statements, bench/ANALYSIS.md).
const POOLED_PLANS: [(&str, &str); 4] = [
    ("enable_seqscan", "off"),
    ("enable_mergejoin", "off"),
    ("enable_hashjoin", "off"),
    ("jit", "off"),
];

/// The TLS connector `sslmode=require` asks for; `None` for plain text.
fn tls(
    config: &tokio_postgres::Config,
    ca: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, DbError> {
    if config.get_ssl_mode() != SslMode::Require {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| DbError::Tls(format!("PG_TLS_CA {}: {e}", path.display())))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| DbError::Tls(format!("PG_TLS_CA {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| DbError::Tls(format!("PG_TLS_CA {}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot parse is one we do not trust.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(client)))
}

/// A pool of `PG_POOL_SIZE` connections. Nothing connects until the first use, so a process
/// starts (and reports itself not ready) while PostgreSQL is down.
pub fn pool(config: &Config) -> Result<Pool, DbError> {
    let pg = pg_config(&config.database_url, &POOLED_PLANS)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match tls(&pg, config.pg_tls_ca.as_deref())? {
        Some(tls) => Manager::from_config(pg, tls, manager_config),
        None => Manager::from_config(pg, NoTls, manager_config),
    };
    Pool::builder(manager)
        .max_size(config.pg_pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| DbError::Postgres(e.to_string()))
}

async fn connect(
    config: &tokio_postgres::Config,
    ca: Option<&Path>,
) -> Result<tokio_postgres::Client, DbError> {
    fn run<F>(connection: F)
    where
        F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
    {
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection closed");
            }
        });
    }
    Ok(match tls(config, ca)? {
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            run(connection);
            client
        }
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            run(connection);
            client
        }
    })
}

/// One connection to `DATABASE_URL`'s database, outside any pool (operator commands).
pub async fn client(config: &Config) -> Result<tokio_postgres::Client, DbError> {
    connect(
        &pg_config(&config.database_url, &[])?,
        config.pg_tls_ca.as_deref(),
    )
    .await
}

/// The database `DATABASE_URL` names, and a connection to its server's `postgres` database.
async fn admin(c: &Config) -> Result<(String, tokio_postgres::Client), DbError> {
    let config = pg_config(&c.database_url, &[])?;
    let name = config
        .get_dbname()
        .map(str::to_owned)
        .or_else(|| config.get_user().map(str::to_owned))
        .ok_or_else(|| DbError::Postgres("the URL names no database".into()))?;
    let mut admin = config.clone();
    admin.dbname("postgres");
    Ok((name, connect(&admin, c.pg_tls_ca.as_deref()).await?))
}

/// `CREATE DATABASE` and `DROP DATABASE` take no parameters: a quoted identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops the database `DATABASE_URL` names (closing its connections); true when it existed.
pub async fn drop_database(config: &Config) -> Result<bool, DbError> {
    let (name, client) = admin(config).await?;
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

/// Creates the database `DATABASE_URL` names when it does not exist; true when it created it.
pub async fn create_database_if_missing(config: &Config) -> Result<bool, DbError> {
    let (name, client) = admin(config).await?;
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
pub async fn migrate(config: &Config) -> Result<Vec<String>, DbError> {
    run_migrations(config, refinery::Target::Latest).await
}

/// [`migrate`] up to migration `version` (`V<version>__…`): a database as an earlier version of
/// the project left it, for a test of the migrations that follow.
pub async fn migrate_to(config: &Config, version: i32) -> Result<Vec<String>, DbError> {
    run_migrations(config, refinery::Target::Version(version)).await
}

async fn run_migrations(config: &Config, target: refinery::Target) -> Result<Vec<String>, DbError> {
    let mut client = client(config).await?;
    // Any constant: it only has to be the same for every setup.
    client
        .execute("SELECT pg_advisory_lock(7301550003)", &[])
        .await?;
    let report = embedded::migrations::runner()
        .set_target(target)
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sessions_commit_synchronously_and_pooled_ones_walk_indexes_unless_the_url_says_otherwise() {
        let url = "postgres://postgres@127.0.0.1:5432/wallet";
        let plain = pg_config(url, &[]).unwrap();
        assert_eq!(plain.get_options(), Some("-c synchronous_commit=on"));
        let pooled = pg_config(url, &POOLED_PLANS).unwrap();
        assert_eq!(
            pooled.get_options(),
            Some(
                "-c synchronous_commit=on -c enable_seqscan=off -c enable_mergejoin=off \
                 -c enable_hashjoin=off -c jit=off"
            )
        );
        let other = pg_config("postgres://h/db?options=-c%20statement_timeout%3D5s", &[]).unwrap();
        assert_eq!(
            other.get_options(),
            Some("-c statement_timeout=5s -c synchronous_commit=on")
        );
        let own = pg_config(
            "postgres://h/db?options=-c%20synchronous_commit%3Dremote_apply%20-c%20jit%3Don",
            &POOLED_PLANS,
        )
        .unwrap();
        assert_eq!(
            own.get_options(),
            Some(
                "-c synchronous_commit=remote_apply -c jit=on -c enable_seqscan=off \
                 -c enable_mergejoin=off -c enable_hashjoin=off"
            )
        );
    }
}
