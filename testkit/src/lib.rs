//! The one helper every integration test uses, in the way of zero2prod's `spawn_app`.
//!
//! [`TestEnv::new`] gives a test its own `WALLET_NAMESPACE`, its own PostgreSQL database (set up
//! by `walletctl setup`'s code, so migrations and streams are the real ones) on the shared
//! NATS, PostgreSQL and Redis. [`TestEnv::spawn`] starts a real function binary against it.
//! Dropping the env kills what it started and removes the streams, the database and the Redis
//! keys. Waits are bounded polls ([`eventually`]); nothing sleeps and hopes.

#![allow(clippy::unwrap_used)] // A test helper: a failure here is a failed test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use wallet_runtime::Config;
use wallet_runtime::streams::Topology;

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

/// The built-in topology with small streams: JetStream reserves `max_bytes` up front, and many
/// test namespaces live at once.
pub fn topology() -> Topology {
    let mut topology = Topology::load(None).unwrap();
    for s in &mut topology.streams {
        s.max_bytes = 64 << 20;
    }
    topology
}

/// A free TCP port on 127.0.0.1, for a server a test starts.
///
/// Drawn at random below the kernel's ephemeral range (32768 and up), and free when drawn. A
/// port the kernel hands out (`bind` to port 0, which this used) could be handed out again to
/// another test's process before the server started here bound it: the server then exited with
/// "address in use" while the other process answered its `/readyz` (a CI run saw a mixed
/// load run whose bonus-grant never started).
pub fn free_port() -> u16 {
    loop {
        let port = rand::random_range(10_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A binary of this workspace, built by `cargo build` next to the test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap(); // target/<profile>/deps/.. 
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (make test does)",
        path.display()
    );
    path
}

/// A function process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub http: u16,
}

impl Proc {
    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has not exited (without reaping it: its exit status stays for `wait`).
    pub fn running(&self) -> bool {
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        matches!(
            waitid(
                Id::Pid(nix::unistd::Pid::from_raw(self.child.id() as i32)),
                flags
            ),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// Sends `sig` and waits up to `limit` for the exit status.
    pub async fn signal_and_wait(
        &mut self,
        sig: nix::sys::signal::Signal,
        limit: Duration,
    ) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
        eventually(limit, "the process to exit", || {
            let status = self.child.try_wait().unwrap();
            async move { status }
        })
        .await
    }

    pub async fn metrics(&self) -> String {
        http_get(self.http, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Its counters and gauges (no histograms), for a failing test to show what the process did.
    pub async fn counters(&self) -> String {
        self.metrics()
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket{") && !l.contains("quantile="))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The value of a counter or gauge summed over its label sets (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A minimal HTTP/1.0 GET: (status, body).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A certificate authority of a test's own and a server certificate for 127.0.0.1 and
/// localhost that it signs, as PEM files in a folder (made with `openssl`).
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// What a client must trust.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    pub fn issue(dir: &std::path::Path) -> Self {
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let (ca, ca_key, csr, crt, key, ext) = (
            path("ca.crt"),
            path("ca.key"),
            path("server.csr"),
            path("server.crt"),
            path("server.key"),
            path("server.ext"),
        );
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let days = ["-days", "1"];
        let new_key = ["-newkey", "rsa:2048", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &new_key,
                &days,
                &["-subj", "/CN=test-ca", "-keyout", &ca_key, "-out", &ca],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &new_key,
                &["-subj", "/CN=localhost", "-keyout", &key, "-out", &csr],
            ]
            .concat(),
        );
        openssl(
            &[
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                ][..],
                &days,
                &["-extfile", &ext, "-out", &crt],
            ]
            .concat(),
        );
        Self {
            ca: ca.into(),
            cert: crt.into(),
            key: key.into(),
        }
    }
}

/// A Redis server of the test's own, on a free port, for tests that must stop one.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    password: Option<String>,
    /// TLS only, with these certificates (in a folder removed on drop).
    tls: Option<TestCerts>,
    child: Mutex<Option<Child>>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// One that requires `AUTH password`.
    pub fn with_password(password: &str) -> Self {
        Self::start_with(Some(password.to_owned()))
    }

    /// One that accepts TLS connections only (`rediss://`), with a certificate for 127.0.0.1
    /// signed by a CA of its own: [`PrivateRedis::ca`] is what a client must trust.
    pub fn tls_only() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("redis-tls-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Self {
            port,
            password: None,
            tls: Some(TestCerts::issue(&dir)),
            child: Mutex::new(None),
        };
        r.restart();
        r
    }

    fn start_with(password: Option<String>) -> Self {
        let r = Self {
            port: free_port(),
            password,
            tls: None,
            child: Mutex::new(None),
        };
        r.restart();
        r
    }

    /// The CA a client must trust, for one started with [`PrivateRedis::tls_only`].
    pub fn ca(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// (Re)starts it empty on the same port and waits until it accepts connections.
    pub fn restart(&self) {
        let port = self.port.to_string();
        let listen: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port],
            Some(t) => [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-auth-clients",
                "no",
                "--tls-cert-file",
                t.cert.to_str().unwrap(),
                "--tls-key-file",
                t.key.to_str().unwrap(),
                "--tls-ca-cert-file",
                t.ca.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec(),
        };
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--requirepass".to_owned(), p.clone()]),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL): connections drop, data is gone.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.tls.as_ref().and_then(|t| t.ca.parent()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A NATS server with JetStream of the test's own (its port, its store folder), for tests that
/// restart one.
#[derive(Debug)]
pub struct PrivateNats {
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl PrivateNats {
    pub fn start() -> Self {
        Self::with_config(|_| String::new())
    }

    /// One started with a configuration file: `conf` is given the server's folder (for
    /// certificates) and returns the file's text (`tls { … }`, `authorization { … }`).
    pub fn with_config(conf: impl FnOnce(&std::path::Path) -> String) -> Self {
        let dir = std::env::temp_dir().join(format!("nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nats.conf"), conf(&dir)).unwrap();
        let n = Self {
            port: free_port(),
            dir,
            child: Mutex::new(None),
        };
        n.start_again();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it on the same port and store folder; waits until it accepts connections.
    pub fn start_again(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new("nats-server")
            .args(["-c", self.dir.join("nats.conf").to_str().unwrap()])
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js"])
            .args(["-sd", self.dir.join("store").to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (a clean shutdown: JetStream flushes its store) and waits for the exit.
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL server of the test's own (initdb into a temporary folder, its own port), for
/// tests that must stop one or configure it. Runs as the `postgres` user when the test is root.
#[derive(Debug)]
pub struct PrivatePostgres {
    pub port: u16,
    pub dir: PathBuf,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn as_postgres(program: &str, args: &[&str]) -> Command {
    let path = format!("{PG_BIN}/{program}");
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]).args(args);
        c
    } else {
        let mut c = Command::new(path);
        c.args(args);
        c
    }
}

impl PrivatePostgres {
    /// A new cluster (trust authentication) with `conf` lines appended to postgresql.conf and,
    /// when given, `hba` as its whole pg_hba.conf; started.
    pub fn start(conf: &[String], hba: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!("pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if nix::unistd::geteuid().is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.join("data");
        let out = as_postgres(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ],
        )
        .stdout(Stdio::null())
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Self {
            port: free_port(),
            dir,
        };
        let mut lines = vec![
            format!("port = {}", pg.port),
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", pg.dir.display()),
        ];
        lines.extend(conf.iter().cloned());
        pg.configure(&lines);
        if let Some(hba) = hba {
            std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        }
        pg.start_again();
        pg
    }

    /// One that accepts TLS connections only, with a certificate for 127.0.0.1 signed by a CA
    /// of its own; returns it and that CA's certificate (what a client must trust).
    pub fn tls_only() -> (Self, PathBuf) {
        let pg = Self::start(
            &[],
            Some("hostssl all all 127.0.0.1/32 trust\nlocal all all trust\n"),
        );
        pg.stop();
        let certs = TestCerts::issue(&pg.dir);
        for (name, mode) in [("server.key", 0o600), ("server.crt", 0o644)] {
            let contents = std::fs::read(pg.dir.join(name)).unwrap();
            pg.write_file(name, &contents, mode);
        }
        pg.configure(&[
            "ssl = on".to_owned(),
            format!("ssl_cert_file = '{}'", certs.cert.display()),
            format!("ssl_key_file = '{}'", certs.key.display()),
        ]);
        pg.start_again();
        (pg, certs.ca)
    }

    fn configure(&self, lines: &[String]) {
        let conf_path = self.dir.join("data").join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&format!("\n{}\n", lines.join("\n")));
        std::fs::write(&conf_path, text).unwrap();
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = as_postgres("pg_ctl", &all).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A file in its folder, readable by the server.
    pub fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        if nix::unistd::geteuid().is_root() {
            Command::new("chown")
                .args(["postgres:postgres", path.to_str().unwrap()])
                .status()
                .unwrap();
        }
        path
    }

    /// `pg_ctl stop -m immediate`: a crash, as far as the data is concerned.
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }

    pub fn start_again(&self) {
        self.pg_ctl(&["start", "-w", "-l", self.dir.join("log").to_str().unwrap()]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "stop", "-m", "immediate"],
        )
        .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An event as a test sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub subject: String,
    pub msg_id: String,
    pub headers: HeaderMap,
    /// The payload as published.
    pub payload: Bytes,
    /// The payload parsed as JSON, or as a string when it is not JSON.
    pub body: Value,
}

impl Received {
    /// The event's body without its `at` time (which no test can predict); panics when it has none.
    pub fn without_at(&self) -> Value {
        let mut body = self.body.clone();
        body.as_object_mut().unwrap().remove("at").unwrap();
        body
    }

    /// A header's value; panics when it is missing.
    pub fn header(&self, name: &str) -> String {
        match self.headers.get(name) {
            Some(v) => v.as_str().to_owned(),
            None => panic!("no {name} header on {}", self.msg_id),
        }
    }
}

/// A fresh `WALLET_NAMESPACE` for one test.
pub fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[derive(Debug)]
pub struct TestEnv {
    pub config: Config,
    pub ns: String,
    pub db_name: String,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    /// What [`TestEnv::with_env`] was given, for the binaries it spawns.
    extra: Vec<(String, String)>,
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
        wallet_ops::setup::setup(&config, &topology()).await.unwrap();
        let nats = wallet_ops::nats(&config).await.unwrap();
        let js = jetstream::new(nats.clone());
        Self {
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
        }
    }

    /// A streams file for this test's binaries (`STREAMS_FILE`): the built-in one with every
    /// consumer's `dead_letter_after` set to `n`; removed with the env.
    pub fn streams_file_dead_letter_after(&self, n: i64) -> String {
        let text = wallet_runtime::streams::BUILT_IN
            .lines()
            .map(|l| {
                if l.starts_with("dead_letter_after") {
                    format!("dead_letter_after = {n}")
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

    async fn reader(&self, stream: &str, filter: &str) -> Reader {
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
            .request(self.subject("wallet.balance.get"), req.into())
            .await
            .unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    }

    /// A connection to this test's database.
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

    /// The seconds to live of `user`'s balance hash (-2: no hash; -1: one without a TTL).
    pub async fn cached_ttl(&self, user: &str) -> i64 {
        self.on_cached_hash("TTL", user, None).await
    }

    /// `walletctl audit` on this namespace.
    pub async fn audit(&self) -> wallet_ops::audit::Report {
        wallet_ops::audit::audit(&self.config).await.unwrap()
    }
}

/// Commands as (subject, `Nats-Msg-Id`, payload), for [`TestEnv::publish_many`].
pub mod commands {
    use serde_json::json;

    pub type Msg = (String, String, Vec<u8>);

    fn msg(subject: &str, id: &str, body: serde_json::Value) -> Msg {
        (
            subject.into(),
            id.into(),
            serde_json::to_vec(&body).unwrap(),
        )
    }

    pub fn deposit(id: &str, user: &str, amount: &str, currency: &str) -> Msg {
        msg(
            "wallet.deposit",
            id,
            json!({"deposit_id": id, "user_id": user, "amount": amount, "currency": currency}),
        )
    }

    pub fn transfer(id: &str, user: &str, provider: &str, amount: &str, currency: &str) -> Msg {
        msg(
            "wallet.transfer-out",
            id,
            json!({"transfer_id": id, "user_id": user, "provider": provider,
                   "amount": amount, "currency": currency}),
        )
    }

    pub fn grant(id: &str, campaign: &str, user: &str) -> Msg {
        msg(
            "bonus.grant",
            id,
            json!({"grant_id": id, "campaign_id": campaign, "user_id": user}),
        )
    }

    /// A provider's ack, with the adapters' `Nats-Msg-Id` (`<provider>:<transfer>:<status>`).
    pub fn ack(provider: &str, transfer: &str, status: &str) -> Msg {
        msg(
            &format!("provider.{provider}.ack"),
            &format!("{provider}:{transfer}:{status}"),
            json!({"transfer_id": transfer, "status": status, "provider_ref": format!("ref-{transfer}")}),
        )
    }
}

/// Reads a stream in order and keeps everything it read.
///
/// A task of its own reads on while the test does something else: JetStream deletes an ordered
/// consumer nobody has pulled from for 30 s, and async-nats then recreates it only after two
/// missed heartbeats, so a reader left alone during a long wait used to come back a minute late.
pub struct Reader {
    incoming: tokio::sync::mpsc::UnboundedReceiver<jetstream::Message>,
    task: tokio::task::JoinHandle<()>,
    pub seen: Vec<Received>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("seen", &self.seen.len())
            .finish()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reader {
    async fn start(env: &TestEnv, stream: &str, filter: &str) -> Self {
        let mut followed = wallet_client::follow(
            &env.js,
            &env.config.names,
            stream,
            filter,
            consumer::DeliverPolicy::All,
        )
        .await
        .unwrap();
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        let stream = stream.to_owned();
        let task = tokio::spawn(async move {
            while let Some(m) = followed.next().await {
                match m {
                    Ok(m) => {
                        if tx.send(m).is_err() {
                            return;
                        }
                    }
                    // A lost connection or a restarted server: it recreates itself and reads on.
                    Err(e) => {
                        eprintln!("reader of {stream}: {e}; reading on");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Self {
            incoming,
            task,
            seen: Vec::new(),
        }
    }

    /// Reads until `done(seen)` holds, or panics after `limit`.
    pub async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> &[Received] {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(m)) => self.keep(m),
                Ok(None) => panic!("the reader's stream ended while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {limit:?} waiting for {what}; read {} message(s)",
                    self.seen.len()
                ),
            }
        }
        &self.seen
    }

    /// Reads whatever arrives within `d`.
    pub async fn read_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.incoming.recv()).await {
            self.keep(m);
        }
    }

    fn keep(&mut self, m: jetstream::Message) {
        let headers = m.headers.clone().unwrap_or_default();
        let msg_id = headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let body = serde_json::from_slice(&m.payload)
            .unwrap_or(Value::String(String::from_utf8_lossy(&m.payload).into()));
        self.seen.push(Received {
            subject: m.subject.to_string(),
            msg_id,
            headers,
            payload: m.payload.clone(),
            body,
        });
    }

    /// Reads until `n` messages are in.
    pub async fn count(&mut self, n: usize, limit: Duration) -> &[Received] {
        self.until(limit, &format!("{n} messages"), |s| s.len() >= n)
            .await
    }

    /// The message with this `Nats-Msg-Id`, reading until it comes.
    pub async fn by_id(&mut self, msg_id: &str, limit: Duration) -> Received {
        self.until(limit, msg_id, |s| s.iter().any(|r| r.msg_id == msg_id))
            .await;
        self.seen
            .iter()
            .find(|r| r.msg_id == msg_id)
            .cloned()
            .unwrap()
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
        // Drop cannot await: clean up on a thread of its own with a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let topology = Topology::load(None).unwrap();
                if let Err(e) = wallet_ops::teardown::teardown(&config, &topology).await {
                    eprintln!("test cleanup: {e:#}");
                }
            });
        });
        let _ = cleanup.join();
    }
}
