//! `scaffold-example`: consumes `wallet.scaffold-example` (stream `SCAFFOLD_EXAMPLE`, consumer `scaffold-example`).

#[global_allocator]
static ALLOCATOR: wallet_runtime::Allocator = wallet_runtime::Allocator;

fn main() -> std::process::ExitCode {
    wallet_runtime::run(scaffold_example::ScaffoldExample)
}
