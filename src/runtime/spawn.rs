//! Starting and stopping a set of workers, for every program on the runtime (the proxy, loadgen's
//! client side, the mock server): one thread per worker, pinned when asked, each building its
//! service and ring on its own thread; [`spawn`] returns once every worker is ready (or fails
//! naming the first worker that could not start) and [`Running`] waits for them, publishes their
//! counters and hands back their services.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::inbox::Inbox;
use super::io::MemoryBudget;
use super::placement;
use super::worker::{Parts, Service, Worker, WorkerConfig};
use crate::metrics::{SharedStats, WorkerStats};

/// What to start.
pub struct Spec {
    /// Thread name prefix (`{name}-{index}`).
    pub name: String,
    pub workers: Vec<WorkerConfig>,
    pub listen: Vec<SocketAddr>,
    pub shutdown: Arc<AtomicBool>,
    pub budget: Arc<MemoryBudget>,
    /// Give each worker an [`Inbox`].
    pub inboxes: bool,
}

/// Workers that are running.
pub struct Running<S: Service> {
    threads: Vec<JoinHandle<io::Result<S>>>,
    /// Each worker's published counters.
    pub stats: Vec<Arc<SharedStats>>,
    /// Each worker's inbox (empty unless [`Spec::inboxes`]).
    pub inboxes: Vec<Arc<Inbox<S::Msg>>>,
    /// The core each worker was pinned to.
    pub cores: Vec<Option<usize>>,
    pub shutdown: Arc<AtomicBool>,
}

/// Starts the workers of `spec`, each running the service `make(index)` builds on the worker's
/// own thread, and waits until all are ready.
pub fn spawn<S, F>(spec: Spec, make: F) -> io::Result<Running<S>>
where
    S: Service + Send + 'static,
    F: Fn(usize) -> S + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<Option<usize>, String>)>();
    let mut running = Running {
        threads: Vec::with_capacity(spec.workers.len()),
        stats: Vec::with_capacity(spec.workers.len()),
        inboxes: Vec::new(),
        cores: vec![None; spec.workers.len()],
        shutdown: Arc::clone(&spec.shutdown),
    };
    for cfg in spec.workers.iter().cloned() {
        let stats = Arc::new(SharedStats::default());
        running.stats.push(Arc::clone(&stats));
        let inbox = if spec.inboxes {
            let inbox = Arc::new(Inbox::new()?);
            running.inboxes.push(Arc::clone(&inbox));
            Some(inbox)
        } else {
            None
        };
        let (make, listen, ready) = (Arc::clone(&make), spec.listen.clone(), ready_tx.clone());
        let (shutdown, budget) = (Arc::clone(&spec.shutdown), Arc::clone(&spec.budget));
        let thread = std::thread::Builder::new()
            .name(format!("{}-{}", spec.name, cfg.index))
            .spawn(move || -> io::Result<S> {
                let core = cfg
                    .pin_cpu
                    .then(|| placement::pin_current_thread(cfg.index))
                    .flatten();
                let parts = Parts {
                    service: make(cfg.index),
                    shutdown,
                    stats,
                    inbox,
                    budget,
                };
                let mut worker = match Worker::new(&cfg, &listen, parts) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = ready.send((cfg.index, Err(e.to_string())));
                        return Err(e);
                    }
                };
                let _ = ready.send((cfg.index, Ok(core)));
                drop(ready);
                worker.run()?;
                Ok(worker.service)
            })?;
        running.threads.push(thread);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..spec.workers.len() {
        match ready_rx.recv() {
            Ok((i, Ok(core))) => running.cores[i] = core,
            Ok((i, Err(e))) => {
                failure.get_or_insert_with(|| format!("worker {i} failed to start: {e}"));
            }
            Err(_) => {
                failure.get_or_insert_with(|| "a worker thread died during start-up".into());
                break;
            }
        }
    }
    if let Some(msg) = failure {
        running.shutdown.store(true, Ordering::Relaxed);
        let _ = running.join();
        return Err(io::Error::other(msg));
    }
    Ok(running)
}

impl<S: Service> Running<S> {
    /// True once every worker thread has returned.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// The counters of all workers, summed.
    pub fn totals(&self) -> WorkerStats {
        sum(&self.stats)
    }

    /// Waits for every worker; returns their services, or the first failure.
    pub fn join(&mut self) -> io::Result<Vec<S>> {
        let mut services = Vec::with_capacity(self.threads.len());
        let mut first_err = None;
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(s)) => services.push(s),
                Ok(Err(e)) => {
                    first_err
                        .get_or_insert(io::Error::new(e.kind(), format!("worker failed: {e}")));
                }
                Err(_) => {
                    first_err.get_or_insert(io::Error::other("a worker thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(services),
        }
    }

    /// Asks the workers to drain and stop, and waits for them.
    pub fn stop(&mut self) -> io::Result<Vec<S>> {
        self.shutdown.store(true, Ordering::Relaxed);
        self.join()
    }
}

/// Sums counters of several workers.
pub fn sum(stats: &[Arc<SharedStats>]) -> WorkerStats {
    let mut total = WorkerStats::default();
    for s in stats {
        total.add(&s.load());
    }
    total
}
