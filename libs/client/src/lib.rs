//! The client side of the contract, shared by the load generator and the test kit: publish commands
//! so that each is stored exactly once ([`publish`]), and follow the events and dead letters they
//! lead to ([`follow`]).

mod follow;
mod publish;

pub use follow::{Followed, follow};
pub use publish::{IN_FLIGHT, Message, publish, publish_all};
