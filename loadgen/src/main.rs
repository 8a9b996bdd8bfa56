//! `loadgen`: a MySQL load generator on ringproxy's own io_uring core, and (`loadgen serve`) a
//! mock MySQL server. This file only parses the command line, dispatches and maps outcomes to
//! exit statuses: 0 when every connection was established and every reply verified; 1 on any
//! protocol error, mismatch, failed or refused connection (or a failure to run at all); 2 on bad
//! arguments (clap's usage errors exit with 2 too).
//!
//! - [`args`]: the command line and its validation into a plan.
//! - [`client`]: the login exchange and reply tracking of one connection, without I/O.
//! - [`auth`]: password scrambles.
//! - [`service`]: the per-thread `ringproxy::runtime::Service` that drives the connections.
//! - [`run`]: threads, phases, progress, measurement.
//! - [`report`]: the JSON / human report.
//! - [`sys`]: CPU, RSS and socket-memory sampling.
//! - [`mock`]: the mock server.

mod args;
mod client;
mod mock;
mod report;
mod run;
mod service;
mod sys;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;

use args::{Cli, Command, Workload};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .format(|buf, record| writeln!(buf, "loadgen: {}: {}", record.level(), record.args()))
        .init();
    let (workload, a) = match cli.command {
        Command::Serve(s) => {
            return match mock::run(s) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen serve: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Connect(a) => (Workload::Connect, a),
        Command::Idle(a) => (Workload::Idle, a),
        Command::Qps(a) => (Workload::Qps, a),
        Command::Rate(a) => (Workload::Rate, a),
        Command::Pipeline(a) => (Workload::Pipeline, a),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let slots = ringproxy::config::fixed_file_slots_per_worker();
    let plan = match args::plan(workload, &a, cores, slots) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let json = plan.json;
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&interrupted)) {
            eprintln!("loadgen: installing a signal handler: {e}");
            return ExitCode::from(1);
        }
    }
    let outcome = match run::run(plan, interrupted) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::from(1);
        }
    };
    for m in &outcome.messages {
        eprintln!("loadgen: error: {m}");
    }
    if json {
        println!("{}", outcome.report.json());
    } else {
        print!("{}", outcome.report.human());
    }
    if outcome.report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
