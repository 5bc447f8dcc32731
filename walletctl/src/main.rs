//! `walletctl`: the operator CLI. See `walletctl --help` and the README's operations section.

use std::process::ExitCode;

use clap::Parser;
use walletctl::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match wallet_runtime::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("walletctl: {e}");
            return ExitCode::from(wallet_runtime::config::EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walletctl: {e}");
            return ExitCode::from(walletctl::EXIT_COULD_NOT);
        }
    };
    match runtime.block_on(walletctl::run(cli, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("walletctl: {e:#}");
            ExitCode::from(walletctl::EXIT_COULD_NOT)
        }
    }
}
