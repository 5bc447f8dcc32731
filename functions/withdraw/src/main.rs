//! `withdraw`: consumes `wallet.withdraw` (stream `WITHDRAW`, consumer `withdraw`), moves the
//! amount from the user's `main` wallet to `held` within the day's limit and asks the payment
//! provider to pay it out (`payout.<psp>.request`); publishes `wallet.events.withdrawal.pending`
//! or `.rejected`. Idempotency key: `withdraw_id`.

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::run(withdraw::Withdraw::default())
}
