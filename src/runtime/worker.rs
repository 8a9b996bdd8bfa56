//! One worker: the [`Service`] trait a worker's MySQL-aware half implements, and the loop.
//!
//! Each turn of [`Worker::turn`]: build one vectored send per socket with output, publish the
//! receive buffers given back, enter the kernel once (submitting everything and waiting for a
//! completion, the next timer or the tick), then copy the completions out and hand each to the
//! [`Service`] as an event, fire due timers, deliver inbox messages, and call the per-turn hook.
//! Each tick also frees the send-queue storage of sockets that stayed quiet (a slice of the
//! socket table at a time). The worker has no MySQL knowledge.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::buffers::{BufMem, BufRef};
use super::driver::{Batch, Cqe, Driver};
use super::inbox::Inbox;
use super::io::{
    AcceptSlot, Event, Io, Listener, MemoryBudget, WakeRead, ACCEPTS_PER_LISTENER, RUNTIME_TIMER,
};
use super::socks::SockId;
use crate::metrics::SharedStats;

/// How long one enter may wait when nothing completes and no timer is due: the coarse tick, at
/// which listeners are re-armed, counters published and `on_tick` called.
pub const TICK: Duration = Duration::from_millis(50);

/// Sockets whose idle send-queue storage each tick looks at: a worker's 20,000 sockets take 4 s
/// (80 ticks), so storage is freed after 4–8 s without output and a busy socket keeps its own.
const SWEEP_PER_TICK: usize = 256;

/// How long the proxy's workers let a wait hold on for more completions after a busy turn
/// (the kernel's io_uring min-wait, 6.12+; older kernels wait for one). What it bought, and
/// how the busy-turn threshold was chosen: bench/README.md, "Batched waits".
pub const BATCH_WAIT: Duration = Duration::from_micros(50);

/// Completions in one turn from which the next wait asks for a batch ([`Worker::batch`]).
const BUSY_TURN: usize = 4;
/// The largest batch a wait asks for.
const MAX_BATCH: usize = 64;

/// Runtime settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub index: usize,
    pub pin_cpu: bool,
    pub ring_entries: u32,
    pub buffer_size: u32,
    pub buffer_count: u16,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    /// How long a socket closed after a flush may take to send what is queued.
    pub linger: Duration,
    /// Fixed-file slots this worker's ring gets (capped by RLIMIT_NOFILE).
    pub fixed_slots: u32,
    /// How long a wait may hold on for more completions once one is ready, when the last turn
    /// showed load (see `batch_for`); zero: never.
    pub batch_wait: Duration,
}

impl WorkerConfig {
    /// Settings for a worker that only needs to exist (tests, tools): small ring, default
    /// buffers, no pinning.
    pub fn basic(index: usize, fixed_slots: u32) -> WorkerConfig {
        WorkerConfig {
            index,
            pin_cpu: false,
            ring_entries: 4096,
            buffer_size: 16 * 1024,
            buffer_count: 1024,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(2),
            linger: Duration::from_secs(5),
            fixed_slots,
            batch_wait: Duration::ZERO,
        }
    }
}

/// The MySQL-aware side of a worker: it receives events and acts through [`Io`]. Every socket
/// event carries the socket and the owner token the service set with [`Io::set_owner`].
pub trait Service {
    /// Messages other threads send this worker through its [`Inbox`].
    type Msg: Send + 'static;

    /// The worker's inbox, given before [`Service::on_start`] when the worker has one (so the
    /// service can hand threads of its own a way to wake the worker).
    fn on_inbox(&mut self, _inbox: Arc<Inbox<Self::Msg>>) {}
    /// Called once on the worker's thread before the loop starts.
    fn on_start(&mut self, _io: &mut Io) {}
    /// A client connection was accepted on listener number `listener` (the index in the list
    /// the worker was built with), from `peer`. The default closes it.
    fn on_accept(
        &mut self,
        io: &mut Io,
        _listener: usize,
        sock: SockId,
        _peer: Option<SocketAddr>,
    ) {
        io.close(sock);
    }
    /// A socket created by [`Io::connect`] connected, or failed to.
    fn on_connect(&mut self, io: &mut Io, sock: SockId, owner: u64, result: io::Result<()>);
    /// Bytes arrived. `data` is valid only during the call; `buf` may be passed to
    /// [`Io::send_buf`] (zero copy) or kept with [`Io::hold`].
    fn on_data(&mut self, io: &mut Io, sock: SockId, owner: u64, data: &[u8], buf: BufRef);
    /// The peer closed (`None`) or the socket failed; no more data will arrive.
    fn on_eof(&mut self, io: &mut Io, sock: SockId, owner: u64, error: Option<io::Error>);
    /// A send completed; `queued` bytes remain queued for this socket.
    fn on_sent(&mut self, _io: &mut Io, _sock: SockId, _owner: u64, _queued: usize) {}
    /// A closed socket is gone: its slot is free and nothing of it remains.
    fn on_released(&mut self, _io: &mut Io, _sock: SockId, _owner: u64) {}
    /// A timer set with [`Io::set_timer`] fired.
    fn on_timer(&mut self, _io: &mut Io, _token: u64) {}
    /// A message from the inbox.
    fn on_message(&mut self, _io: &mut Io, _msg: Self::Msg) {}
    /// Once per loop turn, after the turn's completions, timers and messages.
    fn on_turn(&mut self, _io: &mut Io) {}
    /// About every [`TICK`].
    fn on_tick(&mut self, _io: &mut Io, _now: Instant) {}
    /// SIGINT/SIGTERM (or the shutdown flag): listeners are closed; finish in-flight work.
    fn on_shutdown(&mut self, _io: &mut Io) {}
    /// True when the service holds no connection any more.
    fn is_drained(&self) -> bool;
    /// The drain timeout passed: close everything now.
    fn abort_all(&mut self, _io: &mut Io) {}
}

/// Whether the loop goes on after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Continue,
    Done,
}

/// A worker thread's whole state.
pub struct Worker<S: Service> {
    pub io: Io,
    pub service: S,
    inbox: Option<Arc<Inbox<S::Msg>>>,
    shutdown: Arc<AtomicBool>,
    shared: Arc<SharedStats>,
    drain_timeout: Duration,
    batch_wait: Duration,
    /// Completions the last turn reaped (the load the next wait is sized by).
    reaped: usize,
    cqes: Vec<Cqe>,
    fired: Vec<u64>,
    msgs: Vec<S::Msg>,
    started: bool,
    last_tick: Instant,
    drain_deadline: Option<Instant>,
    aborted: bool,
}

/// What a worker is built from besides its settings.
pub struct Parts<S: Service> {
    pub service: S,
    pub shutdown: Arc<AtomicBool>,
    pub stats: Arc<SharedStats>,
    pub inbox: Option<Arc<Inbox<S::Msg>>>,
    pub budget: Arc<MemoryBudget>,
}

impl<S: Service> Parts<S> {
    /// A service with its own shutdown flag, counters, no inbox and no memory limit.
    pub fn new(service: S) -> Parts<S> {
        Parts {
            service,
            shutdown: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(SharedStats::default()),
            inbox: None,
            budget: Arc::new(MemoryBudget::new(0)),
        }
    }
}

impl<S: Service> Worker<S> {
    /// Builds the ring, the buffers and the listeners of one worker (called on its own thread,
    /// after pinning, so every allocation lands near its core).
    pub fn new(cfg: &WorkerConfig, listen: &[SocketAddr], parts: Parts<S>) -> io::Result<Self> {
        let driver = super::ring::Uring::new(cfg.ring_entries, cfg.fixed_slots)?;
        Worker::with_driver(cfg, Box::new(driver), listen, parts)
    }

    /// A worker on any [`Driver`] (the simulation's, in tests).
    pub fn with_driver(
        cfg: &WorkerConfig,
        mut driver: Box<dyn Driver>,
        listen: &[SocketAddr],
        parts: Parts<S>,
    ) -> io::Result<Self> {
        let bufs = BufMem::new(cfg.buffer_count, cfg.buffer_size)?;
        let mut listeners = Vec::with_capacity(listen.len());
        for addr in listen {
            listeners.push(Listener {
                id: driver.listen(addr)?,
                open: true,
                accepts: (0..ACCEPTS_PER_LISTENER)
                    .map(|_| AcceptSlot {
                        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
                        addr: unsafe { std::mem::zeroed() },
                        len: 0,
                        armed: false,
                    })
                    .collect(),
                retry_at: None,
            });
        }
        let mut io = Io::new(
            driver,
            bufs,
            cfg.fixed_slots,
            cfg.connect_timeout,
            cfg.linger,
            parts.budget,
            cfg.index,
        )?;
        io.listeners = listeners;
        if let Some(inbox) = &parts.inbox {
            io.wake = Some(WakeRead {
                fd: inbox.fd(),
                buf: Box::new(0),
                armed: false,
                fired: false,
            });
        }
        let now = io.now;
        let mut service = parts.service;
        if let Some(inbox) = &parts.inbox {
            service.on_inbox(Arc::clone(inbox));
        }
        Ok(Worker {
            io,
            service,
            inbox: parts.inbox,
            shutdown: parts.shutdown,
            shared: parts.stats,
            drain_timeout: cfg.drain_timeout,
            batch_wait: cfg.batch_wait,
            reaped: 0,
            cqes: Vec::with_capacity(1024),
            fired: Vec::new(),
            msgs: Vec::new(),
            started: false,
            last_tick: now,
            drain_deadline: None,
            aborted: false,
        })
    }

    /// The flag that asks this worker to drain and stop.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shutdown)
    }

    /// Runs until shutdown has been requested and the service has drained (or the drain timeout
    /// passed).
    pub fn run(&mut self) -> io::Result<()> {
        while self.turn()? == Turn::Continue {}
        self.publish_stats();
        Ok(())
    }

    /// One loop turn.
    pub fn turn(&mut self) -> io::Result<Turn> {
        if !self.started {
            self.start();
        }
        self.io.flush();
        self.io.driver.publish_buffers();
        let wait = self.wait_bound();
        let batch = self.batch(wait);
        self.io.stats.enter_calls += 1;
        self.io.driver.submit_and_wait(wait, batch)?;
        self.io.iov_arena.clear();
        self.io.msg_arena.clear();
        self.io.now = self.io.driver.now();
        self.dispatch_completions();
        self.io.rearm_starved();
        self.fire_timers();
        self.deliver_messages(false);
        self.service.on_turn(&mut self.io);
        self.deliver_events();
        let now = self.io.now;
        if now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            self.tick(now);
        }
        Ok(self.drain_step(now))
    }

    fn start(&mut self) {
        self.started = true;
        self.io.arm_accepts();
        self.io.arm_wake();
        self.service.on_start(&mut self.io);
        self.deliver_events();
    }

    /// How long the enter may wait: until the next timer, at most a tick; not at all while
    /// events are waiting for the service.
    fn wait_bound(&self) -> Duration {
        if !self.io.events.is_empty() || !self.io.deferred.is_empty() {
            return Duration::ZERO;
        }
        let now = self.io.now;
        match self.io.timers.next_deadline() {
            Some(at) => at.saturating_duration_since(now).min(TICK),
            None => TICK,
        }
    }

    /// How many completions the next wait asks for (see [`batch_for`]).
    fn batch(&self, wait: Duration) -> Batch {
        batch_for(self.reaped, wait, self.batch_wait)
    }

    fn dispatch_completions(&mut self) {
        self.cqes.clear();
        self.cqes.append(&mut self.io.deferred);
        self.io.driver.reap(&mut self.cqes);
        self.reaped = self.cqes.len();
        self.io.stats.cqes += self.cqes.len() as u64;
        let cqes = std::mem::take(&mut self.cqes);
        for &cqe in &cqes {
            self.io.complete(cqe);
            self.deliver_events();
        }
        self.cqes = cqes;
    }

    /// Hands every pending event to the service (callbacks may add more).
    fn deliver_events(&mut self) {
        while let Some(ev) = self.io.events.pop_front() {
            self.deliver(ev);
        }
    }

    fn deliver(&mut self, ev: Event) {
        let (io, svc) = (&mut self.io, &mut self.service);
        match ev {
            Event::Accepted {
                listener,
                sock,
                peer,
            } => svc.on_accept(io, listener, sock, peer),
            Event::Connected {
                sock,
                owner,
                result,
            } => svc.on_connect(io, sock, owner, result),
            Event::Data { sock, owner, buf } => {
                let data = io.bufs.slice(buf);
                // SAFETY: the delivery reference holds the buffer until `release_buf` below, so
                // neither the kernel nor another connection writes it while `data` lives; the
                // slice is detached from `io`'s borrow only so the service can also call `&mut
                // Io` methods, none of which frees or writes a held buffer.
                let data: &[u8] = unsafe { std::slice::from_raw_parts(data.as_ptr(), data.len()) };
                svc.on_data(io, sock, owner, data, buf);
                io.release_buf(buf.bid);
            }
            Event::Eof { sock, owner, error } => svc.on_eof(io, sock, owner, error),
            Event::Sent {
                sock,
                owner,
                queued,
            } => svc.on_sent(io, sock, owner, queued),
            Event::Released { sock, owner } => svc.on_released(io, sock, owner),
        }
    }

    fn fire_timers(&mut self) {
        let now = self.io.now;
        self.io.timers.expire(now, &mut self.fired);
        let fired = std::mem::take(&mut self.fired);
        for &token in &fired {
            if token & RUNTIME_TIMER != 0 {
                self.io.on_runtime_timer(token);
            } else {
                self.service.on_timer(&mut self.io, token);
            }
            self.deliver_events();
        }
        self.fired = fired;
        self.fired.clear();
    }

    /// Delivers the inbox's messages when its eventfd fired (and on every tick, so a driver
    /// without a real eventfd read still gets them).
    fn deliver_messages(&mut self, force: bool) {
        let woken = self.io.wake.as_mut().is_some_and(|w| {
            let fired = w.fired;
            w.fired = false;
            fired
        });
        if !woken && !force {
            return;
        }
        self.io.arm_wake();
        if let Some(inbox) = &self.inbox {
            inbox.drain(&mut self.msgs);
        }
        for msg in std::mem::take(&mut self.msgs) {
            self.service.on_message(&mut self.io, msg);
            self.deliver_events();
        }
    }

    fn tick(&mut self, now: Instant) {
        self.io.arm_accepts();
        self.io.socks.release_idle(SWEEP_PER_TICK);
        self.deliver_messages(true);
        self.service.on_tick(&mut self.io, now);
        self.deliver_events();
        self.publish_stats();
    }

    /// Starts the drain when shutdown was requested, and says when the loop is done.
    fn drain_step(&mut self, now: Instant) -> Turn {
        if self.drain_deadline.is_none() && self.shutdown.load(Ordering::Relaxed) {
            self.drain_deadline = Some(now + self.drain_timeout);
            self.io.close_listeners();
            self.service.on_shutdown(&mut self.io);
            self.deliver_events();
        }
        let Some(deadline) = self.drain_deadline else {
            return Turn::Continue;
        };
        if self.service.is_drained() && self.io.socks.is_empty() {
            return Turn::Done;
        }
        if now >= deadline && !self.aborted {
            self.aborted = true;
            log::warn!(
                "worker {}: drain timeout passed, closing the remaining connections",
                self.io.worker
            );
            self.service.abort_all(&mut self.io);
            self.deliver_events();
        }
        if self.aborted && now >= deadline + Duration::from_secs(2) {
            return Turn::Done;
        }
        Turn::Continue
    }

    fn publish_stats(&mut self) {
        self.io.stats.buffers_free = u64::from(self.io.bufs.free());
        self.io.stats.fixed_slots_in_use = u64::from(self.io.socks.slots_in_use());
        self.io.stats.memory_bytes = self.io.owned_bytes as u64;
        self.shared.store(&self.io.stats);
    }
}

/// How many completions a wait of at most `wait` asks for after a turn that reaped `reaped`. A
/// turn that reaped few (low load) asks for one, so a lone query is never held back; after a
/// busy turn it asks for half as many as that turn had, for at most `batch_wait` once the first
/// is ready. Never with a zero wait (the kernel would stretch it to the min-wait).
fn batch_for(reaped: usize, wait: Duration, batch_wait: Duration) -> Batch {
    if batch_wait.is_zero() || wait.is_zero() || reaped < BUSY_TURN {
        return Batch::ONE;
    }
    Batch {
        want: (reaped / 2).min(MAX_BATCH) as u32,
        min_wait: batch_wait,
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn waits_batch_only_after_busy_turns_and_never_with_a_zero_wait() {
        let us50 = Duration::from_micros(50);
        assert_eq!(batch_for(3, TICK, us50), Batch::ONE);
        assert_eq!(batch_for(BUSY_TURN - 1, TICK, us50), Batch::ONE);
        assert_eq!(
            batch_for(20, TICK, us50),
            Batch {
                want: 10,
                min_wait: us50
            }
        );
        assert_eq!(batch_for(1000, TICK, us50).want, MAX_BATCH as u32);
        assert_eq!(batch_for(20, Duration::ZERO, us50), Batch::ONE);
        assert_eq!(batch_for(20, TICK, Duration::ZERO), Batch::ONE);
    }
}
