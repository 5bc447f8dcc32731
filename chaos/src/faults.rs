//! The faults a run draws from, and how often each is drawn.

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    Kill9,
    Sigterm,
    NatsRestart,
    PostgresStop,
    RedisRestart,
    ConnectionsCut,
    // A cluster's own.
    NodeKill,
    LeaderStepdown,
    NodeIsolated,
    RollingRestart,
}

/// `(fault, weight)`: the kinds a run on one server draws from.
const ONE_SERVER: &[(Fault, u32)] = &[
    (Fault::Kill9, 30),
    (Fault::Sigterm, 15),
    (Fault::ConnectionsCut, 15),
    (Fault::NatsRestart, 15),
    (Fault::RedisRestart, 13),
    (Fault::PostgresStop, 12),
];

/// On a cluster, the server's restart becomes a node's SIGKILL, and the cluster's faults join.
const CLUSTER: &[(Fault, u32)] = &[
    (Fault::Kill9, 20),
    (Fault::Sigterm, 10),
    (Fault::ConnectionsCut, 10),
    (Fault::RedisRestart, 8),
    (Fault::PostgresStop, 7),
    (Fault::NodeKill, 15),
    (Fault::LeaderStepdown, 15),
    (Fault::NodeIsolated, 10),
    (Fault::RollingRestart, 5),
];

fn table(cluster: bool) -> &'static [(Fault, u32)] {
    if cluster { CLUSTER } else { ONE_SERVER }
}

impl Fault {
    /// Every kind of the run's shape, once each (the caller shuffles them).
    pub(crate) fn kinds(cluster: bool) -> Vec<Fault> {
        table(cluster).iter().map(|(f, _)| *f).collect()
    }

    /// One drawn by weight.
    pub(crate) fn draw(rng: &mut impl Rng, cluster: bool) -> Fault {
        let table = table(cluster);
        let mut n = rng.random_range(0..table.iter().map(|(_, w)| w).sum::<u32>());
        for (fault, weight) in table {
            if n < *weight {
                return *fault;
            }
            n -= weight;
        }
        unreachable!("n is below the sum of the weights")
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 of a replica",
            Fault::Sigterm => "SIGTERM of a replica",
            Fault::NatsRestart => "nats-server restarted",
            Fault::PostgresStop => "PostgreSQL stopped (immediate), then started",
            Fault::RedisRestart => "Redis restarted empty",
            Fault::ConnectionsCut => "connections cut at a proxy",
            Fault::NodeKill => "kill -9 of a NATS node, restarted on its store",
            Fault::LeaderStepdown => "stream or consumer leader stepped down",
            Fault::NodeIsolated => "NATS node cut off from the others and the clients",
            Fault::RollingRestart => "rolling restart of the three NATS nodes",
        }
    }
}
