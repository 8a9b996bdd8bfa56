//! Starts the proxy for a validated [`Config`]: probes the kernel, installs the SIGINT/SIGTERM
//! handlers, spawns one worker thread per configured worker (pinned when asked), waits until
//! every worker has its ring, buffers and listeners (so a bad bind fails the start), then waits
//! for them to drain and exit, and logs the summed counters.

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::config::Config;
use crate::metrics::{SharedStats, WorkerStats};
use crate::runtime::{placement, ring, Worker, WorkerConfig};
use crate::session::{Proxy, Shared};

/// Runs the proxy until SIGINT/SIGTERM and the drain that follows.
pub fn run(config: Config) -> anyhow::Result<()> {
    ring::probe().context("io_uring feature probe")?;
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown))
            .context("installing signal handlers")?;
    }
    let stats = start(&config, Arc::clone(&shutdown))?;
    let mut total = WorkerStats::default();
    for s in &stats {
        total.add(&s.load());
    }
    let summary: Vec<String> = total
        .fields()
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    log::info!("ringproxy stopped; totals: {}", summary.join(" "));
    Ok(())
}

/// Starts the workers and blocks until they have all exited; returns their counters.
pub fn start(config: &Config, shutdown: Arc<AtomicBool>) -> anyhow::Result<Vec<Arc<SharedStats>>> {
    let mut listen = Vec::with_capacity(config.listen.len());
    for addr in &config.listen {
        listen.push(placement::claim_listen_addr(addr)?);
    }
    let shared = Arc::new(Shared::new(config));
    let fixed_slots = crate::config::fixed_file_slots_per_worker();
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<Option<usize>, String>)>();
    let mut handles = Vec::new();
    let mut all_stats = Vec::new();
    for index in 0..config.workers {
        let wcfg = WorkerConfig {
            index,
            pin_cpu: config.pin_cpus,
            ring_entries: config.ring_entries,
            buffer_size: config.buffer_size,
            buffer_count: config.buffer_count,
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            drain_timeout: Duration::from_millis(config.drain_timeout_ms),
            fixed_slots,
        };
        let listen = listen.clone();
        let shared = Arc::clone(&shared);
        let shutdown = Arc::clone(&shutdown);
        let stats = Arc::new(SharedStats::default());
        all_stats.push(Arc::clone(&stats));
        let ready = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("rp-worker-{index}"))
            .spawn(move || -> std::io::Result<()> {
                let core = if wcfg.pin_cpu {
                    placement::pin_current_thread(index)
                } else {
                    None
                };
                let mut worker =
                    match Worker::new(&wcfg, &listen, Proxy::new(shared), shutdown, stats) {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = ready.send((index, Err(e.to_string())));
                            return Err(e);
                        }
                    };
                let _ = ready.send((index, Ok(core)));
                drop(ready);
                worker.run()
            })
            .context("spawning a worker thread")?;
        handles.push(h);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..config.workers {
        match ready_rx.recv() {
            Ok((i, Ok(core))) => log::debug!("worker {i} ready (pinned to core {core:?})"),
            Ok((i, Err(e))) => {
                failure.get_or_insert_with(|| anyhow!("worker {i} failed to start: {e}"));
            }
            Err(_) => {
                failure.get_or_insert_with(|| anyhow!("a worker thread died during start-up"));
                break;
            }
        }
    }
    if let Some(err) = failure {
        shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        return Err(err);
    }
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
    while !handles.iter().all(|h| h.is_finished()) {
        if let Some(path) = &config.stats_file {
            if last_write.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_write = Some(Instant::now());
                write_stats_file(path, &all_stats, started);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(anyhow!("worker failed: {e}"));
            }
            Err(_) => {
                first_err.get_or_insert(anyhow!("a worker thread panicked"));
            }
        }
    }
    if let Some(path) = &config.stats_file {
        write_stats_file(path, &all_stats, started);
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(all_stats),
    }
}

/// The counters as one JSON object: totals, each worker, and the heap allocations of the whole
/// process when the counting allocator is built in (`null` otherwise).
pub fn stats_json(stats: &[Arc<SharedStats>], uptime: Duration) -> String {
    fn object(s: &WorkerStats) -> String {
        let fields: Vec<String> = s
            .fields()
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
    let per: Vec<WorkerStats> = stats.iter().map(|s| s.load()).collect();
    let mut total = WorkerStats::default();
    for s in &per {
        total.add(s);
    }
    let allocations =
        crate::alloc_count::allocations().map_or("null".to_string(), |n| n.to_string());
    format!(
        "{{\"uptime_s\":{:.3},\"workers\":{},\"allocations\":{},\"totals\":{},\"per_worker\":[{}]}}\n",
        uptime.as_secs_f64(),
        per.len(),
        allocations,
        object(&total),
        per.iter().map(object).collect::<Vec<_>>().join(",")
    )
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
