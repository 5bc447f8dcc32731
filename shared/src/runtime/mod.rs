//! Running a function: start-up, the consume loop, request-reply serving and shutdown.
//!
//! A binary's `main` is one call: [`run`] for a JetStream function, [`serve`] for a request-reply
//! one. Start-up reads the configuration (a bad value: one line on stderr, exit 64), starts
//! `/healthz`, `/readyz` and `/metrics`, connects (waiting out dependencies that are down), and
//! runs until SIGTERM or SIGINT. Then it stops fetching, finishes and acknowledges what it holds,
//! and exits 0 within `SHUTDOWN_GRACE`; a second signal ends it at once (exit 128 + signal).
//!
//! The tasks beside the work (the outbox relay, a function's background work such as a sweeper,
//! the HTTP server, the event publisher) are supervised ([`tasks`]): one that panics is logged,
//! shuts the process down and makes its exit a failure, so that a replica never goes on without
//! its relay or its sweeper unnoticed.

mod connect;
mod consume;
mod fetch;
mod lag;
mod respond;
mod settle;
mod signals;
mod tasks;

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

pub use connect::Backoff;
pub use respond::Responder;
use tasks::Tasks;

use crate::config::{Config, EXIT_CONFIG};
use crate::context::Context;
use crate::db::DbError;
use crate::error::ConfigError;
use crate::function::Function;
use crate::interface::Interface;
use crate::partition::Routing;
use crate::streams::{Topology, TopologyError};
use crate::{http, outbox, telemetry};

/// Why a function could not start: each is one line on stderr and exit 64 ([`EXIT_CONFIG`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid STREAMS_FILE: {0}")]
    Streams(#[from] TopologyError),
    #[error("cannot listen on HTTP_ADDR {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("NATS_CREDS: {0}")]
    NatsCreds(std::io::Error),
    #[error("NATS_URL: {0}")]
    Nats(async_nats::ConnectError),
    #[error("DATABASE_URL: {0}")]
    Postgres(DbError),
    #[error("REDIS_URL: {0}")]
    Redis(redis::RedisError),
    #[error("{0}")]
    Shard(String),
    #[error("no consumer for function `{0}` in the streams file")]
    NoConsumer(&'static str),
    #[error(
        "invalid BATCH_MAX_BYTES: {batch_max_bytes} bytes; stream {stream} may store larger messages (max_msg_size {largest:?}), which no fetch could take"
    )]
    FetchTooSmall {
        batch_max_bytes: usize,
        stream: String,
        largest: Option<usize>,
    },
}

/// Runs the JetStream function `f` until a signal; the whole `main` of its binary.
pub fn run<F: Function>(f: F) -> ExitCode {
    start(
        F::NAME,
        F::interface,
        move |config| f.configure(config),
        move |f, ctx, topology, tasks| async move {
            let def = topology
                .consumer(F::NAME)
                .cloned()
                .ok_or(StartError::NoConsumer(F::NAME))?;
            let stream = topology.stream(&def.stream);
            let largest = stream
                .and_then(|s| usize::try_from(s.max_msg_size).ok())
                .filter(|&n| n > 0);
            let routing = stream.map(Routing::of).unwrap_or_default();
            if connect::check_shard(&ctx, &tasks.shutdown())
                .await?
                .is_none()
            {
                return Ok(());
            }
            if largest.is_none_or(|n| n > ctx.config.batch_max_bytes) {
                return Err(StartError::FetchTooSmall {
                    batch_max_bytes: ctx.config.batch_max_bytes,
                    stream: def.stream,
                    largest,
                });
            }
            // Only a function that writes an outbox relays it: a request-reply one (balance) only
            // reads, and its role may not touch the outbox.
            let interval = ctx.config.outbox_relay_interval;
            tasks.spawn(
                "outbox relay",
                outbox::relay(ctx.publisher(), interval, tasks.shutdown()),
            );
            tasks.spawn("background", f.background(ctx.clone(), tasks.shutdown()));
            consume::consume(Arc::new(f), ctx, def, routing, tasks).await;
            Ok(())
        },
    )
}

/// Runs the request-reply function `r` until a signal; the whole `main` of its binary.
pub fn serve<R: Responder>(r: R) -> ExitCode {
    start(
        R::NAME,
        R::interface,
        move |_| Ok(r),
        move |r, ctx, _, tasks| async move {
            let Some(partitions) = connect::check_shard(&ctx, &tasks.shutdown()).await? else {
                return Ok(());
            };
            respond::respond_loop(Arc::new(r), ctx, partitions, tasks.shutdown()).await;
            Ok(())
        },
    )
}

/// `configure` reads the function's own settings (see [`Function::configure`]); `main` runs it.
fn start<H, C, M, Fut>(
    name: &'static str,
    interface: fn() -> Interface,
    configure: C,
    main: M,
) -> ExitCode
where
    C: FnOnce(&Config) -> Result<H, ConfigError>,
    M: FnOnce(H, Arc<Context>, Topology, Tasks) -> Fut,
    Fut: Future<Output = Result<(), StartError>>,
{
    if let Some(code) = arguments(name, interface) {
        return code;
    }
    let setup = || -> Result<_, StartError> {
        let config = Config::from_env()?;
        let handler = configure(&config)?;
        let topology = Topology::load(config.streams_file.as_deref())?;
        crate::trace::init(name)?;
        Ok((config, handler, topology, telemetry::filter()?))
    };
    let (config, handler, topology, filter) = match setup() {
        Ok(s) => s,
        Err(e) => return refused(name, &e),
    };
    telemetry::init_logs(filter, config.json_logs);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            telemetry::report(format_args!("{name}: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        signals::watch_signals(name, shutdown.clone());
        let listener = match tokio::net::TcpListener::bind(config.http_addr).await {
            Ok(l) => l,
            Err(source) => {
                let addr = config.http_addr;
                return refused(name, &StartError::Listen { addr, source });
            }
        };
        let grace = config.shutdown_grace;
        let tasks = Tasks::new(name, shutdown.clone());
        let slot = Arc::new(OnceLock::new());
        let metrics = telemetry::init_metrics(name);
        tasks.spawn(
            "metrics upkeep",
            telemetry::upkeep(metrics.clone(), shutdown.clone()),
        );
        crate::metrics::build_info(name);
        tasks.spawn("http", http::serve(listener, slot.clone(), metrics, shutdown.clone()));
        tracing::info!(function = name, config = ?config, "starting");
        let ctx = match connect::connect(name, config, &shutdown).await {
            Ok(Some(ctx)) => ctx,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => return refused(name, &e),
        };
        let _ = slot.set(ctx.clone());
        let work = main(handler, ctx.clone(), topology, tasks.clone());
        tokio::pin!(work);
        let result = tokio::select! {
            r = &mut work => r,
            () = shutdown.cancelled() => match tokio::time::timeout(grace, &mut work).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(function = name, ?grace, "shutdown grace elapsed with work in flight; it will be redelivered");
                    return ExitCode::FAILURE;
                }
            },
        };
        shutdown.cancel();
        let _ = ctx.nats.flush().await;
        // The exporter's HTTP client blocks: off the async workers.
        let _ = tokio::task::spawn_blocking(crate::trace::shutdown).await;
        let Ok(healthy) = tokio::time::timeout(grace, tasks.join()).await else {
            tracing::warn!(function = name, ?grace, "shutdown grace elapsed with tasks still running");
            return ExitCode::FAILURE;
        };
        match result {
            Err(e) => refused(name, &e),
            Ok(()) if !healthy => ExitCode::FAILURE,
            Ok(()) => {
                tracing::info!(function = name, "stopped");
                ExitCode::SUCCESS
            }
        }
    })
}

/// A function takes no arguments (its configuration is its environment): `--help` prints what it
/// is and `--interface` its messages' schemas (JSON, for `walletctl interface`), and exit 0;
/// anything else is refused in one line with exit 64; `None`: start.
fn arguments(name: &str, interface: fn() -> Interface) -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => None,
        Some("-h" | "--help") if args.len() == 1 => {
            println!(
                "{name}: a wallet function (wallet-runtime {}).\n\n\
                 Usage: {name}\n\n\
                 It takes no arguments: its configuration is its environment (NATS_URL, \
                 DATABASE_URL, REDIS_URL, WALLET_NAMESPACE, HTTP_ADDR, …; docs/configuration.md), \
                 and a bad value is one line on stderr and exit 64. It serves /healthz, /readyz \
                 and /metrics on HTTP_ADDR and runs until SIGTERM or SIGINT, then finishes what \
                 it holds and exits 0. `{name} --interface` prints the JSON Schemas of the \
                 messages it reads and writes (docs/CONTRACT.md, asyncapi.yaml).",
                env!("CARGO_PKG_VERSION")
            );
            Some(ExitCode::SUCCESS)
        }
        Some("--interface") if args.len() == 1 => {
            match serde_json::to_string_pretty(&interface()) {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    telemetry::report(format_args!("{name}: cannot print its interface: {e}"));
                    return Some(ExitCode::FAILURE);
                }
            }
            Some(ExitCode::SUCCESS)
        }
        Some(_) => {
            telemetry::report(format_args!(
                "{name}: takes no arguments, got `{}` (its configuration is its environment; see --help)",
                args.join(" ")
            ));
            Some(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// One line on stderr (and in the logs), exit 64.
fn refused(name: &str, e: &StartError) -> ExitCode {
    telemetry::report(format_args!("{name}: {e}"));
    ExitCode::from(EXIT_CONFIG)
}
