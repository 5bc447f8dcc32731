//! Private servers on ports of their own: a test that kills, restarts or reconfigures a server
//! starts one of these and never touches the shared ones.

mod cluster;
mod nats;
mod postgres;
mod redis;

pub use cluster::{PrivateCluster, pinned_nats_server, stream_seqs};
pub use nats::PrivateNats;
pub use postgres::PrivatePostgres;
pub use redis::PrivateRedis;
