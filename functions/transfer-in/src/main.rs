//! `transfer-in`: consumes `wallet.transfer-in` (stream `TRANSFER_IN`, consumer `transfer-in`).

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::run(transfer_in::TransferIn)
}
