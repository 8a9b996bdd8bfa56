//! A simulated ring: a [`Driver`] that carries out every [`Op`] against simulated peers instead
//! of the kernel, deterministically from a seed, so the real worker and service code can be run
//! for thousands of seeds with faults injected: short reads, partial sends, buffer shortages
//! (ENOBUFS), multishot receives that end early, cancellations, completions in any order, peers
//! that close or vanish mid-stream, refused and hanging connects. Time is virtual: it moves only
//! when the worker would wait.
//!
//! The test side adds peers through [`SimHandle`]: clients that connect to the worker's
//! listeners, and servers the worker connects to. A peer is any [`SimPeer`]; it sees the bytes
//! the worker sent it and says what to send back. Modelled on TigerBeetle's simulator: one seed
//! decides everything, so a failing seed reproduces exactly.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::driver::{Batch, Cqe, Driver, Link, Op, Timeout, CQE_F_BUFFER, CQE_F_MORE};
use super::placement;

/// What a peer does after the worker sent it something or it was given a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAction {
    Continue,
    /// Close its side after its output (the worker reads EOF).
    Close,
    /// Vanish: a reset (the worker's reads and sends fail).
    Reset,
}

/// A simulated remote end of one connection.
pub trait SimPeer {
    /// Bytes the worker sent.
    fn on_bytes(&mut self, data: &[u8]);
    /// A turn: append what to send to `out`, and say whether to go on.
    fn poll(&mut self, now: Instant, out: &mut Vec<u8>) -> PeerAction;
    /// The worker closed (or shut down) the connection.
    fn on_closed(&mut self);
    /// The simulation made this peer vanish (a reset): it is gone.
    fn on_vanished(&mut self) {}
    /// Bytes the peer would take now (a slow reader says 0; its sends then wait).
    fn window(&self) -> usize {
        usize::MAX
    }
}

/// Probabilities (0.0..=1.0) of each fault, per opportunity.
#[derive(Debug, Clone)]
pub struct Faults {
    /// A receive delivers fewer bytes than it could.
    pub short_read: f64,
    /// A send sends fewer bytes than asked.
    pub partial_send: f64,
    /// A multishot receive ends (no F_MORE) after a completion.
    pub end_multishot: f64,
    /// A connect hangs until its timeout.
    pub hang_connect: f64,
    /// A peer vanishes (reset) at a turn.
    pub vanish: f64,
}

impl Faults {
    pub fn none() -> Faults {
        Faults {
            short_read: 0.0,
            partial_send: 0.0,
            end_multishot: 0.0,
            hang_connect: 0.0,
            vanish: 0.0,
        }
    }

    /// A mix of every fault, for seed sweeps.
    pub fn some() -> Faults {
        Faults {
            short_read: 0.3,
            partial_send: 0.3,
            end_multishot: 0.05,
            hang_connect: 0.02,
            vanish: 0.002,
        }
    }
}

/// Submission-queue entries of the simulated ring: few, so the worker often has to make room.
const SQ_ENTRIES: usize = 12;

/// splitmix64: small, fast, and good enough to drive a simulation.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / ((1u64 << 53) as f64)) < p
    }
}

/// A connection between a worker socket and a simulated peer.
struct Conn {
    peer: Box<dyn SimPeer>,
    /// Peer → worker bytes not yet received.
    rx: VecDeque<u8>,
    /// The peer closed its side (after `rx`).
    eof: bool,
    /// The peer vanished.
    reset: bool,
    /// The worker closed or shut down its side.
    closed: bool,
}

/// An operation the simulated kernel holds.
struct InFlight {
    op: Op,
    user_data: u64,
    link: Link,
    /// Bytes of a send, read at submission.
    data: Vec<u8>,
    /// When a link timeout fires (set when the op before it starts).
    deadline: Option<Instant>,
    /// The connect hangs (only its timeout ends it).
    hang: bool,
    /// The connection the operation's slot named when it was submitted: like the kernel's
    /// file reference, it stays even if the slot is closed and reused meanwhile.
    conn: Option<usize>,
    /// Submission order: a cancel reaches only operations submitted before it.
    order: u64,
}

/// A chain of linked operations; only the head runs.
struct Chain(VecDeque<InFlight>);

struct Listener {
    addr: SocketAddr,
    open: bool,
    backlog: VecDeque<(Box<dyn SimPeer>, SocketAddr)>,
}

/// Makes the peer for each connection to a simulated server address.
pub type ServerFactory = Box<dyn FnMut() -> Box<dyn SimPeer>>;

/// The simulated kernel and network.
pub struct SimNet {
    pub rng: Rng,
    pub faults: Faults,
    now: Instant,
    queued: Vec<(Op, u64, Link)>,
    chains: Vec<Chain>,
    cq: VecDeque<Cqe>,
    /// Fixed-file table: slot → connection (None: a socket not connected yet).
    slots: Vec<Option<Option<usize>>>,
    conns: Vec<Option<Conn>>,
    listeners: Vec<Listener>,
    servers: HashMap<SocketAddr, ServerFactory>,
    buf_base: *mut u8,
    buf_size: u32,
    buf_free: VecDeque<u16>,
    buf_returned: Vec<u16>,
    next_port: u16,
    /// Every completion delivered, for diagnostics.
    pub completions: u64,
    /// Operations submitted so far.
    submitted: u64,
    /// Sends submitted, and those of them with MSG_MORE.
    pub sends: u64,
    pub sends_with_more: u64,
}

/// The test's handle on the simulation (shared with the driver the worker owns).
#[derive(Clone)]
pub struct SimHandle(pub Rc<RefCell<SimNet>>);

/// The [`Driver`] the worker owns.
pub struct SimDriver(Rc<RefCell<SimNet>>);

impl SimHandle {
    /// A simulation with `fixed_slots` slots, seeded with `seed`.
    pub fn new(seed: u64, faults: Faults, fixed_slots: u32) -> SimHandle {
        SimHandle(Rc::new(RefCell::new(SimNet {
            rng: Rng::new(seed),
            faults,
            now: Instant::now(),
            queued: Vec::new(),
            chains: Vec::new(),
            cq: VecDeque::new(),
            slots: vec![None; fixed_slots as usize],
            conns: Vec::new(),
            listeners: Vec::new(),
            servers: HashMap::new(),
            buf_base: std::ptr::null_mut(),
            buf_size: 0,
            buf_free: VecDeque::new(),
            buf_returned: Vec::new(),
            next_port: 40000,
            completions: 0,
            submitted: 0,
            sends: 0,
            sends_with_more: 0,
        })))
    }

    /// The driver to build the worker with.
    pub fn driver(&self) -> Box<dyn Driver> {
        Box::new(SimDriver(Rc::clone(&self.0)))
    }

    /// Connections to `addr` get a peer from `factory`; others are refused.
    pub fn add_server(&self, addr: SocketAddr, factory: ServerFactory) {
        self.0.borrow_mut().servers.insert(addr, factory);
    }

    /// A client connects to listener number `listener`.
    pub fn connect_client(&self, listener: usize, peer: Box<dyn SimPeer>) {
        let mut net = self.0.borrow_mut();
        let port = net.next_port;
        net.next_port = net.next_port.wrapping_add(1).max(1024);
        let from = SocketAddr::from(([127, 0, 0, 1], port));
        net.listeners[listener].backlog.push_back((peer, from));
    }

    /// Operations the simulated kernel still holds (0 when everything has completed).
    pub fn ops_in_flight(&self) -> usize {
        let net = self.0.borrow();
        net.chains.iter().map(|c| c.0.len()).sum::<usize>() + net.queued.len()
    }

    /// Slots of the fixed-file table in use.
    pub fn slots_in_use(&self) -> usize {
        self.0.borrow().slots.iter().filter(|s| s.is_some()).count()
    }

    pub fn now(&self) -> Instant {
        self.0.borrow().now
    }
}

impl SimNet {
    fn alloc_slot(&mut self) -> Option<u32> {
        let i = self.slots.iter().position(Option::is_none)?;
        self.slots[i] = Some(None);
        Some(i as u32)
    }

    fn conn_of_slot(&self, slot: u32) -> Option<usize> {
        self.slots.get(slot as usize).copied().flatten().flatten()
    }

    fn post(&mut self, user_data: u64, result: i32, flags: u32) {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!(
                "sim: cqe {:?} res {result} flags {flags:#x}",
                super::op::decode(user_data)
            );
        }
        self.completions += 1;
        self.cq.push_back(Cqe {
            user_data,
            result,
            flags,
        });
    }

    /// Moves the queued submissions into chains, reading send data now (the worker keeps its
    /// msghdrs only until the submission).
    fn submit(&mut self) {
        // The worker must never submit half a chain: the kernel would run the first half
        // unlinked from the rest.
        if let Some((op, _, link)) = self.queued.last() {
            assert_eq!(
                *link,
                Link::None,
                "a linked chain was split across submissions at {op:?}"
            );
        }
        let mut chain: VecDeque<InFlight> = VecDeque::new();
        for (op, user_data, link) in std::mem::take(&mut self.queued) {
            let data = match op {
                Op::SendMsg { msg, flags, .. } => {
                    self.sends += 1;
                    self.sends_with_more += u64::from(flags & libc::MSG_MORE != 0);
                    // SAFETY: the worker keeps the msghdr, its iovecs and the memory they point
                    // to valid until this submission (msghdr) and the completion (the bytes).
                    unsafe { gather(msg) }
                }
                _ => Vec::new(),
            };
            let hang =
                matches!(op, Op::Connect { .. }) && self.rng.chance(self.faults.hang_connect);
            let conn = op_slot(&op).and_then(|slot| self.conn_of_slot(slot));
            self.submitted += 1;
            let order = self.submitted;
            chain.push_back(InFlight {
                op,
                user_data,
                link,
                data,
                deadline: None,
                hang,
                conn,
                order,
            });
            if link == Link::None {
                self.start_chain(std::mem::take(&mut chain));
            }
        }
        if !chain.is_empty() {
            self.start_chain(chain);
        }
    }

    fn start_chain(&mut self, mut chain: VecDeque<InFlight>) {
        self.arm_timeout(&mut chain);
        self.chains.push(Chain(chain));
    }

    /// Sets the deadline of a link timeout that follows the chain's head.
    fn arm_timeout(&self, chain: &mut VecDeque<InFlight>) {
        if let Some(Op::LinkTimeout { timeout }) = chain.get(1).map(|f| f.op) {
            // SAFETY: the worker keeps the timeout alive until the operation completes.
            let t: Timeout = unsafe { *timeout };
            let d = Duration::new(t.sec, t.nsec as u32);
            chain[1].deadline = Some(self.now + d);
        }
    }

    /// One step: completes one runnable operation or gives one peer a turn. False when nothing
    /// could happen without time passing.
    fn step(&mut self) -> bool {
        let n = self.chains.len();
        let start = self.rng.below(n as u64 + 1) as usize;
        for k in 0..=n {
            let i = (start + k) % (n + 1);
            if i == n {
                if self.peer_turn() {
                    return true;
                }
                continue;
            }
            if self.try_run(i) {
                return true;
            }
        }
        self.accept_ready()
    }

    /// Runs the head of chain `i` if it can complete now.
    fn try_run(&mut self, i: usize) -> bool {
        let head = &self.chains[i].0[0];
        let outcome = match head.op {
            Op::Accept { .. } => return false,
            Op::RecvMulti { .. } => return self.run_recv(i),
            Op::SendMsg { .. } => self.run_send(i),
            Op::Socket { .. } => match self.alloc_slot() {
                Some(s) => Some(s as i32),
                None => Some(-libc::ENFILE),
            },
            Op::SetSockOpt { .. } | Op::Bind { .. } => Some(0),
            Op::Connect { slot, addr, len } => {
                if head.hang {
                    return false;
                }
                Some(self.run_connect(slot, addr, len))
            }
            Op::LinkTimeout { .. } => Some(-libc::ETIME),
            Op::Shutdown { .. } => {
                self.shut(head.conn);
                Some(0)
            }
            Op::Close { slot } => {
                self.shut(head.conn);
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    *s = None;
                }
                Some(0)
            }
            Op::Cancel { target } => return self.run_cancel(i, |f| f.user_data == target),
            Op::CancelSlot { slot } => {
                return self.run_cancel(i, |f| op_slot(&f.op) == Some(slot));
            }
            Op::ReadWake { fd, buf } => {
                let mut v: u64 = 0;
                // SAFETY: fd is the worker's live non-blocking eventfd; v is 8 writable bytes.
                let r = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
                if r != 8 {
                    return false;
                }
                // SAFETY: the worker keeps the word alive until the read completes.
                unsafe { *buf = v };
                Some(8)
            }
        };
        let Some(result) = outcome else {
            return false;
        };
        self.finish_head(i, result, 0);
        true
    }

    /// Completes the head of chain `i` with `result`, then starts or cancels the rest.
    fn finish_head(&mut self, i: usize, result: i32, flags: u32) {
        let mut chain = std::mem::take(&mut self.chains[i].0);
        let head = chain.pop_front().expect("a chain has a head");
        self.post(head.user_data, result, flags);
        let timeout_next = matches!(chain.front().map(|f| f.op), Some(Op::LinkTimeout { .. }));
        if timeout_next && !matches!(head.op, Op::LinkTimeout { .. }) {
            let t = chain.pop_front().expect("checked");
            self.post(t.user_data, -libc::ECANCELED, 0);
        }
        let broken = head.link == Link::Soft && result < 0;
        if broken {
            for f in chain.drain(..) {
                self.post(f.user_data, -libc::ECANCELED, 0);
            }
        }
        if chain.is_empty() {
            self.chains.swap_remove(i);
        } else {
            self.arm_timeout(&mut chain);
            self.chains[i].0 = chain;
        }
    }

    fn run_recv(&mut self, i: usize) -> bool {
        let Some(c) = self.chains[i].0[0].conn else {
            return false;
        };
        let conn = self.conns[c].as_mut().expect("live conn");
        let user_data = self.chains[i].0[0].user_data;
        if conn.reset {
            self.finish_head(i, -libc::ECONNRESET, 0);
            return true;
        }
        if conn.rx.is_empty() {
            if conn.eof || conn.closed {
                self.finish_head(i, 0, 0);
                return true;
            }
            return false;
        }
        let Some(bid) = self.buf_free.pop_front() else {
            self.finish_head(i, -libc::ENOBUFS, 0);
            return true;
        };
        let conn = self.conns[c].as_mut().expect("live conn");
        let mut n = conn.rx.len().min(self.buf_size as usize);
        if n > 1 && self.rng.chance(self.faults.short_read) {
            n = 1 + self.rng.below(n as u64 - 1) as usize;
        }
        let conn = self.conns[c].as_mut().expect("live conn");
        let bytes: Vec<u8> = conn.rx.drain(..n).collect();
        // SAFETY: `bid` came from the provided list, so the worker gave it to the kernel and
        // neither reads nor writes it until this completion; the range lies inside buffer bid.
        unsafe {
            let dst = self.buf_base.add(bid as usize * self.buf_size as usize);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
        }
        let flags = CQE_F_BUFFER | (u32::from(bid) << 16);
        if self.rng.chance(self.faults.end_multishot) {
            self.finish_head(i, n as i32, flags);
        } else {
            self.post(user_data, n as i32, flags | CQE_F_MORE);
        }
        true
    }

    fn run_send(&mut self, i: usize) -> Option<i32> {
        let head = &self.chains[i].0[0];
        let Some(c) = head.conn else {
            return Some(-libc::ENOTCONN);
        };
        let total = head.data.len();
        let conn = self.conns[c].as_mut().expect("live conn");
        if conn.reset || conn.closed {
            return Some(-libc::EPIPE);
        }
        let mut n = total.min(conn.peer.window());
        if n == 0 && total > 0 {
            return None;
        }
        if n > 1 && self.rng.chance(self.faults.partial_send) {
            n = 1 + self.rng.below(n as u64 - 1) as usize;
        }
        let data = self.chains[i].0[0].data[..n].to_vec();
        self.conns[c]
            .as_mut()
            .expect("live conn")
            .peer
            .on_bytes(&data);
        Some(n as i32)
    }

    fn run_connect(&mut self, slot: u32, addr: *const libc::sockaddr, len: u32) -> i32 {
        // SAFETY: the worker keeps the address alive until the connect completes.
        let ss = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sockaddr_storage>()) };
        let Some(dst) = placement::socket_addr(&ss, len) else {
            return -libc::EINVAL;
        };
        let Some(factory) = self.servers.get_mut(&dst) else {
            return -libc::ECONNREFUSED;
        };
        let peer = factory();
        let c = self.add_conn(peer);
        self.slots[slot as usize] = Some(Some(c));
        0
    }

    fn add_conn(&mut self, peer: Box<dyn SimPeer>) -> usize {
        let conn = Conn {
            peer,
            rx: VecDeque::new(),
            eof: false,
            reset: false,
            closed: false,
        };
        match self.conns.iter().position(Option::is_none) {
            Some(i) => {
                self.conns[i] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        }
    }

    /// The worker shut down or closed its end of connection `conn`.
    fn shut(&mut self, conn: Option<usize>) {
        if let Some(c) = conn {
            let conn = self.conns[c].as_mut().expect("live conn");
            if !conn.closed {
                conn.closed = true;
                conn.peer.on_closed();
            }
        }
    }

    /// Runs the cancel at the head of chain `i`: its own chain is taken out first, since
    /// cancelling moves other chains around.
    fn run_cancel(&mut self, i: usize, pick: impl Fn(&InFlight) -> bool) -> bool {
        let mut chain = self.chains.swap_remove(i).0;
        let head = chain.pop_front().expect("a chain has a head");
        let before = head.order;
        let n = self.cancel_where(|f| f.order < before && pick(f));
        self.post(head.user_data, n, 0);
        if !chain.is_empty() {
            self.chains.push(Chain(chain));
        }
        true
    }

    /// Cancels every operation matching `pick`; returns how many (or -ENOENT).
    fn cancel_where(&mut self, pick: impl Fn(&InFlight) -> bool) -> i32 {
        let mut n = 0;
        let mut i = 0;
        while i < self.chains.len() {
            let hit = self.chains[i].0.iter().position(&pick);
            match hit {
                Some(0) => {
                    self.finish_head(i, -libc::ECANCELED, 0);
                    n += 1;
                    // The chain may have been removed (swap_remove): look at index i again.
                }
                Some(_) => {
                    // Cancelling a later member cancels it and everything after it.
                    let cut = hit.expect("some");
                    let rest: Vec<InFlight> = self.chains[i].0.drain(cut..).collect();
                    for f in rest {
                        self.post(f.user_data, -libc::ECANCELED, 0);
                        n += 1;
                    }
                    i += 1;
                }
                None => i += 1,
            }
        }
        if n == 0 {
            -libc::ENOENT
        } else {
            n
        }
    }

    /// Gives one random peer a turn: it may send, close or vanish.
    fn peer_turn(&mut self) -> bool {
        let live: Vec<usize> = (0..self.conns.len())
            .filter(|&c| {
                self.conns[c]
                    .as_ref()
                    .is_some_and(|x| !x.eof && !x.reset && !x.closed)
            })
            .collect();
        if live.is_empty() {
            return false;
        }
        let c = live[self.rng.below(live.len() as u64) as usize];
        if self.rng.chance(self.faults.vanish) {
            let conn = self.conns[c].as_mut().expect("live");
            conn.reset = true;
            conn.peer.on_vanished();
            return true;
        }
        let now = self.now;
        let conn = self.conns[c].as_mut().expect("live");
        let mut out = Vec::new();
        let action = conn.peer.poll(now, &mut out);
        let sent = !out.is_empty();
        conn.rx.extend(out);
        match action {
            PeerAction::Continue => sent,
            PeerAction::Close => {
                conn.eof = true;
                true
            }
            PeerAction::Reset => {
                conn.reset = true;
                true
            }
        }
    }

    /// Completes an armed accept if a client waits on its listener.
    fn accept_ready(&mut self) -> bool {
        for i in 0..self.chains.len() {
            let Op::Accept {
                listener,
                addr,
                addrlen,
            } = self.chains[i].0[0].op
            else {
                continue;
            };
            let l = &mut self.listeners[listener as usize];
            if !l.open || l.backlog.is_empty() {
                continue;
            }
            let Some(slot) = self.alloc_slot() else {
                self.finish_head(i, -libc::ENFILE, 0);
                return true;
            };
            let (peer, from) = self.listeners[listener as usize]
                .backlog
                .pop_front()
                .expect("checked");
            let (ss, len) = placement::sockaddr(&from);
            // SAFETY: the worker keeps the address slot alive until the accept completes.
            unsafe {
                std::ptr::write(addr, ss);
                *addrlen = len;
            }
            let c = self.add_conn(peer);
            self.slots[slot as usize] = Some(Some(c));
            self.finish_head(i, slot as i32, 0);
            return true;
        }
        false
    }

    /// Lets time pass until the next link timeout, at most `limit`.
    fn advance(&mut self, limit: Duration) {
        let until = self.now + limit;
        let next = self
            .chains
            .iter()
            .filter_map(|c| c.0.get(1).and_then(|f| f.deadline))
            .min();
        match next {
            Some(t) if t <= until => {
                self.now = self.now.max(t);
                self.fire_timeouts();
            }
            _ => self.now = until,
        }
    }

    /// Link timeouts whose deadline passed: the operation before each is cancelled.
    fn fire_timeouts(&mut self) {
        let now = self.now;
        let mut i = 0;
        while i < self.chains.len() {
            let due = self.chains[i]
                .0
                .get(1)
                .and_then(|f| f.deadline)
                .is_some_and(|t| t <= now);
            if due {
                let mut chain = std::mem::take(&mut self.chains[i].0);
                let head = chain.pop_front().expect("head");
                let timeout = chain.pop_front().expect("timeout");
                self.post(head.user_data, -libc::ECANCELED, 0);
                self.post(timeout.user_data, -libc::ETIME, 0);
                for f in chain.drain(..) {
                    self.post(f.user_data, -libc::ECANCELED, 0);
                }
                self.chains.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    /// Runs steps until at least one completion is ready; lets up to `wait` of virtual time pass
    /// when nothing can happen sooner.
    fn run(&mut self, wait: Duration) {
        // A few steps per call, so completions come in batches of varying size and order.
        let budget = 1 + self.rng.below(8);
        for _ in 0..budget {
            if !self.step() {
                break;
            }
        }
        if self.cq.is_empty() {
            self.advance(wait);
            while self.step() && self.cq.is_empty() {}
        }
    }
}

/// The slot an operation works on.
fn op_slot(op: &Op) -> Option<u32> {
    match *op {
        Op::RecvMulti { slot }
        | Op::SendMsg { slot, .. }
        | Op::SetSockOpt { slot, .. }
        | Op::Bind { slot, .. }
        | Op::Connect { slot, .. }
        | Op::Shutdown { slot }
        | Op::Close { slot } => Some(slot),
        _ => None,
    }
}

/// The bytes a msghdr's iovecs describe.
///
/// # Safety
/// `msg` and its iovecs must point to valid memory of the lengths they state.
unsafe fn gather(msg: *const libc::msghdr) -> Vec<u8> {
    let m = &*msg;
    let iovs = std::slice::from_raw_parts(m.msg_iov, m.msg_iovlen);
    let mut out = Vec::with_capacity(iovs.iter().map(|v| v.iov_len).sum());
    for v in iovs {
        out.extend_from_slice(std::slice::from_raw_parts(
            v.iov_base.cast::<u8>(),
            v.iov_len,
        ));
    }
    out
}

impl Driver for SimDriver {
    fn sq_space(&mut self) -> usize {
        // A small queue, so the worker's room-making path runs often.
        SQ_ENTRIES.saturating_sub(self.0.borrow().queued.len())
    }

    fn push(&mut self, op: Op, user_data: u64, link: Link) {
        let mut net = self.0.borrow_mut();
        assert!(
            net.queued.len() < SQ_ENTRIES,
            "submission queue overflow at {op:?}: the worker must make room first"
        );
        net.queued.push((op, user_data, link));
    }

    fn submit(&mut self) -> io::Result<()> {
        self.0.borrow_mut().submit();
        Ok(())
    }

    fn submit_and_wait(&mut self, timeout: Duration, _batch: Batch) -> io::Result<()> {
        let mut net = self.0.borrow_mut();
        net.submit();
        net.run(timeout);
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Cqe>) {
        out.extend(self.0.borrow_mut().cq.drain(..));
    }

    fn register_buffers(&mut self, base: *mut u8, size: u32, count: u16) -> io::Result<()> {
        let mut net = self.0.borrow_mut();
        net.buf_base = base;
        net.buf_size = size;
        net.buf_free = (0..count).collect();
        Ok(())
    }

    fn provide(&mut self, bid: u16) {
        self.0.borrow_mut().buf_returned.push(bid);
    }

    fn publish_buffers(&mut self) {
        let mut net = self.0.borrow_mut();
        let returned = std::mem::take(&mut net.buf_returned);
        net.buf_free.extend(returned);
    }

    fn listen(&mut self, addr: &SocketAddr) -> io::Result<u32> {
        let mut net = self.0.borrow_mut();
        net.listeners.push(Listener {
            addr: *addr,
            open: true,
            backlog: VecDeque::new(),
        });
        Ok((net.listeners.len() - 1) as u32)
    }

    fn close_listener(&mut self, listener: u32) {
        let mut net = self.0.borrow_mut();
        if let Some(l) = net.listeners.get_mut(listener as usize) {
            l.open = false;
            let _ = l.addr;
            // Clients still waiting in the backlog are refused.
            for (mut peer, _) in l.backlog.drain(..) {
                peer.on_closed();
            }
        }
    }

    fn now(&self) -> Instant {
        self.0.borrow().now
    }
}
