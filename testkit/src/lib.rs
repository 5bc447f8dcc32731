//! The one helper every integration test uses, in the way of zero2prod's `spawn_app`.
//!
//! [`TestEnv::new`] gives a test its own `WALLET_NAMESPACE`, its own PostgreSQL database (set up
//! by `walletctl setup`'s code, so migrations and streams are the real ones) on the shared
//! NATS, PostgreSQL and Redis. [`TestEnv::spawn`] starts a real function binary against it.
//! Dropping the env kills what it started and removes the streams, the database and the Redis
//! keys. Waits are bounded polls ([`eventually`]); nothing sleeps and hopes.

#![allow(clippy::unwrap_used)] // A test helper: a failure here is a failed test.

mod certs;
pub mod commands;
mod env;
mod process;
mod reader;
pub mod schemas;
mod servers;

use std::time::{Duration, Instant};

use wallet_runtime::streams::Topology;

pub use certs::TestCerts;
pub use env::TestEnv;
pub use process::{Proc, binary, free_port, http_get};
pub use reader::{Reader, Received, completed};
pub use servers::{
    PrivateCluster, PrivateNats, PrivatePostgres, PrivateRedis, pinned_nats_server, stream_seqs,
};

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}
/// The server tests create their databases on (its path is replaced by each test's database).
pub fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The streams file of a test: the built-in one, and the streams of the crate under test when it
/// carries a `tests/streams.toml` (a function no deployment runs, whose stream exists only in
/// tests: the runtime's probe, the scaffold's template).
pub fn streams_text() -> String {
    let own = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(|dir| std::path::PathBuf::from(dir).join("tests/streams.toml"))
        .and_then(|path| std::fs::read_to_string(path).ok());
    let built_in = wallet_runtime::streams::BUILT_IN;
    match own {
        Some(own) => format!("{built_in}\n{own}"),
        None => built_in.to_owned(),
    }
}

/// The built-in topology with small streams: JetStream reserves `max_bytes` up front, and many
/// test namespaces live at once.
pub fn topology() -> Topology {
    topology_of(&streams_text())
}

/// The topology of a streams file's `text`, with small streams as [`topology`]'s.
pub fn topology_of(text: &str) -> Topology {
    let mut topology = Topology::parse(text).unwrap();
    for s in &mut topology.streams {
        s.max_bytes = 64 << 20;
    }
    topology
}

/// Streams file `text` with `function`'s consumer not `sharded`: how a function added without
/// proof that it may run on several shards is deployed (docs/sharding.md), for the tests of
/// what happens to such a function when every function of the repository is sharded.
pub fn unsharded(text: &str, function: &str) -> String {
    let start = text
        .find(&format!("function = \"{function}\""))
        .unwrap_or_else(|| panic!("no consumer of {function}"));
    let end = text[start..].find("[[").map_or(text.len(), |i| start + i);
    let block = text[start..end].replace("sharded = true\n", "");
    assert_ne!(block, text[start..end], "{function} is not sharded");
    format!("{}{block}{}", &text[..start], &text[end..])
}

/// A fresh `WALLET_NAMESPACE` for one test.
pub fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
