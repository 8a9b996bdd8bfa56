//! The `ringproxy` binary: command line → [`ringproxy::config::Config`] → logging → how the
//! process runs (MySQL Proxy's `--basedir`, `--daemon`, `--pid-file`, `--keepalive`,
//! `--log-file`) → run the proxy. Exit codes: 0 success, 1 the proxy failed, 2 the configuration
//! was refused (clap's own usage errors also exit with 2).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ringproxy::config::{Cli, Config, Launch};

/// Benchmark builds count heap allocations (see `ringproxy::alloc_count`).
#[cfg(feature = "count-allocs")]
#[global_allocator]
static ALLOC: ringproxy::alloc_count::Counting = ringproxy::alloc_count::Counting;

/// Set in the environment of a proxy a `--keepalive` supervisor started.
const SUPERVISED: &str = "RINGPROXY_SUPERVISED";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.launch.basedir {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!("ringproxy: --basedir {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_cli(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("ringproxy: {err}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(config.log_level, cli.launch.log_file.as_deref()) {
        eprintln!("ringproxy: --log-file: {e}");
        return ExitCode::from(2);
    }
    if cli.check_config {
        print!("{}", config.summary());
        return ExitCode::SUCCESS;
    }
    let supervised = std::env::var_os(SUPERVISED).is_some();
    if !supervised {
        if let Err(code) = detach(&cli.launch) {
            return code;
        }
        if cli.launch.keepalive {
            return supervise(&cli.launch);
        }
    }
    run(config, &cli.launch, supervised)
}

/// `--daemon` and `--pid-file` (in the supervisor when there is one).
fn detach(launch: &Launch) -> Result<(), ExitCode> {
    if launch.daemon {
        // SAFETY: daemon(3) forks; no thread has been started yet, so the child is a complete
        // copy of this single-threaded process. nochdir = 1 keeps --basedir; noclose = 0 points
        // the standard streams at /dev/null (logs go to --log-file).
        if unsafe { libc::daemon(1, 0) } != 0 {
            eprintln!("ringproxy: --daemon: {}", std::io::Error::last_os_error());
            return Err(ExitCode::from(1));
        }
    }
    if let Some(path) = &launch.pid_file {
        if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
            log::error!("--pid-file {}: {e}", path.display());
            return Err(ExitCode::from(1));
        }
    }
    Ok(())
}

fn run(config: Config, launch: &Launch, supervised: bool) -> ExitCode {
    let result = ringproxy::server::run(config);
    if !supervised {
        remove_pid_file(launch);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            eprintln!("ringproxy: {err}");
            ExitCode::from(1)
        }
    }
}

fn remove_pid_file(launch: &Launch) {
    if let Some(path) = &launch.pid_file {
        let _ = std::fs::remove_file(path);
    }
}

/// `--keepalive`: runs the proxy as a child process with the same arguments, and starts it
/// again when it dies abnormally (a signal it did not get from here, a failure exit other than
/// a refused configuration); SIGINT/SIGTERM are passed on and end the supervision.
fn supervise(launch: &Launch) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            log::error!("--keepalive: installing signal handlers: {e}");
            return ExitCode::from(1);
        }
    }
    let code = loop {
        let status = match run_child(&stop) {
            Ok(s) => s,
            Err(e) => {
                log::error!("--keepalive: can't start the proxy: {e}");
                break ExitCode::from(1);
            }
        };
        if stop.load(Ordering::Relaxed) || status.success() {
            break ExitCode::SUCCESS;
        }
        if status.code() == Some(2) {
            break ExitCode::from(2);
        }
        log::error!("--keepalive: the proxy died ({status}); starting it again in 1 s");
        std::thread::sleep(Duration::from_secs(1));
    };
    remove_pid_file(launch);
    code
}

fn run_child(stop: &AtomicBool) -> std::io::Result<std::process::ExitStatus> {
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(SUPERVISED, "1")
        .spawn()?;
    let mut signalled = false;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if stop.load(Ordering::Relaxed) && !signalled {
            signalled = true;
            // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Logs to stderr (or `log_file`, appended) at `level` (RUST_LOG is deliberately not read):
/// timestamp, level, thread, target.
fn init_logging(level: log::LevelFilter, log_file: Option<&Path>) -> std::io::Result<()> {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level).format(|buf, record| {
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
    });
    if let Some(path) = log_file {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    builder.init();
    Ok(())
}
