//! Tests of the worker loop on the simulated ring: a byte-echo service under every fault the
//! simulation injects, for many seeds, with the worker's invariants checked after every turn and
//! nothing left behind at the end; timers, the inbox, pauses and the linger deadline.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::inbox::Inbox;
use super::sim::{Faults, PeerAction, Rng, SimHandle, SimPeer};
use super::{BufRef, Io, Parts, Service, SockId, Turn, Worker, WorkerConfig};

const LISTEN: &str = "127.0.0.1:6033";
/// Echo output queued above which the echo stops reading (and resumes below half).
const HIGH: usize = 8 * 1024;

/// Sends back every byte it receives; closes after the peer closed and the echo is out.
#[derive(Default)]
struct Echo {
    open: usize,
    released: usize,
    timers: Vec<(u64, Instant)>,
    messages: Vec<u32>,
}

impl Service for Echo {
    type Msg = u32;

    fn on_accept(&mut self, io: &mut Io, _l: usize, sock: SockId, peer: Option<SocketAddr>) {
        assert!(peer.is_some(), "the accept reports the peer address");
        io.set_owner(sock, 1);
        self.open += 1;
    }

    fn on_connect(&mut self, _io: &mut Io, _s: SockId, _o: u64, _r: std::io::Result<()>) {}

    fn on_data(&mut self, io: &mut Io, sock: SockId, _o: u64, data: &[u8], buf: BufRef) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!(
                "echo {sock:?} recv {} bytes bid {} first {:02x?}",
                data.len(),
                buf.bid,
                &data[..data.len().min(4)]
            );
        }
        io.send_buf(sock, buf);
        if io.queued(sock) > HIGH {
            io.pause_read(sock);
        }
    }

    fn on_eof(&mut self, io: &mut Io, sock: SockId, _o: u64, _e: Option<std::io::Error>) {
        io.close_after_flush(sock);
    }

    fn on_sent(&mut self, io: &mut Io, sock: SockId, _o: u64, queued: usize) {
        if queued <= HIGH / 2 {
            io.resume_read(sock);
        }
    }

    fn on_released(&mut self, _io: &mut Io, _s: SockId, owner: u64) {
        assert_eq!(owner, 1);
        self.open -= 1;
        self.released += 1;
    }

    fn on_timer(&mut self, io: &mut Io, token: u64) {
        self.timers.push((token, io.now()));
    }

    fn on_message(&mut self, _io: &mut Io, msg: u32) {
        self.messages.push(msg);
    }

    fn is_drained(&self) -> bool {
        self.open == 0
    }
}

/// What an echo client saw.
#[derive(Debug, Default)]
struct EchoLog {
    done: usize,
    vanished: usize,
    mismatches: Vec<String>,
}

/// Sends `total` seeded bytes in random pieces and checks they come back in order.
struct EchoClient {
    id: usize,
    rng: Rng,
    sent: Vec<u8>,
    total: usize,
    got: usize,
    log: Rc<RefCell<EchoLog>>,
    closed: bool,
    slow_after: Option<usize>,
}

impl SimPeer for EchoClient {
    fn on_bytes(&mut self, data: &[u8]) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!(
                "client {} gets {} bytes at {} first {:02x?} want {:02x?}",
                self.id,
                data.len(),
                self.got,
                &data[..data.len().min(4)],
                &self.sent[self.got.min(self.sent.len())..(self.got + 4).min(self.sent.len())]
            );
        }
        let want = &self.sent[self.got.min(self.sent.len())..];
        if !want.starts_with(data) {
            self.log.borrow_mut().mismatches.push(format!(
                "client {}: got {} bytes at {} that differ from what it sent",
                self.id,
                data.len(),
                self.got
            ));
        }
        self.got += data.len();
    }

    fn poll(&mut self, _now: Instant, out: &mut Vec<u8>) -> PeerAction {
        if self.sent.len() < self.total {
            let n = (1 + self.rng.below(3000) as usize).min(self.total - self.sent.len());
            for _ in 0..n {
                let b = self.rng.next_u64() as u8;
                self.sent.push(b);
                out.push(b);
            }
            return PeerAction::Continue;
        }
        if self.got >= self.total && !self.closed {
            self.closed = true;
            self.log.borrow_mut().done += 1;
            return PeerAction::Close;
        }
        PeerAction::Continue
    }

    fn on_closed(&mut self) {
        if self.closed {
            return;
        }
        // Closed by the worker first: after this peer vanished (or, for a slow reader, given
        // up on). A peer that vanished after it had everything back counts as done.
        self.closed = true;
        let mut log = self.log.borrow_mut();
        if self.got >= self.total {
            log.done += 1;
        } else {
            log.vanished += 1;
        }
    }

    fn window(&self) -> usize {
        match self.slow_after {
            Some(n) => n.saturating_sub(self.got),
            None => usize::MAX,
        }
    }
}

fn worker(sim: &SimHandle, parts: Parts<Echo>, linger: Duration) -> Worker<Echo> {
    let cfg = WorkerConfig {
        buffer_count: 16,
        buffer_size: 4096,
        linger,
        ..WorkerConfig::basic(0, 256)
    };
    Worker::with_driver(&cfg, sim.driver(), &[LISTEN.parse().unwrap()], parts).unwrap()
}

/// Runs turns until `done` or `max_turns`, checking the invariants after each.
fn run_until(w: &mut Worker<Echo>, max_turns: usize, done: impl Fn(&Worker<Echo>) -> bool) {
    for turn in 0..max_turns {
        if done(w) {
            return;
        }
        let t = w.turn().unwrap();
        if let Err(e) = w.io.invariants(&[]) {
            panic!("turn {turn}: {e}");
        }
        if t == Turn::Done {
            return;
        }
    }
    panic!("not done after {max_turns} turns");
}

/// Shuts the worker down and checks that nothing is left: no socket, no held buffer, no slot,
/// no operation in flight but the cancelled accepts.
fn shut_down_clean(w: &mut Worker<Echo>, sim: &SimHandle, seed: u64) {
    w.io.stats.refused = 0;
    let flag = Arc::clone(&w.shutdown_flag());
    flag.store(true, Ordering::Relaxed);
    run_until(w, 100_000, |_| false);
    assert_eq!(w.io.sockets(), 0, "seed {seed}: sockets left");
    let (free, count) = w.io.buffers_free();
    assert_eq!(free, u32::from(count), "seed {seed}: buffers still held");
    assert_eq!(
        sim.slots_in_use(),
        0,
        "seed {seed}: fixed-file slots in use"
    );
    assert_eq!(
        w.io.memory_used(),
        0,
        "seed {seed}: owned bytes not accounted back"
    );
}

fn echo_run(seed: u64, faults: Faults, clients: usize) {
    let sim = SimHandle::new(seed, faults, 256);
    let mut w = worker(&sim, Parts::new(Echo::default()), Duration::from_secs(5));
    let log = Rc::new(RefCell::new(EchoLog::default()));
    let mut rng = Rng::new(seed ^ 0xec40);
    for id in 0..clients {
        sim.connect_client(
            0,
            Box::new(EchoClient {
                id,
                rng: Rng::new(rng.next_u64()),
                sent: Vec::new(),
                total: rng.below(40_000) as usize,
                got: 0,
                log: Rc::clone(&log),
                closed: false,
                slow_after: None,
            }),
        );
    }
    let finished = |w: &Worker<Echo>| {
        let l = log.borrow();
        l.done + l.vanished == clients && w.service.open == 0
    };
    for _ in 0..200_000 {
        if finished(&w) {
            break;
        }
        w.turn().unwrap();
        if let Err(e) = w.io.invariants(&[]) {
            panic!("seed {seed}: {e}");
        }
    }
    assert!(
        finished(&w),
        "seed {seed}: not done: {:?}, {} open, {} sockets, sim ops {}, stats {:?}",
        log.borrow(),
        w.service.open,
        w.io.sockets(),
        sim.ops_in_flight(),
        w.io.stats
    );
    let l = log.borrow();
    assert!(l.mismatches.is_empty(), "seed {seed}: {:?}", l.mismatches);
    assert_eq!(l.done + l.vanished, clients, "seed {seed}");
    assert_eq!(
        w.service.released, clients,
        "seed {seed}: every socket released once"
    );
    drop(l);
    shut_down_clean(&mut w, &sim, seed);
}

#[test]
fn echo_without_faults() {
    echo_run(1, Faults::none(), 20);
}

/// Many seeds with every fault: bytes always come back in order, nothing leaks.
#[test]
fn echo_under_faults_for_many_seeds() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let first: u64 = std::env::var("SIM_SEED_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        echo_run(seed, Faults::some(), 12);
    }
}

/// A peer that stops reading holds a closed socket's output: the linger deadline closes it hard.
#[test]
fn a_socket_that_never_drains_is_closed_at_its_linger_deadline() {
    let sim = SimHandle::new(7, Faults::none(), 64);
    let mut w = worker(&sim, Parts::new(Echo::default()), Duration::from_secs(3));
    let log = Rc::new(RefCell::new(EchoLog::default()));
    sim.connect_client(
        0,
        Box::new(EchoClient {
            id: 0,
            rng: Rng::new(3),
            sent: Vec::new(),
            total: 30_000,
            got: 0,
            log: Rc::clone(&log),
            closed: false,
            slow_after: Some(1000),
        }),
    );
    run_until(&mut w, 10_000, |w| {
        w.service.open == 1 && w.io.stats.read_pauses > 0
    });
    let start = sim.now();
    // The service gives up on the client: close once flushed. It never reads again.
    let socks: Vec<SockId> = w.io.socks.ids();
    for s in socks {
        w.io.close_after_flush(s);
    }
    run_until(&mut w, 100_000, |w| w.service.released == 1);
    let waited = sim.now().duration_since(start);
    assert!(
        waited >= Duration::from_secs(3),
        "closed before its deadline: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(4),
        "closed long after its deadline: {waited:?}"
    );
    assert_eq!(w.io.stats.linger_timeouts, 1);
    shut_down_clean(&mut w, &sim, 7);
}

#[test]
fn timers_fire_in_order_and_not_early() {
    let sim = SimHandle::new(3, Faults::none(), 16);
    let mut w = worker(&sim, Parts::new(Echo::default()), Duration::from_secs(5));
    let t0 = w.io.now();
    for (token, ms) in [(3u64, 2500u64), (1, 20), (2, 700)] {
        w.io.set_timer(t0 + Duration::from_millis(ms), token);
    }
    run_until(&mut w, 10_000, |w| w.service.timers.len() == 3);
    let fired: Vec<u64> = w.service.timers.iter().map(|t| t.0).collect();
    assert_eq!(fired, vec![1, 2, 3]);
    for (token, at) in &w.service.timers {
        let due = t0 + Duration::from_millis([0, 20, 700, 2500][*token as usize]);
        assert!(*at >= due, "timer {token} fired early");
        assert!(
            *at < due + Duration::from_millis(60),
            "timer {token} fired late"
        );
    }
}

#[test]
fn inbox_messages_wake_the_worker() {
    let sim = SimHandle::new(5, Faults::none(), 16);
    let inbox = Arc::new(Inbox::new().unwrap());
    let mut parts = Parts::new(Echo::default());
    parts.inbox = Some(Arc::clone(&inbox));
    let mut w = worker(&sim, parts, Duration::from_secs(5));
    w.turn().unwrap();
    inbox.send(11);
    inbox.send(12);
    run_until(&mut w, 100, |w| w.service.messages.len() == 2);
    assert_eq!(w.service.messages, vec![11, 12]);
}

/// Queues `chunks` owned pieces of `size` bytes for every piece of data it gets; with
/// `close_after`, closes the socket that long after (a timer), whatever is in flight.
struct Burst {
    chunks: usize,
    size: usize,
    close_after: Option<Duration>,
    sock: Option<SockId>,
    released: usize,
}

impl Service for Burst {
    type Msg = ();

    fn on_accept(&mut self, io: &mut Io, _l: usize, sock: SockId, _p: Option<SocketAddr>) {
        io.set_owner(sock, 1);
        self.sock = Some(sock);
    }

    fn on_connect(&mut self, _io: &mut Io, _s: SockId, _o: u64, _r: std::io::Result<()>) {}

    fn on_data(&mut self, io: &mut Io, sock: SockId, _o: u64, _d: &[u8], _b: BufRef) {
        for _ in 0..self.chunks {
            io.send_owned(sock, vec![b'b'; self.size]);
        }
        if let Some(after) = self.close_after {
            io.set_timer(io.now() + after, 9);
        }
    }

    fn on_eof(&mut self, io: &mut Io, sock: SockId, _o: u64, _e: Option<std::io::Error>) {
        io.close(sock);
    }

    fn on_timer(&mut self, io: &mut Io, _token: u64) {
        if let Some(s) = self.sock {
            io.close(s);
        }
    }

    fn on_released(&mut self, _io: &mut Io, _s: SockId, _o: u64) {
        self.released += 1;
    }

    fn is_drained(&self) -> bool {
        true
    }
}

impl Burst {
    fn new(chunks: usize, size: usize, close_after: Option<Duration>) -> Burst {
        Burst {
            chunks,
            size,
            close_after,
            sock: None,
            released: 0,
        }
    }
}

/// Sends one byte, then reads `window` bytes at most.
struct Poke {
    sent: bool,
    window: usize,
    got: usize,
}

impl SimPeer for Poke {
    fn on_bytes(&mut self, data: &[u8]) {
        self.got += data.len();
    }
    fn poll(&mut self, _now: Instant, out: &mut Vec<u8>) -> PeerAction {
        if !self.sent {
            self.sent = true;
            out.push(1);
        }
        PeerAction::Continue
    }
    fn on_closed(&mut self) {}
    fn window(&self) -> usize {
        self.window.saturating_sub(self.got)
    }
}

impl Poke {
    fn new(sent: bool, window: usize) -> Box<Poke> {
        Box::new(Poke {
            sent,
            window,
            got: 0,
        })
    }
}

fn burst_worker(sim: &SimHandle, burst: Burst) -> Worker<Burst> {
    let cfg = WorkerConfig::basic(0, 64);
    let listen = [LISTEN.parse().unwrap()];
    Worker::with_driver(&cfg, sim.driver(), &listen, Parts::new(burst)).unwrap()
}

/// Item 6: MSG_MORE only when a socket's queue does not fit one send (64 pieces), never
/// otherwise: 100 pieces go as one send with MSG_MORE and one without; 10 as one without.
#[test]
fn item6_msg_more_only_when_the_queue_does_not_fit_one_send() {
    for (chunks, sends, with_more) in [(10, 1, 0), (100, 2, 1)] {
        let sim = SimHandle::new(11, Faults::none(), 64);
        let mut w = burst_worker(&sim, Burst::new(chunks, 100, None));
        sim.connect_client(0, Poke::new(false, usize::MAX));
        for _ in 0..200 {
            w.turn().unwrap();
        }
        let net = sim.0.borrow();
        assert_eq!(
            (net.sends, net.sends_with_more),
            (sends, with_more),
            "{chunks} pieces"
        );
    }
}

/// Item 10: closing a socket while a send is in flight keeps the memory that send reads until
/// its completion; then it is all given back.
#[test]
fn item10_send_memory_stays_alive_until_its_send_completes() {
    let sim = SimHandle::new(12, Faults::none(), 64);
    let close_after = Some(Duration::from_millis(100));
    let mut w = burst_worker(&sim, Burst::new(8, 4096, close_after));
    // The peer takes 1000 bytes and then nothing: the send stays in flight.
    sim.connect_client(0, Poke::new(false, 1000));
    let mut held_while_closing = false;
    for _ in 0..2000 {
        w.turn().unwrap();
        w.io.invariants(&[]).unwrap();
        let closing =
            w.io.socks
                .iter()
                .any(|(_, s)| s.state == super::socks::SockState::Closing);
        if closing && w.io.memory_used() > 0 {
            held_while_closing = true;
        }
        if w.service.released == 1 {
            break;
        }
    }
    assert!(
        held_while_closing,
        "the in-flight chunks were freed at the close"
    );
    assert_eq!(w.service.released, 1);
    assert_eq!(w.io.memory_used(), 0, "given back at the send's completion");
}

/// A service that opens `n` connections at start.
struct Dialer(usize, usize);

impl Service for Dialer {
    type Msg = ();

    fn on_start(&mut self, io: &mut Io) {
        for i in 0..self.0 {
            let src = (i % 2 == 0).then(|| "127.0.0.3:0".parse().unwrap());
            io.connect_from(&"127.0.0.1:3306".parse().unwrap(), src, 1);
        }
    }

    fn on_connect(&mut self, io: &mut Io, sock: SockId, _o: u64, r: std::io::Result<()>) {
        assert!(r.is_ok(), "{r:?}");
        self.1 += 1;
        io.close(sock);
    }

    fn on_data(&mut self, _io: &mut Io, _s: SockId, _o: u64, _d: &[u8], _b: BufRef) {}

    fn on_eof(&mut self, io: &mut Io, sock: SockId, _o: u64, _e: Option<std::io::Error>) {
        io.close(sock);
    }

    fn is_drained(&self) -> bool {
        true
    }
}

/// Item 10: a linked socket-option → bind → connect → timeout chain always goes into one
/// submission, even when the queue is nearly full (the simulation asserts it at each submit).
#[test]
fn item10_connect_chains_are_never_split_across_submissions() {
    let sim = SimHandle::new(13, Faults::none(), 512);
    sim.add_server(
        "127.0.0.1:3306".parse().unwrap(),
        Box::new(|| Poke::new(true, usize::MAX)),
    );
    let cfg = WorkerConfig::basic(0, 512);
    let mut w = Worker::with_driver(&cfg, sim.driver(), &[], Parts::new(Dialer(200, 0))).unwrap();
    for _ in 0..2000 {
        w.turn().unwrap();
        if w.service.1 == 200 && w.io.sockets() == 0 {
            break;
        }
    }
    assert_eq!(w.service.1, 200, "every connect completed");
    assert_eq!(w.io.sockets(), 0);
}
