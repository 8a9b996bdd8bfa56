//! The client role on ringproxy's io_uring worker: one [`LoadService`] per worker thread owns that
//! thread's share of the connections. It opens them (spread over `--ramp`, at most
//! [`MAX_CONNECTING`] logins in progress), logs each in ([`crate::client::Login`]), prepares the
//! statements with `--prepared`, then drives the workload: closed loop (qps, idle's active
//! connections), K in flight (pipeline), or an open-loop schedule (rate). Replies are verified
//! (rows, ERR) and their latency recorded in this thread's histogram while the measured phase
//! runs. On shutdown every connection finishes its replies in flight, sends COM_QUIT and closes.
//!
//! No allocation per query in steady state: query packets are built once and sent with
//! `Io::send_static`, send times sit in a preallocated queue, reply events in a reused vector.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringproxy::protocol::constants::{CLIENT_DEPRECATE_EOF, COM_STMT_EXECUTE};
use ringproxy::protocol::framing::write_packet;
use ringproxy::runtime::{BufRef, Io, Service, SockId};
use serde::Serialize;

use crate::args::{leak, Plan, Workload};
use crate::client::{Login, LoginError, Replies, Reply};

/// Logins in progress per thread at once when no ramp paces them: enough to keep a server busy,
/// few enough that its listen backlog does not overflow into SYN retries.
pub const MAX_CONNECTING: usize = 256;
/// A connection that has not finished its login this long after it was opened has failed.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Owner token of the rate workload's metronome socket.
const METRONOME: u64 = u64::MAX;
/// Error messages kept per thread (the first ones of each run are the useful ones).
const MAX_MESSAGES: usize = 8;
/// COM_QUIT, sequence 0.
static COM_QUIT_PACKET: [u8; 5] = [1, 0, 0, 0, 1];

/// Highest latency the histograms hold (ns); larger values are clamped to it.
pub const LATENCY_MAX_NS: u64 = 3_600_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds")
}

/// Error counts, by kind (the report's "errors" object).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Bytes that are not the MySQL protocol.
    pub protocol: u64,
    /// A reply with a row count other than --expect-rows.
    pub mismatch: u64,
    /// A connection that could not be opened or logged in.
    pub connect: u64,
    /// ERR replies.
    pub server_err: u64,
    /// The server closed an established connection.
    pub closed: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.protocol + self.mismatch + self.connect + self.server_err + self.closed
    }

    pub fn add(&mut self, o: &Errors) {
        self.protocol += o.protocol;
        self.mismatch += o.mismatch;
        self.connect += o.connect;
        self.server_err += o.server_err;
        self.closed += o.closed;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Protocol,
    Mismatch,
    Connect,
    ServerErr,
    Closed,
}

/// What the main thread controls and reads while the workers run.
#[derive(Debug)]
pub struct Control {
    /// When the run started (the ramp is measured from here).
    pub start: Instant,
    /// Set while the measured phase runs: replies are recorded only then.
    pub measuring: AtomicBool,
    /// The workers' shutdown flag: set at the end of the measured phase.
    pub stop: Arc<AtomicBool>,
    /// Per-thread counters, published about every tick.
    pub counters: Vec<Counters>,
}

/// One thread's counters as last published.
#[derive(Debug, Default)]
pub struct Counters {
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub queries: AtomicU64,
    pub errors: AtomicU64,
    pub open: AtomicU64,
    pub backlog: AtomicU64,
}

/// What one thread measured, merged by the main thread at the end.
pub struct ThreadResult {
    /// Latency of replies completed in the measured phase (ns).
    pub latency: Histogram<u64>,
    /// Open-to-logged-in time of each established connection (ns).
    pub connect_latency: Histogram<u64>,
    pub queries: u64,
    pub errors: Errors,
    pub established: u64,
    pub failed: u64,
    pub first_open: Option<Instant>,
    pub last_established: Option<Instant>,
    /// Rate workload: queries due by the schedule but not sent when the run ended.
    pub backlog: u64,
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not opened yet (waiting for its ramp slot).
    Pending,
    Connecting,
    Login,
    Preparing,
    Ready,
    /// Stopping: waits for the replies in flight, then quits.
    Quitting,
    /// COM_QUIT sent: waits for the server to close.
    QuitSent,
    Closed,
}

struct Conn {
    global: u32,
    sock: Option<SockId>,
    state: State,
    opened_at: Instant,
    login: Option<Box<Login>>,
    replies: Replies,
    /// Send (or intended send) time of each query in flight, oldest first.
    sent: VecDeque<Instant>,
    active: bool,
    /// With --prepared: the COM_STMT_EXECUTE packet of each query of the plan.
    exec: Vec<&'static [u8]>,
}

struct RateSchedule {
    /// Queries per second for this thread.
    per_sec: f64,
    start: Option<Instant>,
    /// Queries of the schedule sent so far.
    sent: u64,
}

/// The per-thread client service.
pub struct LoadService {
    plan: Arc<Plan>,
    control: Arc<Control>,
    thread: usize,
    conns: Vec<Conn>,
    next_open: usize,
    connecting: usize,
    /// Connections in the order they were opened, for the login timeout.
    login_queue: VecDeque<usize>,
    /// Sockets alive (connections and the metronome).
    open: usize,
    /// Rate workload: ready connections with nothing in flight.
    free: Vec<u32>,
    /// Idle workload: active connections logged in before the measured phase; they start
    /// querying when it starts, so the connect phase is measured without their load.
    parked: Vec<u32>,
    rate: RateSchedule,
    metronome: Option<SocketAddr>,
    metronome_sock: Option<SockId>,
    stopping: bool,
    rng: u64,
    scratch: Vec<Reply>,
    /// COM_STMT_EXECUTE packets by statement id, built once per id and shared by connections.
    exec_cache: HashMap<u32, &'static [u8]>,
    progress: Option<(mpsc::Sender<Histogram<u64>>, Histogram<u64>, Instant)>,
    last_publish: Instant,
    r: ThreadResult,
}

impl LoadService {
    /// The service of thread `thread`. `metronome`: address of the wake-up ticker (rate
    /// workload); `progress`: where to send this thread's interval histogram every second.
    pub fn new(
        plan: Arc<Plan>,
        control: Arc<Control>,
        thread: usize,
        metronome: Option<SocketAddr>,
        progress: Option<mpsc::Sender<Histogram<u64>>>,
    ) -> LoadService {
        let n = plan.connections_of(thread);
        let now = Instant::now();
        let conns = (0..n)
            .map(|i| {
                let global = thread as u32 + i * plan.threads as u32;
                Conn {
                    global,
                    sock: None,
                    state: State::Pending,
                    opened_at: now,
                    login: None,
                    replies: Replies::new(0),
                    sent: VecDeque::new(),
                    active: plan.is_active(global),
                    exec: Vec::new(),
                }
            })
            .collect();
        let per_sec = plan.rate * f64::from(n) / f64::from(plan.connections);
        LoadService {
            rng: 0x9e37_79b9_7f4a_7c15 ^ (thread as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9),
            plan,
            control,
            thread,
            conns,
            next_open: 0,
            connecting: 0,
            login_queue: VecDeque::new(),
            open: 0,
            free: Vec::new(),
            parked: Vec::new(),
            rate: RateSchedule {
                per_sec,
                start: None,
                sent: 0,
            },
            metronome,
            metronome_sock: None,
            stopping: false,
            scratch: Vec::with_capacity(64),
            exec_cache: HashMap::new(),
            progress: progress.map(|tx| (tx, new_histogram(), now)),
            last_publish: now,
            r: ThreadResult {
                latency: new_histogram(),
                connect_latency: new_histogram(),
                queries: 0,
                errors: Errors::default(),
                established: 0,
                failed: 0,
                first_open: None,
                last_established: None,
                backlog: 0,
                messages: Vec::new(),
            },
        }
    }

    /// The thread's measurements (call after the worker returned).
    pub fn finish(mut self) -> ThreadResult {
        self.publish();
        self.r.backlog = self.backlog(Instant::now());
        self.r
    }

    fn measuring(&self) -> bool {
        self.control.measuring.load(Ordering::Relaxed) && !self.control.stop.load(Ordering::Relaxed)
    }

    fn message(&mut self, m: String) {
        if self.r.messages.len() < MAX_MESSAGES {
            self.r.messages.push(m);
        }
    }

    fn count(&mut self, kind: Kind) {
        let e = &mut self.r.errors;
        match kind {
            Kind::Protocol => e.protocol += 1,
            Kind::Mismatch => e.mismatch += 1,
            Kind::Connect => e.connect += 1,
            Kind::ServerErr => e.server_err += 1,
            Kind::Closed => e.closed += 1,
        }
    }

    fn publish(&mut self) {
        let c = &self.control.counters[self.thread];
        c.established.store(self.r.established, Ordering::Relaxed);
        c.failed.store(self.r.failed, Ordering::Relaxed);
        c.queries.store(self.r.queries, Ordering::Relaxed);
        c.errors.store(self.r.errors.total(), Ordering::Relaxed);
        c.open.store(self.open as u64, Ordering::Relaxed);
        let backlog = self.backlog(Instant::now());
        c.backlog.store(backlog, Ordering::Relaxed);
    }

    /// Rate workload: queries due by now but not sent yet.
    fn backlog(&self, now: Instant) -> u64 {
        match self.rate.start {
            Some(start) if self.plan.workload == Workload::Rate => {
                self.due(start, now).saturating_sub(self.rate.sent)
            }
            _ => 0,
        }
    }

    fn due(&self, start: Instant, now: Instant) -> u64 {
        (now.saturating_duration_since(start).as_secs_f64() * self.rate.per_sec) as u64 + 1
    }

    /// Opens the connections whose ramp slot has come, keeping at most MAX_CONNECTING logins
    /// in progress.
    fn open_due(&mut self, io: &mut Io, now: Instant) {
        if self.stopping {
            return;
        }
        let n = u64::from(self.plan.connections);
        while self.next_open < self.conns.len() && self.connecting < MAX_CONNECTING {
            let ci = self.next_open;
            let g = u64::from(self.conns[ci].global);
            if !self.plan.ramp.is_zero() {
                let at = self.control.start + self.plan.ramp.mul_f64(g as f64 / n as f64);
                if at > now {
                    break;
                }
            }
            self.next_open += 1;
            let src = self.plan.source_of(self.conns[ci].global);
            let sock = io.connect_from(&self.plan.target, src, ci as u64);
            let c = &mut self.conns[ci];
            c.sock = Some(sock);
            c.state = State::Connecting;
            c.opened_at = now;
            self.connecting += 1;
            self.open += 1;
            self.login_queue.push_back(ci);
            self.r.first_open.get_or_insert(now);
        }
    }

    /// Closes connection `ci` as failed before it was established.
    fn fail_connect(&mut self, io: &mut Io, ci: usize, kind: Kind, msg: String) {
        let c = &mut self.conns[ci];
        if !matches!(c.state, State::Connecting | State::Login | State::Preparing) {
            return;
        }
        c.state = State::Closed;
        c.login = None;
        if let Some(s) = c.sock.take() {
            io.close(s);
            self.open -= 1;
        }
        self.connecting -= 1;
        self.r.failed += 1;
        self.count(kind);
        self.message(msg);
    }

    /// Closes an established connection after an error (or the server's close).
    fn drop_conn(&mut self, io: &mut Io, ci: usize, kind: Option<Kind>, msg: String) {
        let c = &mut self.conns[ci];
        if !matches!(c.state, State::Ready | State::Quitting | State::QuitSent) {
            return;
        }
        c.state = State::Closed;
        c.sent.clear();
        if let Some(s) = c.sock.take() {
            io.close(s);
            self.open -= 1;
        }
        if let Some(k) = kind {
            self.count(k);
            self.message(msg);
        }
    }

    /// Sends COM_QUIT; the socket is closed once the server has closed its side (`on_eof`).
    ///
    /// Why not `close_after_flush` at once: `Io::close` of a socket whose multishot recv is still
    /// armed cancels that recv, and on this kernel (6.18) every cancel walks all armed requests
    /// of the ring, so thousands of connections closing together cost quadratic time (seconds at
    /// 15,000 per ring; perf shows `io_cancel_req_match`). When the server closes first, the recv
    /// ends by itself with EOF and the close cancels nothing.
    fn quit(&mut self, io: &mut Io, ci: usize) {
        let c = &mut self.conns[ci];
        c.state = State::QuitSent;
        c.sent.clear();
        if let Some(s) = c.sock {
            io.send_static(s, &COM_QUIT_PACKET);
        }
    }

    fn established(&mut self, io: &mut Io, ci: usize, now: Instant) {
        let c = &mut self.conns[ci];
        c.state = State::Ready;
        let took = now.saturating_duration_since(c.opened_at).as_nanos() as u64;
        self.connecting -= 1;
        self.r.established += 1;
        self.r.last_established = Some(now);
        self.r
            .connect_latency
            .saturating_record(took.clamp(1, LATENCY_MAX_NS));
        self.start_workload(io, ci, now);
    }

    fn start_workload(&mut self, io: &mut Io, ci: usize, now: Instant) {
        if self.stopping {
            self.quit(io, ci);
            return;
        }
        if !self.conns[ci].active {
            return;
        }
        match self.plan.workload {
            Workload::Connect => {}
            Workload::Idle if !self.measuring() => self.parked.push(ci as u32),
            Workload::Idle | Workload::Qps => self.send_query(io, ci, now),
            Workload::Pipeline => {
                let depth = self.plan.depth;
                for _ in 0..depth {
                    self.send_query(io, ci, now);
                }
            }
            Workload::Rate => {
                self.free.push(ci as u32);
                self.dispatch_rate(io, now);
            }
        }
    }

    fn pick(&mut self) -> usize {
        if self.plan.queries.len() == 1 {
            return 0;
        }
        // xorshift64*: cheap, and good enough to pick from a weighted mix.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut w = ((x >> 32) % u64::from(self.plan.weight_total)) as u32;
        for (i, q) in self.plan.queries.iter().enumerate() {
            if w < q.weight {
                return i;
            }
            w -= q.weight;
        }
        0
    }

    fn send_query(&mut self, io: &mut Io, ci: usize, intended: Instant) {
        let qi = self.pick();
        let c = &mut self.conns[ci];
        let Some(sock) = c.sock else { return };
        let pkt = if self.plan.prepared {
            c.exec[qi]
        } else {
            self.plan.queries[qi].packet
        };
        if let Err(e) = c.replies.command(pkt) {
            self.drop_conn(io, ci, Some(Kind::Protocol), format!("query: {e}"));
            return;
        }
        c.sent.push_back(intended);
        io.send_static(sock, pkt);
    }

    /// Rate workload: hands every query due by now to a free connection.
    fn dispatch_rate(&mut self, io: &mut Io, now: Instant) {
        if self.plan.workload != Workload::Rate || self.stopping || !self.measuring() {
            return;
        }
        let start = *self.rate.start.get_or_insert(now);
        let due = self.due(start, now);
        while self.rate.sent < due {
            let Some(ci) = self.free.pop() else { break };
            let ci = ci as usize;
            let c = &self.conns[ci];
            if c.state != State::Ready || !c.sent.is_empty() {
                continue;
            }
            let intended =
                start + Duration::from_secs_f64(self.rate.sent as f64 / self.rate.per_sec);
            self.rate.sent += 1;
            self.send_query(io, ci, intended);
        }
    }

    fn exec_packet(&mut self, stmt_id: u32) -> &'static [u8] {
        self.exec_cache.entry(stmt_id).or_insert_with(|| {
            let mut p = Vec::with_capacity(10);
            p.push(COM_STMT_EXECUTE);
            p.extend_from_slice(&stmt_id.to_le_bytes());
            p.push(0); // CURSOR_TYPE_NO_CURSOR
            p.extend_from_slice(&1u32.to_le_bytes()); // iteration count
            let mut out = Vec::with_capacity(14);
            write_packet(&mut out, 0, &p);
            leak(out)
        })
    }

    fn on_login_data(&mut self, io: &mut Io, ci: usize, data: &[u8], now: Instant) {
        let mut out = Vec::new();
        let c = &mut self.conns[ci];
        let Some(login) = c.login.as_mut() else {
            return;
        };
        let res = login.feed(data, &self.plan.cred, &mut out);
        let sock = c.sock.expect("a connection logging in has a socket");
        if !out.is_empty() {
            io.send_owned(sock, out);
        }
        match res {
            Ok(None) => {}
            Ok(Some(caps)) => {
                c.login = None;
                c.replies = Replies::new(caps);
                c.sent = VecDeque::with_capacity(self.plan.depth);
                if self.plan.prepared {
                    c.state = State::Preparing;
                    c.exec = Vec::with_capacity(self.plan.queries.len());
                    let n = self.plan.queries.len();
                    for i in 0..n {
                        let pkt = self.plan.queries[i].prepare;
                        let c = &mut self.conns[ci];
                        if let Err(e) = c.replies.command(pkt) {
                            let msg = format!("prepare: {e}");
                            self.fail_connect(io, ci, Kind::Protocol, msg);
                            return;
                        }
                        io.send_static(sock, pkt);
                    }
                } else {
                    self.established(io, ci, now);
                }
            }
            Err(e) => {
                let kind = match e {
                    LoginError::Protocol(_) => Kind::Protocol,
                    _ => Kind::Connect,
                };
                self.fail_connect(io, ci, kind, e.to_string());
            }
        }
    }

    fn on_reply(&mut self, io: &mut Io, ci: usize, reply: Reply, now: Instant) {
        let state = self.conns[ci].state;
        if reply.unsolicited {
            let msg = format!(
                "the server sent error {} with no command pending",
                reply.error.unwrap_or(0)
            );
            self.message(msg);
            return;
        }
        match state {
            State::Preparing => {
                if let Some(code) = reply.error {
                    let sql = &self.plan.queries[self.conns[ci].exec.len()].sql;
                    let msg = format!("COM_STMT_PREPARE of {sql:?} failed with error {code}");
                    self.fail_connect(io, ci, Kind::ServerErr, msg);
                } else if reply.params > 0 {
                    let msg = format!(
                        "--prepared: the statement has {} parameters; loadgen binds none",
                        reply.params
                    );
                    self.fail_connect(io, ci, Kind::Connect, msg);
                } else {
                    let pkt = self.exec_packet(reply.stmt_id);
                    let c = &mut self.conns[ci];
                    c.exec.push(pkt);
                    if c.exec.len() == self.plan.queries.len() {
                        self.established(io, ci, now);
                    }
                }
            }
            State::Ready | State::Quitting => {
                let c = &mut self.conns[ci];
                let popped = c.sent.pop_front();
                // The tracker ended every reply of this chunk already; the send times pop one by one.
                debug_assert!(c.replies.pending() <= c.sent.len());
                let Some(sent) = popped else {
                    self.drop_conn(io, ci, Some(Kind::Protocol), "a reply to no query".into());
                    return;
                };
                if self.measuring() {
                    let ns = now.saturating_duration_since(sent).as_nanos() as u64;
                    let ns = ns.clamp(1, LATENCY_MAX_NS);
                    self.r.latency.saturating_record(ns);
                    if let Some((_, h, _)) = self.progress.as_mut() {
                        h.saturating_record(ns);
                    }
                    self.r.queries += 1;
                }
                if let Some(code) = reply.error {
                    self.count(Kind::ServerErr);
                    if self.r.errors.server_err == 1 {
                        self.message(format!("a query failed with error {code}"));
                    }
                } else if let Some(want) = self.plan.expect_rows {
                    if reply.rows != want {
                        self.count(Kind::Mismatch);
                        if self.r.errors.mismatch == 1 {
                            self.message(format!(
                                "a reply had {} rows, --expect-rows is {want}",
                                reply.rows
                            ));
                        }
                    }
                }
                if state == State::Quitting || self.stopping {
                    if self.conns[ci].sent.is_empty() {
                        self.quit(io, ci);
                    }
                    return;
                }
                match self.plan.workload {
                    Workload::Rate => {
                        if self.conns[ci].sent.is_empty() {
                            self.free.push(ci as u32);
                        }
                    }
                    Workload::Connect => {}
                    Workload::Idle | Workload::Qps | Workload::Pipeline => {
                        self.send_query(io, ci, now)
                    }
                }
            }
            _ => {}
        }
    }

    fn on_command_data(&mut self, io: &mut Io, ci: usize, data: &[u8], now: Instant) {
        let mut events = std::mem::take(&mut self.scratch);
        events.clear();
        let res = self.conns[ci].replies.feed(data, &mut events);
        for ev in events.drain(..) {
            if matches!(
                self.conns[ci].state,
                State::Preparing | State::Ready | State::Quitting
            ) {
                self.on_reply(io, ci, ev, now);
            }
        }
        self.scratch = events;
        if let Err(e) = res {
            let msg = format!("reply: {e}");
            match self.conns[ci].state {
                State::Preparing => self.fail_connect(io, ci, Kind::Protocol, msg),
                _ => self.drop_conn(io, ci, Some(Kind::Protocol), msg),
            }
        }
    }

    fn check_login_timeouts(&mut self, io: &mut Io, now: Instant) {
        while let Some(&ci) = self.login_queue.front() {
            let c = &self.conns[ci];
            if !matches!(c.state, State::Connecting | State::Login | State::Preparing) {
                self.login_queue.pop_front();
                continue;
            }
            if now.saturating_duration_since(c.opened_at) < LOGIN_TIMEOUT {
                break;
            }
            self.login_queue.pop_front();
            let msg = format!(
                "connection not logged in {} s after it was opened",
                LOGIN_TIMEOUT.as_secs()
            );
            self.fail_connect(io, ci, Kind::Connect, msg);
        }
    }
}

impl Service for LoadService {
    type Msg = ();

    fn on_start(&mut self, io: &mut Io) {
        if let Some(addr) = self.metronome {
            self.metronome_sock = Some(io.connect(&addr, METRONOME));
            self.open += 1;
        }
        self.open_due(io, Instant::now());
        self.publish();
    }

    fn on_connect(&mut self, io: &mut Io, sock: SockId, owner: u64, result: io::Result<()>) {
        if owner == METRONOME {
            if let Err(e) = result {
                log::warn!("rate metronome unreachable ({e}): sends follow the 50 ms tick");
                self.metronome_sock = None;
                self.open -= 1;
            }
            return;
        }
        let ci = owner as usize;
        if self.conns.get(ci).and_then(|c| c.sock) != Some(sock) {
            return;
        }
        match result {
            Ok(()) => {
                let c = &mut self.conns[ci];
                c.state = State::Login;
                let login = match self.plan.deprecate_eof {
                    true => Login::new(),
                    false => Login::without(CLIENT_DEPRECATE_EOF),
                };
                c.login = Some(Box::new(login));
            }
            Err(e) => {
                let msg = format!("connect to {}: {e}", self.plan.target);
                self.fail_connect(io, ci, Kind::Connect, msg);
                self.open_due(io, Instant::now());
            }
        }
    }

    fn on_data(&mut self, io: &mut Io, sock: SockId, owner: u64, data: &[u8], _buf: BufRef) {
        let now = Instant::now();
        if owner != METRONOME {
            let ci = owner as usize;
            if self.conns.get(ci).and_then(|c| c.sock) == Some(sock) {
                match self.conns[ci].state {
                    State::Login => self.on_login_data(io, ci, data, now),
                    State::Preparing | State::Ready | State::Quitting => {
                        self.on_command_data(io, ci, data, now)
                    }
                    _ => {}
                }
            }
        }
        if self.next_open < self.conns.len() {
            self.open_due(io, now);
        }
        self.dispatch_rate(io, now);
    }

    fn on_eof(&mut self, io: &mut Io, sock: SockId, owner: u64, error: Option<io::Error>) {
        if owner == METRONOME {
            io.close(sock);
            if self.metronome_sock.take().is_some() {
                self.open -= 1;
            }
            return;
        }
        let ci = owner as usize;
        if self.conns.get(ci).and_then(|c| c.sock) != Some(sock) {
            return;
        }
        let why = match &error {
            Some(e) => e.to_string(),
            None => "closed by the server".to_string(),
        };
        match self.conns[ci].state {
            State::Connecting | State::Login | State::Preparing => {
                let msg = format!("connection {why} before the login completed");
                self.fail_connect(io, ci, Kind::Connect, msg);
                self.open_due(io, Instant::now());
            }
            State::Ready | State::Quitting => {
                let kind = (!self.stopping).then_some(Kind::Closed);
                self.drop_conn(io, ci, kind, format!("connection {why}"));
            }
            State::QuitSent => self.drop_conn(io, ci, None, String::new()),
            _ => {}
        }
    }

    fn on_tick(&mut self, io: &mut Io, now: Instant) {
        if !self.stopping {
            self.check_login_timeouts(io, now);
            self.open_due(io, now);
            self.dispatch_rate(io, now);
            if self.measuring() {
                for ci in std::mem::take(&mut self.parked) {
                    self.send_query(io, ci as usize, now);
                }
            }
        }
        if let Some((tx, h, last)) = self.progress.as_mut() {
            if now.saturating_duration_since(*last) >= Duration::from_secs(1) {
                *last = now;
                let _ = tx.send(h.clone());
                h.reset();
            }
        }
        if now.saturating_duration_since(self.last_publish) >= Duration::from_millis(50) {
            self.last_publish = now;
            self.publish();
        }
    }

    fn on_shutdown(&mut self, io: &mut Io) {
        self.stopping = true;
        let now = Instant::now();
        self.r.backlog = self.backlog(now);
        let mut not_opened = 0u64;
        for ci in 0..self.conns.len() {
            match self.conns[ci].state {
                State::Pending => {
                    self.conns[ci].state = State::Closed;
                    not_opened += 1;
                }
                State::Connecting | State::Login | State::Preparing => {
                    let msg = "connection not established when the run ended".to_string();
                    self.fail_connect(io, ci, Kind::Connect, msg);
                }
                State::Ready => {
                    if self.conns[ci].sent.is_empty() {
                        self.quit(io, ci);
                    } else {
                        self.conns[ci].state = State::Quitting;
                    }
                }
                State::Quitting | State::QuitSent | State::Closed => {}
            }
        }
        if not_opened > 0 {
            self.r.failed += not_opened;
            self.r.errors.connect += not_opened;
            self.message(format!(
                "{not_opened} connections not opened when the run ended"
            ));
        }
        if let Some(s) = self.metronome_sock.take() {
            io.close(s);
            self.open -= 1;
        }
        self.publish();
    }

    fn is_drained(&self) -> bool {
        self.open == 0
    }

    fn abort_all(&mut self, io: &mut Io) {
        for c in &mut self.conns {
            if let Some(s) = c.sock.take() {
                io.close(s);
            }
            c.state = State::Closed;
        }
        if let Some(s) = self.metronome_sock.take() {
            io.close(s);
        }
        self.open = 0;
    }
}
