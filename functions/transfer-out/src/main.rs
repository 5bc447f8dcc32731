//! `transfer-out`: consumes `wallet.transfer-out` (stream `TRANSFERS`, consumer `transfer-out`),
//! moves the amount from the user's `main` wallet to `in_transit` and asks the provider to credit
//! it (`provider.<provider>.transfer`); publishes `wallet.events.transfer.pending` or `.rejected`.
//! Idempotency key: `transfer_id`.

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::run(transfer_out::TransferOut)
}
