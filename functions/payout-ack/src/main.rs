//! `payout-ack`: consumes `payout.<psp>.ack` (stream `PAYOUT_ACKS`, consumer `payout-ack`) and
//! settles withdrawals: `paid` or `declined`. Every replica also runs the withdrawal sweeper
//! (status queries and `stuck` events for withdrawals that wait too long).
//! Idempotency key: `<psp>:<withdraw_id>:<status>`.

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::run(payout_ack::PayoutAck)
}
