//! Runs one load workload: starts one worker thread per `--threads` (each a
//! `ringproxy::runtime::Worker` with no listeners driving a [`LoadService`]), waits for the
//! connections, runs the measured phase (sampling CPU, RSS and socket memory at its start and
//! end), prints progress, stops the workers through their shutdown flag and merges what each
//! thread measured into a [`Report`].
//!
//! The rate workload also starts a metronome: a plain thread writing one byte every period to one
//! loopback socket per worker, so a worker whose connections are all quiet still wakes up to send
//! the queries its schedule makes due (the runtime's own tick is 50 ms).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use hdrhistogram::Histogram;
use ringproxy::runtime::spawn::{self, Spec};
use ringproxy::runtime::{ring, MemoryBudget, WorkerConfig};

use crate::args::{Plan, Workload};
use crate::report::{ConnectStats, Cpu, Latency, RateInfo, Report};
use crate::service::{new_histogram, Control, Counters, Errors, LoadService, ThreadResult};
use crate::sys;

/// How often the main thread looks at the workers' counters.
const POLL: Duration = Duration::from_millis(20);

/// The finished run: the report and the distinct error messages the threads collected.
pub struct Outcome {
    pub report: Report,
    pub messages: Vec<String>,
}

/// How long the workers wait at the end for the servers to close the connections after COM_QUIT:
/// a server closing many at once may take a while (see `LoadService::quit`).
fn drain_timeout(connections_per_thread: u32) -> Duration {
    Duration::from_secs(10) + Duration::from_millis(u64::from(connections_per_thread))
}

fn worker_config(index: usize, slots: u32, drain: Duration) -> WorkerConfig {
    // The target usually runs on the same machine: placement is left to the scheduler.
    WorkerConfig {
        connect_timeout: Duration::from_secs(10),
        drain_timeout: drain,
        ..WorkerConfig::basic(index, slots)
    }
}

/// Writes one byte to every accepted socket each `period` until `stop`.
fn metronome(listener: TcpListener, period: Duration, stop: Arc<AtomicBool>) {
    let mut socks: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        while let Ok((s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            socks.push(s);
        }
        socks.retain_mut(|s| s.write_all(&[0]).is_ok());
        std::thread::sleep(period);
    }
}

struct Totals {
    established: u64,
    failed: u64,
    queries: u64,
    errors: u64,
    backlog: u64,
}

fn totals(counters: &[Counters]) -> Totals {
    let mut t = Totals {
        established: 0,
        failed: 0,
        queries: 0,
        errors: 0,
        backlog: 0,
    };
    for c in counters {
        t.established += c.established.load(Ordering::Relaxed);
        t.failed += c.failed.load(Ordering::Relaxed);
        t.queries += c.queries.load(Ordering::Relaxed);
        t.errors += c.errors.load(Ordering::Relaxed);
        t.backlog += c.backlog.load(Ordering::Relaxed);
    }
    t
}

/// Prints one line per second on stderr.
struct Progress {
    rx: mpsc::Receiver<Histogram<u64>>,
    hist: Histogram<u64>,
    last: Instant,
    last_queries: u64,
}

impl Progress {
    fn maybe_print(&mut self, plan: &Plan, control: &Control, now: Instant) {
        if now.saturating_duration_since(self.last) < Duration::from_secs(1) {
            return;
        }
        while let Ok(h) = self.rx.try_recv() {
            let _ = self.hist.add(&h);
        }
        let t = totals(&control.counters);
        let secs = now.saturating_duration_since(self.last).as_secs_f64();
        let qps = t.queries.saturating_sub(self.last_queries) as f64 / secs;
        let p99 = if self.hist.is_empty() {
            0.0
        } else {
            self.hist.value_at_quantile(0.99) as f64 / 1000.0
        };
        let mut line = format!(
            "loadgen {:>6.1}s  conns {}/{} (failed {})  qps {:.0}  p99 {:.0} us  errors {}",
            now.saturating_duration_since(control.start).as_secs_f64(),
            t.established,
            plan.connections,
            t.failed,
            qps,
            p99,
            t.errors
        );
        if plan.workload == Workload::Rate {
            line.push_str(&format!("  backlog {}", t.backlog));
        }
        eprintln!("{line}");
        self.hist.reset();
        self.last = now;
        self.last_queries = t.queries;
    }
}

/// Runs the workload described by `plan`. `interrupted` (SIGINT/SIGTERM) ends the run early,
/// still with a report.
pub fn run(plan: Plan, interrupted: Arc<AtomicBool>) -> anyhow::Result<Outcome> {
    ring::probe().context("io_uring feature probe")?;
    let slots = ringproxy::config::fixed_file_slots_per_worker();
    let plan = Arc::new(plan);
    if let Some(ports) = sys::ephemeral_ports() {
        let sources = plan.sources.len().max(1) as u64;
        if u64::from(plan.connections) > ports * sources {
            log::warn!(
                "{} connections to one target from {sources} source address(es) need more than \
                 the {ports} ephemeral ports each has: use --source with more addresses",
                plan.connections
            );
        }
    }
    let rss_before = plan.pid.and_then(|p| sys::proc_rss_kib(p).ok());
    let sockstat_before = sys::sockstat_mem_pages();
    let cpu_self_start = sys::self_cpu_s();
    let cpu_target_start = plan.pid.and_then(|p| sys::proc_cpu_s(p).ok());

    let stop = Arc::new(AtomicBool::new(false));
    let metronome_stop = Arc::new(AtomicBool::new(false));
    let mut metronome_handle = None;
    let mut metronome_addr: Option<SocketAddr> = None;
    if plan.workload == Workload::Rate {
        let listener = TcpListener::bind("127.0.0.1:0").context("metronome listener")?;
        listener.set_nonblocking(true)?;
        metronome_addr = Some(listener.local_addr()?);
        let per_thread = plan.rate / plan.threads as f64;
        let period = Duration::from_secs_f64((0.25 / per_thread).clamp(100e-6, 1e-3));
        let s = Arc::clone(&metronome_stop);
        metronome_handle = Some(
            std::thread::Builder::new()
                .name("lg-metronome".into())
                .spawn(move || metronome(listener, period, s))?,
        );
    }

    let control = Arc::new(Control {
        start: Instant::now(),
        measuring: AtomicBool::new(plan.workload == Workload::Connect),
        stop: Arc::clone(&stop),
        counters: (0..plan.threads).map(|_| Counters::default()).collect(),
    });
    let (progress_tx, progress_rx) = mpsc::channel();
    let mut progress = plan.progress.then(|| Progress {
        rx: progress_rx,
        hist: new_histogram(),
        last: Instant::now(),
        last_queries: 0,
    });

    let spec = Spec {
        name: "lg-worker".into(),
        workers: (0..plan.threads)
            .map(|t| worker_config(t, slots, drain_timeout(plan.connections_of(t))))
            .collect(),
        listen: Vec::new(),
        shutdown: Arc::clone(&stop),
        budget: Arc::new(MemoryBudget::new(0)),
        inboxes: false,
    };
    let make = {
        let (plan, control) = (Arc::clone(&plan), Arc::clone(&control));
        move |t| {
            let tx = plan.progress.then(|| progress_tx.clone());
            LoadService::new(
                Arc::clone(&plan),
                Arc::clone(&control),
                t,
                metronome_addr,
                tx,
            )
        }
    };
    let mut running = match spawn::spawn(spec, make) {
        Ok(r) => r,
        Err(e) => {
            metronome_stop.store(true, Ordering::Relaxed);
            return Err(anyhow!("a worker failed to start: {e}"));
        }
    };

    // Connection phase: until every connection is established or failed (connect: or the limit).
    let n = u64::from(plan.connections);
    let all_done = |r: &spawn::Running<LoadService>| r.is_finished();
    loop {
        let now = Instant::now();
        let t = totals(&control.counters);
        if t.established + t.failed >= n || interrupted.load(Ordering::Relaxed) {
            break;
        }
        if plan.workload == Workload::Connect
            && now.saturating_duration_since(control.start) >= plan.duration
        {
            break;
        }
        if all_done(&running) {
            break;
        }
        if let Some(p) = progress.as_mut() {
            p.maybe_print(&plan, &control, now);
        }
        std::thread::sleep(POLL);
    }

    let (t0, cpu_self0, cpu_target0) = if plan.workload == Workload::Connect {
        (control.start, cpu_self_start, cpu_target_start)
    } else {
        let established = totals(&control.counters).established;
        let t0 = Instant::now();
        let samples = (
            t0,
            sys::self_cpu_s(),
            plan.pid.and_then(|p| sys::proc_cpu_s(p).ok()),
        );
        if established > 0 {
            control.measuring.store(true, Ordering::Relaxed);
            if let Some(p) = progress.as_mut() {
                p.last = t0;
                p.last_queries = 0;
            }
            let end = t0 + plan.duration;
            loop {
                let now = Instant::now();
                if now >= end || interrupted.load(Ordering::Relaxed) || all_done(&running) {
                    break;
                }
                if let Some(p) = progress.as_mut() {
                    p.maybe_print(&plan, &control, now);
                }
                std::thread::sleep(POLL.min(end - now));
            }
        }
        samples
    };
    let t1 = Instant::now();
    let cpu_self1 = sys::self_cpu_s();
    let cpu_target1 = plan.pid.and_then(|p| sys::proc_cpu_s(p).ok());
    let rss_after = plan.pid.and_then(|p| sys::proc_rss_kib(p).ok());
    let sockstat_after = sys::sockstat_mem_pages();
    stop.store(true, Ordering::Relaxed);

    let joined = running.join();
    let close_s = t1.elapsed().as_secs_f64();
    metronome_stop.store(true, Ordering::Relaxed);
    if let Some(h) = metronome_handle {
        let _ = h.join();
    }
    let results: Vec<ThreadResult> = joined
        .map_err(|e| anyhow!("{e}"))?
        .into_iter()
        .map(LoadService::finish)
        .collect();

    let mut latency = new_histogram();
    let mut connect_latency = new_histogram();
    let mut errors = Errors::default();
    let (mut queries, mut established, mut failed, mut backlog) = (0, 0, 0, 0);
    let mut first_open: Option<Instant> = None;
    let mut last_established: Option<Instant> = None;
    let mut messages: Vec<String> = Vec::new();
    for r in &results {
        latency.add(&r.latency).context("merging histograms")?;
        connect_latency
            .add(&r.connect_latency)
            .context("merging histograms")?;
        errors.add(&r.errors);
        queries += r.queries;
        established += r.established;
        failed += r.failed;
        backlog += r.backlog;
        first_open = match (first_open, r.first_open) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last_established = last_established.max(r.last_established);
        for m in &r.messages {
            if !messages.contains(m) {
                messages.push(m.clone());
            }
        }
    }
    let time_to_all_s = match (first_open, last_established) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let duration_s = t1.saturating_duration_since(t0).as_secs_f64();
    let report = Report {
        workload: plan.workload.name(),
        target: plan.target_text.clone(),
        connections: plan.connections,
        threads: plan.threads,
        duration_s: round3(duration_s),
        queries,
        qps: if duration_s > 0.0 {
            round3(queries as f64 / duration_s)
        } else {
            0.0
        },
        latency_us: if plan.workload == Workload::Connect {
            Latency::from_ns(&connect_latency)
        } else {
            Latency::from_ns(&latency)
        },
        errors,
        connect: ConnectStats {
            established,
            failed,
            rate_per_s: if time_to_all_s > 0.0 {
                round3(established as f64 / time_to_all_s)
            } else {
                0.0
            },
            time_to_all_s: round3(time_to_all_s),
        },
        close_s: round3(close_s),
        cpu_s: Cpu {
            loadgen: round3(cpu_self1 - cpu_self0),
            target: match (cpu_target0, cpu_target1) {
                (Some(a), Some(b)) => Some(round3(b - a)),
                _ => None,
            },
        },
        target_rss_kib: rss_after,
        target_rss_kib_before: rss_before,
        sockstat_mem_pages: sockstat_after,
        sockstat_mem_pages_before: sockstat_before,
        rate: (plan.workload == Workload::Rate).then_some(RateInfo {
            target_qps: plan.rate,
            backlog,
        }),
        depth: (plan.workload == Workload::Pipeline).then_some(plan.depth),
    };
    Ok(Outcome { report, messages })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
