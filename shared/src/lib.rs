//! The runtime every wallet function links.
//!
//! A function crate holds only its payload, its rules and its SQL: it implements
//! [`Function`] (JetStream commands) or [`Responder`] (request-reply) and its `main` calls
//! [`run`] or [`serve`]. This crate owns the rest: configuration, connections, the
//! fetch/decide/commit/acknowledge loop ([`batch`]), dedup, the ledger, the outbox and its relay,
//! the balance cache, dead letters, retries, shutdown, health and metrics.

pub mod answer;
#[cfg(test)]
mod arbitrary;
pub mod batch;
pub mod cache;
pub mod config;
pub mod context;
pub mod credit;
pub mod db;
pub mod dedup;
pub mod dlq;
pub mod error;
pub mod events;
pub mod function;
pub mod http;
pub mod ids;
pub mod interface;
pub mod ledger;
pub mod metrics;
pub mod money;
pub mod names;
pub mod nats_auth;
pub mod outbox;
pub mod partition;
pub mod runtime;
pub mod saga;
pub mod shards;
pub mod streams;
pub mod sweeper;
pub mod telemetry;
pub mod text;
pub mod trace;
pub mod transfers;
pub mod wallet;

/// The allocator every function binary installs (`#[global_allocator]` in its `main.rs`; the
/// CLI, the tools and the test binaries keep the system's). A batch allocates and frees
/// thousands of small, short-lived values (messages, keys, events, statement parameters) across
/// the runtime's threads; under glibc's malloc that was a third of the `deposit` process's CPU
/// (`_int_malloc`, `unlink_chunk`, `malloc_consolidate`). Measured in `deposit-max`: the
/// process's CPU and the run's time both fell by about a sixth, peak RSS 35 → 42 MiB.
/// (mimalloc, tried first, saved little here and took RSS past 80 MiB.) Its options are built
/// in (`.cargo/config.toml`).
pub use tikv_jemallocator::Jemalloc as Allocator;

pub use config::Config;
pub use context::Context;
pub use error::StepError;
pub use events::{Event, Reason, Status};
pub use function::{Command, Function, Invalid, Outcome, Payload, Screened};
pub use runtime::{Responder, run, serve};
pub use tokio_util::sync::CancellationToken;
