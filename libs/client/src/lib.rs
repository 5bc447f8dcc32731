//! The client side of the contract, shared by the load generator and the test kit: publish commands
//! so that each is stored exactly once ([`publish`]), and follow the events and dead letters they
//! lead to ([`follow`]).

mod follow;
mod publish;

pub use follow::{Followed, follow};
pub use publish::{IN_FLIGHT, Message, publish, publish_all};

/// What went wrong on the client side; each names the command or the stream.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// JetStream did not store the command within the publish patience.
    #[error("publishing {msg_id}")]
    Publish {
        msg_id: String,
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    /// The stream could not be followed.
    #[error("following {stream}")]
    Follow {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
}
