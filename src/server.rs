//! Starts the proxy for a validated [`Config`]: probes the kernel, installs the SIGINT/SIGTERM
//! handlers (and SIGHUP's, which reloads the Lua script), starts the workers (through [`crate::runtime::spawn`]), publishes their counters to
//! the stats file while they run, and logs the summed counters when they have drained and exited.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io;

use crate::config::Config;
use crate::metrics::{SharedStats, WorkerStats};
use crate::runtime::spawn::{self, Spec};
use crate::runtime::{placement, ring, MemoryBudget, WorkerConfig};
use crate::session::pooled::PooledShared;
use crate::session::users::Users;
use crate::session::{Proxy, Shared};

/// `e` with `what` in front, for errors that must say what was being done.
fn context(what: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Runs the proxy until SIGINT/SIGTERM and the drain that follows.
pub fn run(config: Config) -> io::Result<()> {
    ring::probe().map_err(context("io_uring feature probe"))?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown))
            .map_err(context("installing signal handlers"))?;
    }
    let stats = start(&config, shutdown)?;
    let total = spawn::sum(&stats);
    let summary: Vec<String> = total
        .fields()
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    log::info!("ringproxy stopped; totals: {}", summary.join(" "));
    Ok(())
}

/// The settings of worker `index`.
pub fn worker_config(config: &Config, index: usize, fixed_slots: u32) -> WorkerConfig {
    WorkerConfig {
        index,
        pin_cpu: config.pin_cpus,
        ring_entries: config.ring_entries,
        buffer_size: config.buffer_size,
        buffer_count: config.buffer_count,
        connect_timeout: Duration::from_millis(config.connect_timeout_ms),
        drain_timeout: Duration::from_millis(config.drain_timeout_ms),
        linger: Duration::from_millis(config.linger_timeout_ms),
        fixed_slots,
        batch_wait: crate::runtime::worker::BATCH_WAIT,
    }
}

/// Starts the workers and blocks until they have all exited; returns their counters.
pub fn start(config: &Config, shutdown: Arc<AtomicBool>) -> io::Result<Vec<Arc<SharedStats>>> {
    // Pass-through listeners first, then pooled ones (the workers tell them apart by index).
    let mut listen = Vec::with_capacity(config.listen.len() + config.pooled_listen.len());
    for addr in config.listen.iter().chain(&config.pooled_listen) {
        listen.push(placement::claim_listen_addr(addr)?);
    }
    let mut shared = Shared::new(config);
    let mut loader = None;
    if config.pooled_mode() {
        let users = Users::new(config);
        users.probe_server_version(config);
        loader = users.start_loader(config, Arc::clone(&shutdown));
        shared.pooled = Some(Arc::new(PooledShared::new(config, users)));
    }
    let shared = Arc::new(shared);
    let script = shared.script.clone();
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))
        .map_err(context("installing the SIGHUP handler"))?;
    let fixed_slots = crate::config::fixed_file_slots_per_worker();
    let spec = Spec {
        name: "rp-worker".into(),
        workers: (0..config.workers)
            .map(|i| worker_config(config, i, fixed_slots))
            .collect(),
        listen: listen.clone(),
        shutdown,
        budget: Arc::new(MemoryBudget::new(config.max_memory)),
        inboxes: config.lua_script.is_some() && config.lua_executor_thread,
    };
    let mut running = spawn::spawn(spec, move |_| Proxy::new(Arc::clone(&shared)))?;
    log::info!(
        "ringproxy listening on {} → backends {} ({} workers, {} fixed-file slots per worker, max_connections {})",
        listen.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        config.backends.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        config.workers,
        fixed_slots,
        config.max_connections
    );
    // Wait for the workers, publishing their counters to the stats file about once a second.
    let started = Instant::now();
    let mut last_write: Option<Instant> = None;
    while !running.is_finished() {
        if hangup.swap(false, Ordering::Relaxed) {
            match &script {
                Some(s) => {
                    log::info!("SIGHUP: reloading {}", s.path.display());
                    s.request_reload();
                }
                None => log::info!("SIGHUP: no script to reload"),
            }
        }
        if let Some(path) = &config.stats_file {
            if last_write.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_write = Some(Instant::now());
                write_stats_file(path, &running.stats, started);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = running.join();
    if let Some(handle) = loader {
        let _ = handle.join();
    }
    if let Some(path) = &config.stats_file {
        write_stats_file(path, &running.stats, started);
    }
    result?;
    Ok(running.stats.clone())
}

/// The counters as one JSON object: totals, each worker, and the heap allocations of the whole
/// process when the counting allocator is built in (`null` otherwise).
pub fn stats_json(stats: &[Arc<SharedStats>], uptime: Duration) -> String {
    use std::fmt::Write;
    // Written into one string: this runs every second inside the process whose heap
    // allocations bench/gate counts, so it makes a handful of them, not one per counter.
    fn object(out: &mut String, s: &WorkerStats) {
        out.push('{');
        for (i, (k, v)) in s.fields().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "\"{k}\":{v}");
        }
        out.push('}');
    }
    let per: Vec<WorkerStats> = stats.iter().map(|s| s.load()).collect();
    let total = spawn::sum(stats);
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "{{\"uptime_s\":{:.3},\"workers\":{},\"allocations\":",
        uptime.as_secs_f64(),
        per.len()
    );
    match crate::alloc_count::allocations() {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"totals\":");
    object(&mut out, &total);
    out.push_str(",\"per_worker\":[");
    for (i, w) in per.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        object(&mut out, w);
    }
    out.push_str("]}\n");
    out
}

/// Writes [`stats_json`] to `path` atomically (a temp file renamed over it); failures are logged.
fn write_stats_file(path: &std::path::Path, stats: &[Arc<SharedStats>], started: Instant) {
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, stats_json(stats, started.elapsed()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        log::warn!("cannot write the stats file {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_sums_workers_and_lists_each() {
        let a = Arc::new(SharedStats::default());
        let b = Arc::new(SharedStats::default());
        a.store(&WorkerStats {
            commands: 3,
            sqes: 10,
            ..Default::default()
        });
        b.store(&WorkerStats {
            commands: 4,
            sqes: 1,
            ..Default::default()
        });
        let j = stats_json(&[a, b], Duration::from_millis(1500));
        assert!(j.starts_with("{\"uptime_s\":1.500,\"workers\":2,"), "{j}");
        assert!(j.contains("\"totals\":{\"accepted\":0,"), "{j}");
        assert!(j.contains("\"commands\":7,"), "{j}");
        assert!(j.contains("\"sqes\":11,"), "{j}");
        assert!(j.contains("\"per_worker\":[{"), "{j}");
        assert_eq!(j.matches("\"commands\":").count(), 3, "{j}");
    }
}
