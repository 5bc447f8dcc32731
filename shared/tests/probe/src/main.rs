//! `probe`: consumes `wallet.probe` (stream `PROBES`, consumer `probe`), in the runtime's tests only.

fn main() -> std::process::ExitCode {
    wallet_runtime::run(probe::Probe)
}
