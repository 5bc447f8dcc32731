//! The faults a run draws from.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fault {
    Kill9,
    Sigterm,
    NatsRestart,
    PostgresStop,
    RedisRestart,
    ConnectionsCut,
}

impl Fault {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 of a replica",
            Fault::Sigterm => "SIGTERM of a replica",
            Fault::NatsRestart => "nats-server restarted",
            Fault::PostgresStop => "PostgreSQL stopped (immediate), then started",
            Fault::RedisRestart => "Redis restarted empty",
            Fault::ConnectionsCut => "connections cut at a proxy",
        }
    }
}
