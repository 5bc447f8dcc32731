//! `balance`: answers `wallet.balance.get` (core NATS request-reply, queue group `balance`) with
//! every wallet of a user. Reads the Redis cache; on a miss, PostgreSQL, then fills the cache.
//! Writes nothing else; no idempotency key (it only reads).
//!
//! Run: `cargo run --bin balance`, then `nats req wallet.balance.get '{"user_id":"u-7"}'`.

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::serve(balance::Balance)
}
