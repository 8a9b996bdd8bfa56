//! The `ringproxy` binary: command line → [`ringproxy::config::Config`] → logging → run the proxy.
//! Nothing else lives here. Exit codes: 0 success, 1 the proxy failed, 2 the configuration was
//! refused (clap's own usage errors also exit with 2).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ringproxy::config::{Cli, Config};

/// Benchmark builds count heap allocations (see `ringproxy::alloc_count`).
#[cfg(feature = "count-allocs")]
#[global_allocator]
static ALLOC: ringproxy::alloc_count::Counting = ringproxy::alloc_count::Counting;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_cli(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ringproxy: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_level);
    if cli.check_config {
        print!("{}", config.summary());
        return ExitCode::SUCCESS;
    }
    match ringproxy::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ringproxy: {err}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr at `level` (RUST_LOG is deliberately not read): timestamp, level, thread, target.
fn init_logging(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .format(|buf, record| {
            let thread = std::thread::current();
            writeln!(
                buf,
                "{} {:<5} [{}] {}: {}",
                buf.timestamp_millis(),
                record.level(),
                thread.name().unwrap_or("?"),
                record.target(),
                record.args()
            )
        })
        .init();
}
