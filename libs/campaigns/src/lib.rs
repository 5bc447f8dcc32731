//! Bonus campaigns (red envelopes) as both the `bonus-grant` function and the operator tools see
//! them: a campaign's parameters and their rules ([`campaign`]), its reservations in Redis
//! ([`reservations`]) and rebuilding those from PostgreSQL ([`loader`]).
//!
//! It lives apart from the function so that `walletctl campaign` and `walletctl audit` use the
//! same rules without depending on a function crate.

pub mod campaign;
pub mod loader;
pub mod reservations;
