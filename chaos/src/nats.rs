//! The NATS side of a run: one server behind a proxy (the dev stack's shape), or the production
//! shape, a 3-node cluster of the pinned nats-server (`nats/cluster.conf`: fsync on every write,
//! R3 streams) with a proxy in front of each node's clients and one on each route from one node
//! to another, so that a node can be cut off from the other two and from the clients while it
//! keeps running, as a network partition does.

use std::net::SocketAddr;
use std::time::Duration;

use testkit::{PrivateCluster, PrivateNats};

use crate::proxy::Proxy;

pub(crate) enum Nats {
    One {
        server: PrivateNats,
        proxy: Proxy,
    },
    Cluster {
        cluster: PrivateCluster,
        /// One per node, in front of its client port.
        clients: Vec<Proxy>,
        /// `(from, to, proxy)`: node `from` dials node `to`'s route port through `proxy`.
        routes: Vec<(usize, usize, Proxy)>,
    },
}

/// How long a rolling restart waits for a restarted node to be current before the next.
const HEALTHY_WITHIN: Duration = Duration::from_secs(120);

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Nats {
    /// One server (`nodes` 1) or a cluster of three, with their proxies.
    pub(crate) async fn start(nodes: usize) -> anyhow::Result<Self> {
        match nodes {
            1 => {
                let server = PrivateNats::start();
                let proxy = Proxy::start(local(server.port)).await?;
                Ok(Self::One { server, proxy })
            }
            3 => {
                let mut cluster = PrivateCluster::new();
                let mut routes = Vec::new();
                for from in 0..3 {
                    for to in (0..3).filter(|&to| to != from) {
                        let proxy = Proxy::start(local(cluster.cluster_port(to))).await?;
                        cluster.route_through(from, to, proxy.port);
                        routes.push((from, to, proxy));
                    }
                }
                let mut clients = Vec::new();
                for i in 0..3 {
                    clients.push(Proxy::start(local(cluster.client_port(i))).await?);
                }
                cluster.start_all().await;
                Ok(Self::Cluster {
                    cluster,
                    clients,
                    routes,
                })
            }
            n => anyhow::bail!("--cluster {n}: one server (1) or a cluster of three (3)"),
        }
    }

    /// What the functions and the load are given: every client proxy.
    pub(crate) fn url(&self) -> String {
        let ports: Vec<u16> = match self {
            Self::One { proxy, .. } => vec![proxy.port],
            Self::Cluster { clients, .. } => clients.iter().map(|p| p.port).collect(),
        };
        ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where the cluster keeps its stores and logs.
    pub(crate) fn store(&self) -> Option<String> {
        match self {
            Self::One { .. } => None,
            Self::Cluster { cluster, .. } => Some(cluster.dir().display().to_string()),
        }
    }

    /// The streams' replicas: one per node.
    pub(crate) fn replicas(&self) -> usize {
        match self {
            Self::One { .. } => 1,
            Self::Cluster { .. } => 3,
        }
    }

    /// The proxies the clients connect through: cut them all and every client connection to
    /// NATS is gone.
    pub(crate) fn client_proxies(&self) -> Vec<&Proxy> {
        match self {
            Self::One { proxy, .. } => vec![proxy],
            Self::Cluster { clients, .. } => clients.iter().collect(),
        }
    }

    /// One server: stopped. A cluster: node `node` killed with SIGKILL. Its store stays.
    pub(crate) fn stop(&self, node: usize) {
        match self {
            Self::One { server, .. } => server.stop(),
            Self::Cluster { cluster, .. } => cluster.kill_node(node),
        }
    }

    /// Started again on its store folder.
    pub(crate) fn start_again(&self, node: usize) {
        match self {
            Self::One { server, .. } => server.start_again(),
            Self::Cluster { cluster, .. } => cluster.start_node(node),
        }
    }

    /// The proxies between node `node` and everyone else: its clients' and its routes'.
    fn proxies_of(&self, node: usize) -> Vec<&Proxy> {
        let Self::Cluster {
            clients, routes, ..
        } = self
        else {
            return Vec::new();
        };
        routes
            .iter()
            .filter(|(from, to, _)| *from == node || *to == node)
            .map(|(_, _, p)| p)
            .chain(std::iter::once(&clients[node]))
            .collect()
    }

    /// Node `node` cut off from the other two and from the clients, until [`Nats::rejoin`].
    /// Confirmed: true once the node reports no route left (within 5 s), so that a partition the
    /// proxies failed to make (a route around them) fails the run.
    pub(crate) async fn cut_off(&self, node: usize) -> bool {
        let Self::Cluster { cluster, .. } = self else {
            return false;
        };
        self.proxies_of(node).iter().for_each(|p| p.cut());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let routez = testkit::http_get(cluster.http_port(node), "/routez").await;
            let routes = routez.and_then(|(_, body)| {
                serde_json::from_str::<serde_json::Value>(&body).ok()?["num_routes"].as_u64()
            });
            if routes == Some(0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub(crate) fn rejoin(&self, node: usize) {
        self.proxies_of(node).iter().for_each(|p| p.restore());
    }

    /// A rolling upgrade: each node in turn stopped gracefully (SIGTERM), started again, and
    /// waited for until it is current (`/healthz` and its streams caught up, see
    /// `PrivateCluster::wait_current`). Says how long each node took, and
    /// whether every node was current again.
    pub(crate) async fn rolling_restart(&self) -> (String, bool) {
        let Self::Cluster { cluster, .. } = self else {
            return (String::new(), false);
        };
        let mut all_current = true;
        let mut took = Vec::new();
        for i in 0..3 {
            let started = std::time::Instant::now();
            tokio::task::block_in_place(|| {
                cluster.stop_node(i);
                cluster.start_node(i);
            });
            let healthy = cluster.wait_current(i, HEALTHY_WITHIN).await;
            took.push(if healthy {
                format!("n{i} {:.1} s", started.elapsed().as_secs_f64())
            } else {
                all_current = false;
                format!("n{i} NOT current after {} s", HEALTHY_WITHIN.as_secs())
            });
        }
        (took.join(", "), all_current)
    }
}
