//! Typed configuration from the environment (CONTRACT §1 plus the runtime's tuning knobs).
//!
//! Every binary builds one [`Config`] at start. A bad value is a [`ConfigError`] naming the
//! variable; binaries print it as one line and exit with code 64 (`EX_USAGE`). Secrets in URLs are
//! never printed: [`Config`]'s `Debug` shows URLs with their passwords masked.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::error::ConfigError;
use crate::money::Currencies;
use crate::names::Names;
use crate::nats_auth::NatsAuth;

/// The exit code of a binary started with a bad configuration (`EX_USAGE` of sysexits.h).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Clone)]
pub struct Config {
    pub nats_url: String,
    /// NATS credentials and TLS beyond what the URL carries.
    pub nats_auth: NatsAuth,
    pub database_url: String,
    /// `PG_TLS_CA`: the roots that sign PostgreSQL's certificate (with `sslmode=require`).
    pub pg_tls_ca: Option<PathBuf>,
    pub redis_url: String,
    /// `REDIS_TLS_CA`: the roots that sign Redis's certificate (with a `rediss://` URL).
    pub redis_tls_ca: Option<PathBuf>,
    pub names: Names,
    pub http_addr: SocketAddr,
    pub json_logs: bool,
    /// How long a SIGTERM waits for in-flight work before giving up.
    pub shutdown_grace: Duration,
    /// Another `streams.toml` than the built-in one.
    pub streams_file: Option<PathBuf>,
    /// `SHARDS_FILE`: the shard map (`crate::shards`); unset on one PostgreSQL.
    pub shards_file: Option<PathBuf>,
    /// `SHARD`: the shard a function process serves (its consumer `<function>-<shard>`, its
    /// `DATABASE_URL` that shard's database); unset on one PostgreSQL.
    pub shard: Option<String>,
    /// The most messages one batch (one transaction) and one pull request hold.
    pub batch_max: usize,
    /// The most bytes one batch and one pull request hold (JetStream counts payload and
    /// headers): with `batches_in_flight`, what bounds the messages a process holds (the batch
    /// being decided and the pull request filling meanwhile), whatever their size.
    pub batch_max_bytes: usize,
    /// Batches a process decides at once (each loop with its pull subscription and transaction).
    pub batches_in_flight: usize,
    /// How long an idle consume loop waits for a message before it looks round.
    pub fetch_wait: Duration,
    /// Under load, how long a batch that is not full may wait for more messages before it is
    /// decided (runtime::fetch says when a loop lingers).
    pub batch_linger: Duration,
    pub pg_pool_size: usize,
    /// How often the outbox relay looks for events that a crash or an outage left unpublished.
    pub outbox_relay_interval: Duration,
    pub currencies: Currencies,
    pub providers: Vec<String>,
    pub transfers: TransferTimings,
    /// A bonus reservation not committed this long after it was made is given back.
    pub bonus_reservation_timeout: Duration,
}

/// How long transfers wait on their provider (CONTRACT §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferTimings {
    /// A pending transfer's first status query goes out this long after it was debited.
    pub ack_timeout: Duration,
    /// A pending transfer this old gets its one `stuck` event.
    pub stuck_after: Duration,
    /// An ack for a transfer nobody knows is retried this long from its first delivery, then
    /// dead-lettered `unknown_transfer`.
    pub unknown_retry: Duration,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `lookup`, so that tests can build one without touching the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str, default: &str| -> String {
            lookup(var)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let err = |var: &'static str, message: String| ConfigError { var, message };

        let nats_url = get("NATS_URL", "nats://127.0.0.1:4222");
        for server in nats_url.split(',') {
            server
                .trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| err("NATS_URL", format!("`{}`: {e}", redact(server.trim()))))?;
        }
        let database_url = get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/wallet");
        database_url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| err("DATABASE_URL", format!("`{}`: {e}", redact(&database_url))))?;
        let redis_url = get("REDIS_URL", "redis://127.0.0.1:6379");
        redis::Client::open(redis_url.as_str())
            .map_err(|e| err("REDIS_URL", format!("`{}`: {e}", redact(&redis_url))))?;

        let names =
            Names::new(&get("WALLET_NAMESPACE", "")).map_err(|m| err("WALLET_NAMESPACE", m))?;
        let http_addr = get("HTTP_ADDR", "0.0.0.0:8080")
            .parse()
            .map_err(|e| err("HTTP_ADDR", format!("{e} (expected HOST:PORT)")))?;
        let json_logs = match get("LOG_FORMAT", "text").as_str() {
            "json" => true,
            "text" => false,
            other => {
                return Err(err(
                    "LOG_FORMAT",
                    format!("`{other}` is neither `json` nor `text`"),
                ));
            }
        };
        let duration = |var: &'static str, default: &str| -> Result<Duration, ConfigError> {
            humantime::parse_duration(&get(var, default))
                .map_err(|e| err(var, format!("{e} (expected a duration like 25s or 500ms)")))
        };
        let number = |var: &'static str,
                      default: &str,
                      min: usize,
                      max: usize|
         -> Result<usize, ConfigError> {
            get(var, default)
                .parse::<usize>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| err(var, format!("expected a whole number from {min} to {max}")))
        };
        let providers: Vec<String> = get("WALLET_PROVIDERS", "alpha,beta")
            .split(',')
            .map(|p| p.trim().to_owned())
            .collect();
        if let Some(bad) = providers.iter().find(|p| !crate::ids::is_valid_provider(p)) {
            return Err(err(
                "WALLET_PROVIDERS",
                format!("`{bad}` is not a provider name ([a-z0-9-]{{1,32}})"),
            ));
        }

        let file = |var: &'static str| match lookup(var).filter(|v| !v.is_empty()) {
            Some(path) if !std::path::Path::new(&path).is_file() => {
                Err(err(var, format!("{path} is not a readable file")))
            }
            other => Ok(other.map(PathBuf::from)),
        };
        let nats_auth = NatsAuth::from_lookup(|k| lookup(k).filter(|v| !v.is_empty()))?;

        Ok(Self {
            nats_url,
            nats_auth,
            database_url,
            pg_tls_ca: file("PG_TLS_CA")?,
            redis_url,
            redis_tls_ca: file("REDIS_TLS_CA")?,
            names,
            http_addr,
            json_logs,
            shutdown_grace: duration("SHUTDOWN_GRACE", "25s")?,
            streams_file: lookup("STREAMS_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            shards_file: file("SHARDS_FILE")?,
            shard: match lookup("SHARD").filter(|v| !v.is_empty()) {
                Some(s) if !crate::shards::is_valid_name(&s) => {
                    return Err(err(
                        "SHARD",
                        format!("`{s}` is not a shard name (1 to 16 of a-z 0-9)"),
                    ));
                }
                other => other,
            },
            batch_max: number("BATCH_MAX", "1000", 1, 10_000)?,
            batches_in_flight: number("BATCHES_IN_FLIGHT", "2", 1, 64)?,
            // At least one command of the largest size a command stream stores, or a pull could
            // never take it.
            batch_max_bytes: number(
                "BATCH_MAX_BYTES",
                "4194304",
                crate::streams::MAX_STORED_COMMAND_BYTES,
                1 << 30,
            )?,
            fetch_wait: duration("FETCH_WAIT", "5s")?,
            batch_linger: duration("BATCH_LINGER", "20ms")?,
            pg_pool_size: number("PG_POOL_SIZE", "4", 1, 256)?,
            outbox_relay_interval: duration("OUTBOX_RELAY_INTERVAL", "1s")?,
            currencies: get("WALLET_CURRENCIES", "USD:2,EUR:2,VND:0,BTC:8")
                .parse()
                .map_err(|m| err("WALLET_CURRENCIES", m))?,
            providers,
            transfers: TransferTimings {
                ack_timeout: Some(duration("TRANSFER_ACK_TIMEOUT", "30s")?)
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| err("TRANSFER_ACK_TIMEOUT", "must be above zero".into()))?,
                stuck_after: duration("TRANSFER_STUCK_AFTER", "15m")?,
                unknown_retry: duration("UNKNOWN_TRANSFER_RETRY", "2m")?,
            },
            bonus_reservation_timeout: duration("BONUS_RESERVATION_TIMEOUT", "30s")?,
        })
    }
}

impl Config {
    /// The shard map `SHARDS_FILE` names; none on one PostgreSQL.
    pub fn shard_map(&self) -> Result<Option<crate::shards::ShardMap>, crate::shards::ShardsError> {
        self.shards_file
            .as_deref()
            .map(crate::shards::ShardMap::load)
            .transpose()
    }

    /// This configuration on `shard`'s database (what `walletctl` does on each shard).
    pub fn on_shard(&self, shard: &crate::shards::Shard) -> Self {
        Self {
            database_url: shard.database_url.clone(),
            shard: Some(shard.name.clone()),
            ..self.clone()
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("nats_url", &redact(&self.nats_url))
            .field("nats_auth", &self.nats_auth)
            .field("database_url", &redact(&self.database_url))
            .field("redis_url", &redact(&self.redis_url))
            .field("namespace", &self.names.namespace())
            .field("shard", &self.shard)
            .field("http_addr", &self.http_addr)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("batch_max", &self.batch_max)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .field("batches_in_flight", &self.batches_in_flight)
            .field("fetch_wait", &self.fetch_wait)
            .field("batch_linger", &self.batch_linger)
            .field("pg_pool_size", &self.pg_pool_size)
            .field("transfers", &self.transfers)
            .finish_non_exhaustive()
    }
}

/// A connection string with every secret masked, for logs and error messages. Each form a
/// driver accepts: `scheme://user:secret@host`, a secret in the query
/// (`?password=…`, `&sslpassword=…`, `token`, `pass`), and PostgreSQL's key=value form
/// (`host=db user=app password=secret`, quoted values included).
pub fn redact(url: &str) -> String {
    if url.contains("://") {
        redact_url(url)
    } else {
        redact_key_values(url)
    }
}

/// Keys whose value is a secret, in a query or a key=value string.
fn secret(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    [
        "password",
        "sslpassword",
        "pass",
        "passwd",
        "token",
        "secret",
        "sslkey",
    ]
    .contains(&key.as_str())
}

fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match before_query.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => out.push_str(&format!("{user}:***@{host}")),
            None => out.push_str(&format!("***@{host}")),
        },
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if secret(k) => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// `key=value` pairs separated by spaces; a value may be single-quoted with `\'` inside.
fn redact_key_values(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let (key, after) = (&rest[..eq], &rest[eq + 1..]);
        out.push_str(key);
        out.push('=');
        let after_trimmed = after.trim_start();
        out.push_str(&after[..after.len() - after_trimmed.len()]);
        let value_len = if let Some(quoted) = after_trimmed.strip_prefix('\'') {
            let mut end = quoted.len();
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            after_trimmed
                .find(char::is_whitespace)
                .unwrap_or(after_trimmed.len())
        };
        let key_name = key.split_whitespace().last().unwrap_or(key);
        if secret(key_name) {
            out.push_str("***");
        } else {
            out.push_str(&after_trimmed[..value_len]);
        }
        rest = &after_trimmed[value_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config(&[]).expect("defaults");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.database_url, "postgres://postgres@127.0.0.1:5432/wallet");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));
        assert_eq!(c.providers, ["alpha", "beta"]);
        assert_eq!(c.transfers.ack_timeout, Duration::from_secs(30));
        assert_eq!(c.transfers.stuck_after, Duration::from_secs(15 * 60));
        assert_eq!(c.names.subject("wallet.deposit"), "wallet.deposit");
        assert_eq!(
            (c.batch_max, c.batches_in_flight, c.batch_linger),
            (1000, 2, Duration::from_millis(20))
        );
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = config(&[("HTTP_ADDR", "nope")]).expect_err("bad addr");
        assert_eq!(e.var, "HTTP_ADDR");
        let e = config(&[("SHUTDOWN_GRACE", "soon")]).expect_err("bad duration");
        assert_eq!(e.var, "SHUTDOWN_GRACE");
        let e = config(&[("WALLET_NAMESPACE", "a.b")]).expect_err("bad namespace");
        assert_eq!(e.var, "WALLET_NAMESPACE");
        let e = config(&[("BATCH_MAX", "0")]).expect_err("bad batch");
        assert_eq!(e.var, "BATCH_MAX");
        let e = config(&[("WALLET_PROVIDERS", "Alpha")]).expect_err("bad provider");
        assert_eq!(e.var, "WALLET_PROVIDERS");
        for var in ["PG_TLS_CA", "REDIS_TLS_CA"] {
            let e = config(&[(var, "/no/such/ca.pem")]).expect_err("missing CA file");
            assert_eq!(e.var, var);
        }
    }

    #[test]
    fn secrets_are_never_printed() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:hunter2@db:5432/wallet"),
            ("REDIS_URL", "redis://:hunter2@r:6379"),
        ])
        .expect("config");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("app:***@db"));
        let e = config(&[("DATABASE_URL", "postgres://app:hunter2@db:notaport/wallet")])
            .expect_err("bad url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn every_form_of_a_secret_is_masked() {
        for (given, shown) in [
            (
                "host=db user=app password=hunter2 dbname=wallet",
                "host=db user=app password=*** dbname=wallet",
            ),
            (
                "host=db password='hunter 2\\' x' user=app",
                "host=db password=*** user=app",
            ),
            ("password = hunter2", "password = ***"),
            (
                "postgres://db/wallet?user=app&password=hunter2&sslmode=require",
                "postgres://db/wallet?user=app&password=***&sslmode=require",
            ),
            (
                "postgres://app:hunter2@db/wallet?sslpassword=hunter2",
                "postgres://app:***@db/wallet?sslpassword=***",
            ),
            ("redis://:hunter2@r:6379", "redis://:***@r:6379"),
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
        let c = config(&[("DATABASE_URL", "host=db user=app password=hunter2 dbname=w")])
            .expect("a key=value DSN");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password=***"), "{shown}");
    }
}
