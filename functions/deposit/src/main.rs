//! `deposit`: consumes `wallet.deposit` (stream `DEPOSITS`, consumer `deposit`) and credits the
//! user's `main` wallet; publishes `wallet.events.deposit.completed` or `.rejected`.
//! Idempotency key: `deposit_id`.
//!
//! Run: `walletctl setup && cargo run --bin deposit` (configuration: see the README).

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::run(deposit::Deposit)
}
