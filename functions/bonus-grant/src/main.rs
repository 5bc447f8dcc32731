//! `bonus-grant`: consumes `bonus.grant` (stream `BONUS`, consumer `bonus-grant`). Redis reserves
//! each grant within its campaign's window, per-user limit and budget, or answers the rejection
//! alone; PostgreSQL commits the reserved ones (bonus wallet credited). Every replica also runs
//! the reservation reconciler. Idempotency key: `grant_id`.

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::run(bonus_grant::BonusGrant::default())
}
