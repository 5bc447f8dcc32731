//! [`TestEnv`]: one test's namespace, database and processes, removed when it is dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use serde_json::Value;
use wallet_runtime::Config;
use wallet_runtime::streams::Topology;

use crate::{
    Proc, Reader, binary, commands, eventually, free_port, http_get, namespace, nats_url,
    postgres_server, redis_url,
};

#[derive(Debug)]
pub struct TestEnv {
    pub config: Config,
    pub ns: String,
    pub db_name: String,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    /// What [`TestEnv::with_env`] was given, for the binaries it spawns.
    extra: Vec<(String, String)>,
    /// The streams file's text: the built-in one (with the test crate's own), or `STREAMS_FILE`'s.
    streams: String,
    procs: Mutex<Vec<u32>>,
}

impl TestEnv {
    /// A fresh namespace and database, set up with the built-in streams.toml.
    pub async fn new() -> Self {
        Self::with_env(&[]).await
    }

    /// Like [`TestEnv::new`], with extra configuration for the env and the binaries it spawns.
    pub async fn with_env(extra: &[(&str, &str)]) -> Self {
        Self::in_namespace(namespace(), extra).await
    }

    /// An env with `deposit` and `functions` running with `extra`, and `users` users (`u-0`, …)
    /// funded with `funds` USD each; a reader of its events, which has read the deposits.
    pub async fn funded(
        functions: &[&str],
        extra: &[(&str, &str)],
        users: usize,
        funds: &str,
    ) -> (Self, Reader, Vec<Proc>) {
        let env = Self::with_env(extra).await;
        let procs = std::iter::once("deposit")
            .chain(functions.iter().copied())
            .map(|f| env.spawn(f, extra))
            .collect();
        let mut events = env.events().await;
        let deposits = (0..users)
            .map(|u| commands::deposit(&format!("d-{u}"), &format!("u-{u}"), funds, "USD"))
            .collect();
        env.run_commands(&mut events, "deposit", deposits).await;
        (env, events, procs)
    }

    /// Like [`TestEnv::with_env`], in the namespace `ns` (from [`namespace`]): for a test that
    /// must configure a server for the namespace before the env exists.
    pub async fn in_namespace(ns: String, extra: &[(&str, &str)]) -> Self {
        let db_name = format!("wallet_test_{ns}");
        let mut vars: HashMap<String, String> = HashMap::from([
            ("NATS_URL".into(), nats_url()),
            ("REDIS_URL".into(), redis_url()),
            (
                "DATABASE_URL".into(),
                format!("{}/{db_name}", postgres_server()),
            ),
            ("WALLET_NAMESPACE".into(), ns.clone()),
        ]);
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
        let given = vars.get("STREAMS_FILE");
        let streams = given.map_or_else(crate::streams_text, |path| {
            std::fs::read_to_string(path).unwrap()
        });
        let mut topology = crate::topology_of(&streams);
        // As `walletctl setup` reads it: a cluster's streams are replicated.
        if let Some(r) = vars.get("STREAM_REPLICAS") {
            let r = r.parse().expect("STREAM_REPLICAS is a number");
            topology.streams.iter_mut().for_each(|s| s.replicas = r);
        }
        wallet_ops::setup::setup(&config, &topology).await.unwrap();
        let nats = wallet_ops::nats(&config).await.unwrap();
        let js = jetstream::new(nats.clone());
        let own = given.is_none() && streams != wallet_runtime::streams::BUILT_IN;
        let mut env = Self {
            config,
            ns,
            db_name,
            nats,
            js,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            procs: Mutex::new(Vec::new()),
            streams,
        };
        // A crate with streams of its own: its binaries read them from a file.
        if own {
            let streams = &env.streams;
            let path = env.streams_file();
            std::fs::write(&path, streams).unwrap();
            env.extra
                .insert(0, ("STREAMS_FILE".into(), path.display().to_string()));
        }
        env
    }

    /// A streams file for this test's binaries (`STREAMS_FILE`): the built-in one with every
    /// consumer's `dead_letter_after` set to `n`; removed with the env.
    pub fn streams_file_dead_letter_after(&self, n: i64) -> String {
        self.streams_file_with("dead_letter_after", n)
    }

    /// A streams file for a `walletctl` that creates streams: [`crate::topology`]'s small ones
    /// (as `setup` makes them here), not the built-in file's, whose `max_bytes` JetStream would
    /// reserve on a disk that many tests share. Removed with the env.
    pub fn streams_file_small(&self) -> String {
        self.streams_file_with("max_bytes", crate::topology().streams[0].max_bytes)
    }

    /// The built-in streams file with every `key` set to `value`, written for this env.
    fn streams_file_with(&self, key: &str, value: i64) -> String {
        let text = self
            .streams
            .lines()
            .map(|l| {
                if l.starts_with(key) {
                    format!("{key} = {value}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = self.streams_file();
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn streams_file(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}.streams.toml", self.ns))
    }

    /// The environment a binary of this test runs with.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("NATS_URL".into(), self.config.nats_url.clone()),
            ("DATABASE_URL".into(), self.config.database_url.clone()),
            ("REDIS_URL".into(), self.config.redis_url.clone()),
            ("WALLET_NAMESPACE".into(), self.ns.clone()),
            (
                "RUST_LOG".into(),
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ),
            ("SHUTDOWN_GRACE".into(), "10s".into()),
        ]
        .into_iter()
        .chain(self.extra.iter().cloned())
        .collect()
    }

    /// Starts the workspace binary `name` with this env (plus `extra`), on a free HTTP port.
    pub fn spawn(&self, name: &str, extra: &[(&str, &str)]) -> Proc {
        self.spawn_args(name, &[], extra)
    }

    /// [`TestEnv::spawn`] with its stdout and stderr written to `log` (a file it creates).
    pub fn spawn_logged(&self, name: &str, extra: &[(&str, &str)], log: &std::path::Path) -> Proc {
        let out = std::fs::File::create(log).unwrap();
        self.spawn_with(name, &[], extra, Some(out))
    }

    /// [`TestEnv::spawn`] with command-line arguments (`walletctl provider-sim …`).
    pub fn spawn_args(&self, name: &str, args: &[&str], extra: &[(&str, &str)]) -> Proc {
        self.spawn_with(name, args, extra, None)
    }

    fn spawn_with(
        &self,
        name: &str,
        args: &[&str],
        extra: &[(&str, &str)],
        log: Option<std::fs::File>,
    ) -> Proc {
        let http = free_port();
        let mut cmd = Command::new(binary(name));
        cmd.args(args);
        cmd.envs(self.env())
            .env("HTTP_ADDR", format!("127.0.0.1:{http}"));
        // Every function runs as its own role, so that every test also proves its grants.
        if wallet_ops::catalog::names().iter().any(|f| f == name) {
            cmd.env(
                "DATABASE_URL",
                self.database_url_as(&wallet_ops::setup::role(name)),
            );
        }
        cmd.envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        cmd.stdin(Stdio::null());
        if let Some(out) = log {
            cmd.stdout(out.try_clone().unwrap()).stderr(out);
        }
        let child = cmd.spawn().unwrap();
        self.procs.lock().unwrap().push(child.id());
        Proc { child, http }
    }

    /// This test's database URL with another user (trust authentication on the test server).
    pub fn database_url_as(&self, role: &str) -> String {
        let url = &self.config.database_url;
        let (scheme, rest) = url.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{role}@{host}")
    }

    /// Waits until the process answers `/readyz` with 200; panics at once if it exited.
    pub async fn ready(&self, p: &Proc) {
        eventually(Duration::from_secs(30), "/readyz", || async {
            assert!(
                p.running(),
                "process {} exited before it was ready (its stderr is above)",
                p.child.id()
            );
            matches!(http_get(p.http, "/readyz").await, Some((200, _))).then_some(())
        })
        .await;
    }

    /// How many messages the test's stream `stream` (without the namespace) holds.
    pub async fn stored(&self, stream: &str) -> u64 {
        let mut s = self
            .js
            .get_stream(self.config.names.name(stream))
            .await
            .unwrap();
        s.info().await.unwrap().state.messages
    }

    /// Waits (bounded) until the test's stream `stream` holds no message: a work queue's command
    /// leaves it when settled, a moment after its outcome is visible.
    pub async fn emptied(&self, stream: &str) {
        eventually(Duration::from_secs(60), "the stream to empty", || async {
            (self.stored(stream).await == 0).then_some(())
        })
        .await;
    }

    pub fn subject(&self, s: &str) -> String {
        self.config.names.subject(s)
    }

    /// Publishes a command with `Nats-Msg-Id: msg_id`; returns once JetStream stored it.
    pub async fn publish(&self, subject: &str, msg_id: &str, payload: impl Into<Bytes>) {
        self.publish_with(subject, &[("Nats-Msg-Id", msg_id)], payload)
            .await;
    }

    /// Publishes with these headers; returns once JetStream stored it.
    pub async fn publish_with(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: impl Into<Bytes>,
    ) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        self.js
            .publish_with_headers(self.subject(subject), h, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes many commands as `walletctl load` does: (subject, msg id, payload).
    pub async fn publish_many(&self, msgs: Vec<(String, String, Vec<u8>)>) {
        let namespaced = msgs
            .into_iter()
            .map(|(subject, id, payload)| (self.subject(&subject), id, payload));
        wallet_client::publish_all(&self.js, namespaced)
            .await
            .unwrap();
    }

    /// A reader of this namespace's outcome events, from the first.
    pub async fn events(&self) -> Reader {
        self.reader("WALLET_EVENTS", "wallet.events.>").await
    }

    /// A reader of this namespace's dead letters, from the first.
    pub async fn dead_letters(&self) -> Reader {
        self.reader("DLQ", "dlq.>").await
    }

    /// A reader of what the platform asks providers (transfer requests and status queries).
    pub async fn provider_requests(&self) -> Reader {
        self.reader("PROVIDER_REQUESTS", "provider.>").await
    }

    /// Publishes `msgs` and waits for an outcome event of each (`Nats-Msg-Id` `<entity>:<id>:…`).
    pub async fn run_commands(&self, events: &mut Reader, entity: &str, msgs: Vec<commands::Msg>) {
        let ids: std::collections::HashSet<String> = msgs
            .iter()
            .map(|(_, id, _)| format!("{entity}:{id}"))
            .collect();
        self.publish_many(msgs).await;
        events
            .until(
                Duration::from_secs(120),
                "the commands' outcome events",
                |seen| {
                    let done: std::collections::HashSet<&str> = seen
                        .iter()
                        .filter_map(|r| ids.get(r.msg_id.rsplit_once(':')?.0))
                        .map(String::as_str)
                        .collect();
                    done.len() == ids.len()
                },
            )
            .await;
    }

    /// A reader of this namespace's `stream` (its name without the namespace), from the first
    /// message on `filter` (a subject without the namespace).
    pub async fn reader(&self, stream: &str, filter: &str) -> Reader {
        Reader::start(self, stream, filter).await
    }

    /// Waits until `function`'s consumer has nothing pending or unacknowledged.
    pub async fn drained(&self, function: &str) {
        let stream = Topology::load(None)
            .unwrap()
            .consumer(function)
            .unwrap()
            .stream
            .clone();
        let consumer: consumer::PullConsumer = self
            .js
            .get_stream(self.config.names.name(&stream))
            .await
            .unwrap()
            .get_consumer(&self.config.names.name(function))
            .await
            .unwrap();
        eventually(Duration::from_secs(60), "the consumer drained", || {
            let mut c = consumer.clone();
            async move {
                let info = c.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        })
        .await;
    }

    /// Asks the balance function for `user`'s wallets.
    pub async fn balance(&self, user: &str) -> Value {
        let req = serde_json::to_vec(&serde_json::json!({ "user_id": user })).unwrap();
        let reply = self
            .nats
            .request(
                self.subject(&wallet_runtime::partition::subject(
                    "wallet.balance.get",
                    user,
                )),
                req.into(),
            )
            .await
            .unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    }

    /// A connection to this test's database.
    /// Recreates the database, migrated up to `version` only: as an earlier version of the
    /// project left it, for a test of the migrations after it ([`TestEnv::setup`] runs them).
    pub async fn database_at(&self, version: i32) {
        let (admin, conn) = tokio_postgres::connect(
            &format!("{}/postgres", postgres_server()),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let db = &self.db_name;
        for sql in [
            format!("DROP DATABASE \"{db}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{db}\""),
        ] {
            admin.batch_execute(&sql).await.unwrap();
        }
        wallet_runtime::db::migrate_to(&self.config, version)
            .await
            .unwrap();
    }

    /// `walletctl setup` again: the migrations not yet applied, the roles, the streams.
    pub async fn setup(&self) -> Vec<String> {
        wallet_ops::setup::setup(&self.config, &crate::topology_of(&self.streams))
            .await
            .unwrap()
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.config.database_url, tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        client
    }

    /// The balance PostgreSQL holds for a user's wallet ("0" when it has none).
    pub async fn stored_balance(
        &self,
        user: &str,
        kind: &str,
        currency: &str,
    ) -> rust_decimal::Decimal {
        self.pg()
            .await
            .query_opt(
                "SELECT balance FROM accounts WHERE owner = $1 AND kind = $2 AND currency = $3",
                &[&user, &kind, &currency],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
            .unwrap_or_default()
    }

    /// A platform account's balance (`game-results:alpha`): the sum of its postings, which is
    /// all a platform account keeps (it is written once per batch, not per command).
    pub async fn platform_balance(&self, purpose: &str, currency: &str) -> rust_decimal::Decimal {
        self.pg()
            .await
            .query_one(
                "SELECT coalesce(sum(p.amount), 0) FROM postings p JOIN accounts a ON (a.partition, a.id) = (p.partition, p.account_id)
                 WHERE a.kind = 'platform' AND a.provider = $1 AND a.currency = $2",
                &[&purpose, &currency],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The raw cache entry (`<version>|<balance>`) of a user's wallet field (`main:USD`).
    pub async fn cached(&self, user: &str, field: &str) -> Option<String> {
        self.on_cached_hash("HGET", user, Some(field)).await
    }

    /// `command` on `user`'s balance hash (and `field`), straight to Redis.
    async fn on_cached_hash<T: redis::FromRedisValue>(
        &self,
        command: &str,
        user: &str,
        field: Option<&str>,
    ) -> T {
        let client = wallet_runtime::cache::client(&self.config).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd(command)
            .arg(self.config.names.redis_key(&format!("bal:{user}")))
            .arg(field)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// The balance cache of this test's namespace, as the functions use it.
    pub async fn cache(&self) -> wallet_runtime::cache::BalanceCache {
        let client = wallet_runtime::cache::client(&self.config).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        wallet_runtime::cache::BalanceCache::new(conn, self.config.names.clone())
    }

    /// Makes the balance cache hold `user` (as a balance read that filled it before the user had
    /// a wallet), so that the functions' write-throughs have a hash to update.
    pub async fn cache_holds(&self, user: &str) {
        let cache = self.cache().await;
        let ticket = cache.begin_fill(user).await.unwrap();
        assert!(cache.fill(user, &ticket, &[]).await.unwrap());
    }

    /// Removes `user`'s balance hash: their next balance read is PostgreSQL's.
    pub async fn uncache(&self, user: &str) {
        let _: i64 = self.on_cached_hash("DEL", user, None).await;
    }

    /// The seconds to live of `user`'s balance hash (-2: no hash; -1: one without a TTL).
    pub async fn cached_ttl(&self, user: &str) -> i64 {
        self.on_cached_hash("TTL", user, None).await
    }

    /// `walletctl audit` on this namespace.
    pub async fn audit(&self) -> wallet_ops::audit::Report {
        wallet_ops::audit::audit(&self.config).await.unwrap()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for pid in self.procs.lock().unwrap().drain(..) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = std::fs::remove_file(self.streams_file());
        let config = self.config.clone();
        let topology = crate::topology_of(&self.streams);
        // Drop cannot await: clean up on a thread of its own with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // The test crate's own streams too (the runtime's PROBES): the built-in file
                // alone left one stream behind per probe test on the shared server.
                if let Err(e) = wallet_ops::teardown::teardown(&config, &topology).await {
                    eprintln!("test cleanup: {e:#}");
                }
            });
        });
        let _ = cleanup.join();
    }
}
