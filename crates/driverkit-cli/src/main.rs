//! `driverkit`: run the system, inspect it, plug devices, validate bundles
//! and benchmark. See `driverkit --help`.

mod commands;
mod drivers;
mod words;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Started by the daemon as one of the built-in drivers?
    if let Some(driver) = drivers::from_argv0() {
        driverkit::runtime::run((driver.classes)());
    }
    // Started by `driverkit bench` as one of its peer processes?
    if let Some(code) = commands::run_bench_peer_if_asked() {
        return code;
    }
    let cli = commands::Cli::parse();
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("driverkit: {}", words::without_errno(&message));
            ExitCode::FAILURE
        }
    }
}
