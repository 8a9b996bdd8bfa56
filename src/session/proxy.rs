//! [`Proxy`]: the [`Service`] of a proxy worker. It owns the worker's client and backend
//! connection tables and its prewarmed backend connections, turns runtime events into steps of
//! the connection machines ([`super::client`], [`super::backend`]) and carries out the actions
//! they return: sends (zero-copy forwards of received buffers, owned bytes for handshakes and
//! errors), backpressure, stalls, and the end of sessions. It also owns the worker's Lua
//! executor (with a script): once per loop turn it hands the executor the hook calls of the
//! scripted sessions ([`crate::script::part`]) and the pooled ones, and routes the decisions back.
//!
//! Limits and protections that live here: `max_connections` and the per-source limit (a client
//! counts until its socket is released, lingering included), the fixed-file reserve, the memory
//! limit (no new clients and no reading of what would be copied while it is exceeded),
//! `send_high_water` in every phase, the handshake and idle timeouts, and the prewarmed backend
//! connections, which let a client that leaves mid-handshake cost the backend nothing: the
//! connection goes back to the prewarmed set, or is retired with a finished login.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::action::{Action, End};
use super::backend::{self, BackendConn};
use super::client::{self, ClientConn};
use super::pooled::Pooled;
use super::{BackendId, ClientId, Owner, RateLimit, Shared};
use crate::error::{Error, Side};
use crate::runtime::inbox::Inbox;
use crate::runtime::{BufRef, Io, Service, Slab, SockId};
use crate::script::executor::{Executor, Waker};
use crate::script::part::Scripted;
use crate::script::{Call, Decision};

/// How long to wait before prewarming again after a prewarm connect failed.
const PREWARM_BACKOFF: Duration = Duration::from_secs(1);
/// How long a retiring backend connection may take to get its answer before it is closed.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// Where the bytes an action's range refers to are.
#[derive(Clone, Copy)]
enum Src {
    /// A received buffer (forwarded without a copy).
    Buf(BufRef),
    /// Nothing to forward from.
    None,
}

/// Which machine produced the actions being carried out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    Client(ClientId),
    Backend(BackendId),
}

/// The proxy service of one worker.
pub struct Proxy {
    shared: Arc<Shared>,
    clients: Slab<ClientConn>,
    backends: Slab<BackendConn>,
    /// Prewarmed connections with their greeting, oldest first.
    ready: VecDeque<BackendId>,
    /// Prewarm connections not ready yet.
    warming: usize,
    prewarm_after: Option<Instant>,
    /// Sockets paused because the memory limit was exceeded.
    memory_paused: Vec<SockId>,
    /// Spare action vectors (no allocation per step).
    scratch: Vec<Vec<Action>>,
    draining: bool,
    connect_warnings: RateLimit,
    protocol_warnings: RateLimit,
    /// The pooled sessions and connections (with pooled listeners).
    pooled: Option<Pooled>,
    /// The scripted sessions (with a script).
    scripted: Option<Scripted>,
    /// Where hook calls run (with a script; made in `on_start`, on the worker's thread).
    executor: Option<Executor>,
    /// Wakes the worker from its Lua executor thread.
    waker: Option<Waker>,
    /// Spare vectors for a turn's calls and decisions.
    calls: Vec<Call>,
    decisions: Vec<Decision>,
}

impl Proxy {
    pub fn new(shared: Arc<Shared>) -> Proxy {
        let pooled = (shared.pooled.clone()).map(|ps| Pooled::new(shared.clone(), ps));
        Proxy {
            pooled,
            shared,
            clients: Slab::new(),
            backends: Slab::new(),
            ready: VecDeque::new(),
            warming: 0,
            prewarm_after: None,
            memory_paused: Vec::new(),
            scratch: Vec::new(),
            draining: false,
            connect_warnings: RateLimit::new(Duration::from_secs(5)),
            protocol_warnings: RateLimit::new(Duration::from_secs(5)),
            scripted: None,
            executor: None,
            waker: None,
            calls: Vec::new(),
            decisions: Vec::new(),
        }
    }

    /// Client and backend connections open (for tests and the drain).
    pub fn connections(&self) -> (usize, usize) {
        let (ps, pc) = self.pooled.as_ref().map_or((0, 0), Pooled::counts);
        let ss = self.scripted.as_ref().map_or(0, Scripted::len);
        (self.clients.len() + ps + ss, self.backends.len() + pc)
    }

    /// Buffers held by stalled clients (for the runtime's invariants check).
    pub fn holds(&self) -> Vec<BufRef> {
        self.clients
            .iter()
            .flat_map(|(_, c)| c.stalled.iter().copied())
            .collect()
    }

    /// How long a client dropping an oversized packet is read before it is closed.
    fn linger(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// Checks that clients and backends point at each other, and the prewarm bookkeeping.
    pub fn invariants(&self) -> Result<(), String> {
        if let Some(p) = &self.pooled {
            p.invariants()?;
        }
        for (k, c) in self.clients.iter().filter(|(_, c)| !c.is_closed()) {
            let Some(bid) = c.backend else { continue };
            let back = self.backends.get(bid.0).and_then(|b| b.client);
            if back != Some(ClientId(k)) {
                return Err(format!(
                    "client {k:?} -> backend {bid:?} -> client {back:?}"
                ));
            }
        }
        for (k, b) in self.backends.iter() {
            let Some(cid) = b.client else { continue };
            let c = self.clients.get(cid.0).filter(|c| !c.is_closed());
            if c.and_then(|c| c.backend) != Some(BackendId(k)) {
                return Err(format!(
                    "backend {k:?} -> client {cid:?}, which does not point back"
                ));
            }
        }
        for (i, bid) in self.ready.iter().enumerate() {
            let ok = self
                .backends
                .get(bid.0)
                .is_some_and(|b| b.client.is_none() && b.phase() == backend::Phase::Ready);
            if !ok || self.ready.iter().skip(i + 1).any(|x| x == bid) {
                return Err(format!(
                    "ready entry {bid:?} is not a free ready connection"
                ));
            }
        }
        let warming = self
            .backends
            .iter()
            .filter(|(_, b)| b.client.is_none() && is_warming(b))
            .count();
        if warming != self.warming {
            return Err(format!("warming {} but {warming} counted", self.warming));
        }
        Ok(())
    }

    fn take_scratch(&mut self) -> Vec<Action> {
        self.scratch.pop().unwrap_or_default()
    }

    fn put_scratch(&mut self, mut v: Vec<Action>) {
        v.clear();
        self.scratch.push(v);
    }

    // ---- accepting and refusing ----

    fn admit_error(&self, io: &Io, peer: Option<SocketAddr>) -> Option<Error> {
        if self.draining {
            return Some(Error::shutting_down());
        }
        if io.memory_exceeded() {
            let msg = "Too many connections (ringproxy is at its memory limit, max_memory)";
            return Some(Error::too_many_connections(msg));
        }
        // Each client needs its own slot and one for its backend connection.
        if io.free_slots() <= crate::config::RESERVED_SLOTS_PER_WORKER + 1 {
            let msg = format!(
                "Too many connections (ringproxy worker {} has no free fixed-file slot: its table of {} is capped by RLIMIT_NOFILE)",
                io.worker,
                io.fixed_slots()
            );
            return Some(Error::too_many_connections(msg));
        }
        self.shared
            .admit(peer.map(|p| p.ip()))
            .err()
            .map(Error::too_many_connections)
    }

    fn refuse(&mut self, io: &mut Io, sock: SockId, err: &Error) {
        log::debug!("refusing a client: {err}");
        let mut out = Vec::with_capacity(err.message.len() + 16);
        err.write_err_packet(0, &mut out);
        io.send_owned(sock, out);
        io.close_after_flush(sock);
        io.stats.refused += 1;
    }

    fn accept(&mut self, io: &mut Io, sock: SockId, peer: Option<SocketAddr>) {
        let now = io.now();
        let max_packet = self.shared.max_packet_size;
        self.start_session(io, ClientConn::new(sock, peer, max_packet, now));
    }

    /// Takes over the clients pooled sessions handed to pass-through.
    fn adopt_handoffs(&mut self, io: &mut Io) {
        let Some(p) = self.pooled.as_mut() else {
            return;
        };
        for h in p.take_handoffs() {
            let max_packet = self.shared.max_packet_size;
            let c = ClientConn::adopted(h.sock, h.peer, max_packet, h.accepted_at, h.response);
            io.stats.pooled_passthrough += 1;
            io.stats.pooled_sessions = io.stats.pooled_sessions.saturating_sub(1);
            io.stats.active = io.stats.active.saturating_sub(1);
            self.start_session(io, c);
        }
    }

    /// A client session starts: a backend connection (prewarmed or new) is found for it.
    fn start_session(&mut self, io: &mut Io, c: ClientConn) {
        let (sock, now) = (c.sock, io.now());
        let cid = ClientId(self.clients.insert(c));
        io.set_owner(sock, Owner::Client(cid).token());
        io.stats.active += 1;
        io.set_timer(
            now + self.shared.handshake_timeout,
            Owner::Client(cid).token(),
        );
        match self.take_ready(io) {
            Some(bid) => self.give_greeting(io, cid, bid),
            None => {
                let bid = self.open_backend(io, Some(cid));
                self.clients.get_mut(cid.0).expect("just inserted").backend = Some(bid);
            }
        }
        self.prewarm(io);
    }

    // ---- backend connections ----

    /// Opens a backend connection, for `client` or (None) for the prewarmed set.
    fn open_backend(&mut self, io: &mut Io, client: Option<ClientId>) -> BackendId {
        let addr = self.shared.pick_backend();
        let source = self.shared.source_for(&addr);
        let now = io.now();
        let bid = BackendId(self.backends.insert_with(|key| {
            let sock = io.connect_from(&addr, source, Owner::Backend(BackendId(key)).token());
            let mut b = BackendConn::new(sock, addr, now);
            b.client = client;
            b
        }));
        let deadline = now + self.shared.backend_handshake_timeout;
        io.set_timer(deadline, Owner::Backend(bid).token());
        if client.is_none() {
            self.warming += 1;
        }
        bid
    }

    /// Keeps `prewarm` connections connecting or ready.
    fn prewarm(&mut self, io: &mut Io) {
        if self.draining || self.prewarm_after.is_some_and(|t| io.now() < t) {
            return;
        }
        while self.ready.len() + self.warming < self.shared.prewarm {
            if io.free_slots() <= crate::config::RESERVED_SLOTS_PER_WORKER * 2 {
                return;
            }
            self.open_backend(io, None);
        }
    }

    /// A prewarmed connection young enough to hand out, if any (older ones are retired).
    fn take_ready(&mut self, io: &mut Io) -> Option<BackendId> {
        while let Some(bid) = self.ready.pop_front() {
            let Some(b) = self.backends.get(bid.0) else {
                continue;
            };
            if b.phase() != backend::Phase::Ready || b.client.is_some() {
                continue;
            }
            if io.now().saturating_duration_since(b.opened_at) < self.shared.prewarm_max_age {
                return Some(bid);
            }
            self.retire_backend(io, bid);
        }
        None
    }

    fn give_greeting(&mut self, io: &mut Io, cid: ClientId, bid: BackendId) {
        let mut acts = self.take_scratch();
        let (Some(c), Some(b)) = (self.clients.get_mut(cid.0), self.backends.get_mut(bid.0)) else {
            return self.put_scratch(acts);
        };
        b.attach(cid);
        c.backend = Some(bid);
        c.on_greeting(b.greeting(), &mut acts);
        self.execute(io, From::Client(cid), Src::None, &mut acts);
        self.put_scratch(acts);
    }

    /// Ends a backend connection whose handshake may be unfinished without the server counting
    /// an error: finish it with a refused login, or close it when there is nothing to finish.
    fn retire_backend(&mut self, io: &mut Io, bid: BackendId) {
        self.ready.retain(|&r| r != bid);
        let mut acts = self.take_scratch();
        let Some(b) = self.backends.get_mut(bid.0) else {
            return self.put_scratch(acts);
        };
        if b.retire(&mut acts) {
            io.stats.backend_retired += 1;
            let at = io.now() + RETIRE_GRACE;
            io.set_timer(at, Owner::Backend(bid).token());
            self.execute(io, From::Backend(bid), Src::None, &mut acts);
        } else {
            self.close_backend(io, bid);
        }
        self.put_scratch(acts);
    }

    fn close_backend(&mut self, io: &mut Io, bid: BackendId) {
        self.ready.retain(|&r| r != bid);
        if let Some(mut b) = self.backends.remove(bid.0) {
            if b.client.is_none() && is_warming(&b) {
                self.warming -= 1;
            }
            b.end();
            io.close(b.sock);
        }
    }

    /// A backend connection that lost its client. One whose greeting is here goes back to the
    /// prewarmed set (or is retired); one still connecting or waiting for its greeting becomes a
    /// prewarm connection, decided on when the greeting comes: closing it now would leave the
    /// server a handshake abandoned (counted against the proxy's host). One in the middle of a
    /// relayed authentication is retired; one past it is closed.
    fn release_backend(&mut self, io: &mut Io, bid: BackendId) {
        let Some(b) = self.backends.get_mut(bid.0) else {
            return;
        };
        b.detach();
        match b.phase() {
            backend::Phase::Ready if self.ready.len() < self.shared.prewarm && !self.draining => {
                self.ready.push_back(bid);
            }
            backend::Phase::Connecting | backend::Phase::Greeting => self.warming += 1,
            backend::Phase::Ready | backend::Phase::RelayAuth { .. } => {
                self.retire_backend(io, bid)
            }
            _ => self.close_backend(io, bid),
        }
    }

    // ---- carrying out actions ----

    fn execute(&mut self, io: &mut Io, from: From, src: Src, acts: &mut Vec<Action>) {
        for a in acts.drain(..) {
            self.act(io, from, src, a);
        }
    }

    fn act(&mut self, io: &mut Io, from: From, src: Src, a: Action) {
        let (cid, bid) = self.ends(from);
        let csock = cid.and_then(|c| self.clients.get(c.0)).map(|c| c.sock);
        let bsock = bid.and_then(|b| self.backends.get(b.0)).map(|b| b.sock);
        match a {
            Action::SendClient(v) => self.send_owned(io, csock, bsock, v),
            Action::SendBackend(v) => self.send_owned(io, bsock, csock, v),
            Action::AuthAnswer(v) => {
                if let Some(b) = bid.and_then(|b| self.backends.get_mut(b.0)) {
                    b.on_auth_answer_sent();
                }
                self.send_owned(io, bsock, csock, v)
            }
            Action::SendPeer(v) => match from {
                From::Client(_) => self.send_owned(io, bsock, csock, v),
                From::Backend(_) => self.send_owned(io, csock, bsock, v),
            },
            Action::Forward { from: f, to } => {
                let (dst, producer) = match from {
                    From::Client(_) => (bsock, csock),
                    From::Backend(_) => (csock, bsock),
                };
                self.forward(io, dst, producer, src, f, to)
            }
            Action::Greeting => self.on_greeting(io, from),
            Action::LoginRelayed {
                caps,
                mariadb_ext,
                compress,
            } => {
                if let Some(b) = bid.and_then(|b| self.backends.get_mut(b.0)) {
                    b.on_login_relayed(caps, mariadb_ext, compress);
                }
            }
            Action::AuthMoreWanted => {
                self.client_step(io, cid, |c, out| c.on_auth_more_wanted(out))
            }
            Action::AuthDone(ok) => self.auth_done(io, cid, bid, ok),
            Action::Stall(at) => self.stall(io, cid, src, at),
            Action::PauseRead => {
                if let Some(sock) = csock {
                    io.pause_read(sock);
                }
            }
            Action::ResponseEnd => self.response_ended(io, cid, bid),
            Action::End(end) => match (from, cid) {
                (_, Some(c)) => self.end_session(io, c, end, side_of(from)),
                (From::Backend(b), None) => self.close_backend(io, b),
                _ => {}
            },
            // Pooled backends only (pass-through sessions pipeline nothing).
            Action::Responder(_) => {}
        }
    }

    /// The client and backend of the session `from` belongs to.
    fn ends(&self, from: From) -> (Option<ClientId>, Option<BackendId>) {
        match from {
            From::Client(c) => (Some(c), self.clients.get(c.0).and_then(|c| c.backend)),
            From::Backend(b) => (self.backends.get(b.0).and_then(|b| b.client), Some(b)),
        }
    }

    fn send_owned(
        &mut self,
        io: &mut Io,
        to: Option<SockId>,
        producer: Option<SockId>,
        v: Vec<u8>,
    ) {
        if let Some(sock) = to {
            io.send_owned(sock, v);
            self.backpressure(io, sock, producer);
        }
    }

    fn forward(
        &mut self,
        io: &mut Io,
        dst: Option<SockId>,
        producer: Option<SockId>,
        src: Src,
        f: usize,
        to: usize,
    ) {
        let Some(dst) = dst else { return };
        match src {
            Src::Buf(buf) => io.send_buf(dst, buf.slice(f, to)),
            Src::None => return,
        }
        self.backpressure(io, dst, producer);
    }

    /// After a send to `dst`: past `send_high_water` (or the memory limit), stop reading the
    /// side that produces its bytes, until `on_sent` sees the queue drain.
    fn backpressure(&mut self, io: &mut Io, dst: SockId, producer: Option<SockId>) {
        let over = io.queued(dst) > self.shared.send_high_water;
        let tight = io.memory_exceeded();
        let Some(producer) = producer else { return };
        if over || tight {
            io.pause_read(producer);
            if tight && !over {
                self.memory_paused.push(producer);
            }
        }
    }

    fn on_greeting(&mut self, io: &mut Io, from: From) {
        let From::Backend(bid) = from else { return };
        let Some(b) = self.backends.get(bid.0) else {
            return;
        };
        match b.client {
            Some(cid) => self.give_greeting(io, cid, bid),
            None => {
                self.warming = self.warming.saturating_sub(1);
                if self.ready.len() < self.shared.prewarm && !self.draining {
                    self.ready.push_back(bid);
                } else {
                    self.retire_backend(io, bid);
                }
            }
        }
    }

    fn auth_done(&mut self, io: &mut Io, cid: Option<ClientId>, bid: Option<BackendId>, ok: bool) {
        let (Some(cid), Some(bid)) = (cid, bid) else {
            return;
        };
        let mut acts = self.take_scratch();
        let (Some(c), Some(b)) = (self.clients.get_mut(cid.0), self.backends.get_mut(bid.0)) else {
            return self.put_scratch(acts);
        };
        let compress = b.compression();
        c.last_active = io.now();
        io.resume_read(c.sock);
        c.on_auth_done(ok, compress, b, &mut acts);
        self.execute(io, From::Client(cid), Src::None, &mut acts);
        self.put_scratch(acts);
        if ok {
            self.arm_idle_timer(io, cid);
        }
    }

    /// Runs a client step that needs no backend.
    fn client_step(
        &mut self,
        io: &mut Io,
        cid: Option<ClientId>,
        step: impl FnOnce(&mut ClientConn, &mut Vec<Action>),
    ) {
        let Some(cid) = cid else { return };
        let mut acts = self.take_scratch();
        let Some(c) = self.clients.get_mut(cid.0) else {
            return self.put_scratch(acts);
        };
        step(c, &mut acts);
        self.execute(io, From::Client(cid), Src::None, &mut acts);
        self.put_scratch(acts);
    }

    /// The client's input from `at` on waits for room: held, and reading paused.
    fn stall(&mut self, io: &mut Io, cid: Option<ClientId>, src: Src, at: usize) {
        let Some(c) = cid.and_then(|c| self.clients.get_mut(c.0)) else {
            return;
        };
        if let Src::Buf(buf) = src {
            if at < buf.len as usize {
                c.stalled.push(io.hold(buf.tail(at)));
            }
        }
        io.stats.client_stalls += 1;
        io.pause_read(c.sock);
    }

    fn response_ended(&mut self, io: &mut Io, cid: Option<ClientId>, bid: Option<BackendId>) {
        let Some(cid) = cid else { return };
        if let Some(c) = self.clients.get_mut(cid.0) {
            c.last_active = io.now();
        }
        self.unstall(io, cid);
        let idle = bid
            .and_then(|b| self.backends.get_mut(b.0))
            .filter(|b| b.is_idle())
            .map(|b| b.release_idle_memory())
            .is_some();
        if idle {
            if let Some(c) = self.clients.get_mut(cid.0) {
                c.release_idle_memory();
            }
        }
        if self.draining && idle {
            self.end_session(io, cid, End::Flush, Side::Proxy);
        }
    }

    /// Feeds a stalled client's held input again, now that its backend has room.
    fn unstall(&mut self, io: &mut Io, cid: ClientId) {
        self.feed_held(io, cid);
        let Some(c) = self.clients.get_mut(cid.0) else {
            return;
        };
        if c.stalled.is_empty() {
            return;
        }
        let held = std::mem::take(&mut c.stalled);
        let mut rest = held.into_iter();
        for buf in rest.by_ref() {
            let data = io.bytes(buf).to_vec();
            self.client_bytes(io, cid, &data, buf);
            io.release(buf);
            let stalled_again = self
                .clients
                .get(cid.0)
                .is_none_or(|c| !c.stalled.is_empty());
            if stalled_again {
                break;
            }
        }
        let remaining: Vec<BufRef> = rest.collect();
        match self.clients.get_mut(cid.0) {
            Some(c) if c.stalled.is_empty() && remaining.is_empty() && !c.has_held() => {
                let sock = c.sock;
                io.resume_read(sock);
            }
            Some(c) => c.stalled.extend(remaining),
            None => remaining.into_iter().for_each(|b| io.release(b)),
        }
    }

    /// Feeds bytes a client pipelined behind its handshake response that did not fit before.
    fn feed_held(&mut self, io: &mut Io, cid: ClientId) {
        let mut acts = self.take_scratch();
        let Some(c) = self.clients.get_mut(cid.0) else {
            return self.put_scratch(acts);
        };
        if let Some(b) = c.backend.and_then(|b| self.backends.get_mut(b.0)) {
            c.feed_held(b, &mut acts);
        }
        self.execute(io, From::Client(cid), Src::None, &mut acts);
        self.put_scratch(acts);
    }

    // ---- steps on received bytes ----

    fn client_bytes(&mut self, io: &mut Io, cid: ClientId, data: &[u8], buf: BufRef) {
        let mut acts = self.take_scratch();
        let Some(c) = self.clients.get_mut(cid.0) else {
            return self.put_scratch(acts);
        };
        match c.backend.and_then(|b| self.backends.get_mut(b.0)) {
            Some(b) => c.on_bytes(data, b, &mut acts),
            None => c.on_bytes(data, &mut NoBackend, &mut acts),
        }
        let counts = c.take_counts();
        io.stats.packets_c2s += counts.packets;
        io.stats.commands += counts.commands;
        if c.phase() == client::Phase::Discarding {
            io.set_timer(io.now() + self.linger(), Owner::Client(cid).token());
        }
        self.execute(io, From::Client(cid), Src::Buf(buf), &mut acts);
        self.put_scratch(acts);
    }

    fn backend_bytes(&mut self, io: &mut Io, bid: BackendId, data: &[u8], buf: BufRef) {
        let mut acts = self.take_scratch();
        let Some(b) = self.backends.get_mut(bid.0) else {
            return self.put_scratch(acts);
        };
        b.on_bytes(data, &mut acts);
        let (packets, responses) = b.take_counts();
        io.stats.packets_s2c += packets;
        io.stats.responses += responses;
        self.execute(io, From::Backend(bid), Src::Buf(buf), &mut acts);
        self.put_scratch(acts);
    }

    // ---- ending ----

    /// Ends the session of client `cid` as `end` says; `side` is who ended it (for the log).
    /// The client entry stays (closed) until its socket is released.
    fn end_session(&mut self, io: &mut Io, cid: ClientId, end: End, side: Side) {
        let Some(c) = self.clients.get_mut(cid.0).filter(|c| !c.is_closed()) else {
            return;
        };
        for buf in std::mem::take(&mut c.stalled) {
            io.release(buf);
        }
        let (sock, peer, backend) = (c.sock, c.peer, c.backend);
        let untouched = backend
            .and_then(|b| self.backends.get(b.0))
            .is_none_or(BackendConn::response_untouched);
        if let Some(bid) = backend {
            self.release_backend(io, bid);
        }
        let c = self.clients.get_mut(cid.0).expect("checked above");
        match end {
            End::Quiet => {
                log::debug!("client {peer:?} left ({side:?})");
                c.end();
                io.close(sock);
            }
            End::Flush => {
                c.end();
                io.close_after_flush(sock);
            }
            End::Error(err) => {
                let reply = error_reply(&mut self.protocol_warnings, io, c, &err, untouched);
                c.end();
                if let Some(bytes) = reply {
                    io.send_owned(sock, bytes);
                }
                io.close_after_flush(sock);
            }
        }
    }

    fn arm_idle_timer(&mut self, io: &mut Io, cid: ClientId) {
        if let (Some(idle), Some(c)) = (self.shared.idle_timeout, self.clients.get(cid.0)) {
            io.set_timer(c.last_active + idle, Owner::Client(cid).token());
        }
    }

    /// A client's timer: the handshake deadline, or the idle timeout (re-armed while the client
    /// keeps being active).
    fn client_timer(&mut self, io: &mut Io, cid: ClientId) {
        let Some(c) = self.clients.get(cid.0).filter(|c| !c.is_closed()) else {
            return;
        };
        let now = io.now();
        match c.phase() {
            // The ERR went out; the rest of the oversized packet was not worth waiting for.
            client::Phase::Discarding => {
                return self.end_session(io, cid, End::Quiet, Side::Client)
            }
            client::Phase::Command => {}
            _ => {
                let deadline = c.accepted_at + self.shared.handshake_timeout;
                if now >= deadline {
                    io.stats.handshake_timeouts += 1;
                    let err = End::Error(Error::handshake_timeout());
                    self.end_session(io, cid, err, Side::Client);
                } else {
                    io.set_timer(deadline, Owner::Client(cid).token());
                }
                return;
            }
        }
        let Some(idle) = self.shared.idle_timeout else {
            return;
        };
        let busy = c
            .backend
            .and_then(|b| self.backends.get(b.0))
            .is_some_and(|b| !b.is_idle());
        if !busy && now >= c.last_active + idle {
            io.stats.idle_timeouts += 1;
            log::debug!("client {:?} idle for {idle:?}: closing", c.peer);
            return self.end_session(io, cid, End::Quiet, Side::Proxy);
        }
        let at = if busy {
            now + idle
        } else {
            c.last_active + idle
        };
        io.set_timer(at, Owner::Client(cid).token());
    }

    /// A backend connection's timer: prewarm age, handshake deadline, retire grace.
    fn backend_timer(&mut self, io: &mut Io, bid: BackendId) {
        let Some(b) = self.backends.get(bid.0) else {
            return;
        };
        let age = io.now().saturating_duration_since(b.opened_at);
        match b.phase() {
            backend::Phase::Retiring if age >= self.shared.backend_handshake_timeout => {
                self.close_backend(io, bid)
            }
            backend::Phase::Ready if b.client.is_none() && age >= self.shared.prewarm_max_age => {
                self.retire_backend(io, bid)
            }
            backend::Phase::Ready if b.client.is_none() => {
                let at = b.opened_at + self.shared.prewarm_max_age;
                io.set_timer(at, Owner::Backend(bid).token());
            }
            backend::Phase::Connecting
            | backend::Phase::Greeting
            | backend::Phase::Ready
            | backend::Phase::RelayAuth { .. }
                if age >= self.shared.backend_handshake_timeout =>
            {
                self.handshake_overdue(io, bid)
            }
            _ => {}
        }
    }

    /// A backend handshake ran out of time: its client (if any) is told, and the connection is
    /// retired before the server's own timeout would count it against the proxy's host.
    fn handshake_overdue(&mut self, io: &mut Io, bid: BackendId) {
        let client = self.backends.get_mut(bid.0).and_then(|b| b.client.take());
        if let Some(cid) = client {
            if let Some(c) = self.clients.get_mut(cid.0) {
                c.backend = None;
            }
            io.stats.handshake_timeouts += 1;
            self.end_session(
                io,
                cid,
                End::Error(Error::handshake_timeout()),
                Side::Backend,
            );
        }
        self.retire_backend(io, bid);
    }

    /// Resumes sockets paused for memory once the limit is no longer exceeded.
    fn resume_after_memory(&mut self, io: &mut Io) {
        if self.memory_paused.is_empty() || io.memory_exceeded() {
            return;
        }
        for sock in std::mem::take(&mut self.memory_paused) {
            io.resume_read(sock);
        }
    }
}

/// The ERR the client gets for `err`, if it can take one now; logs the error. A backend
/// that failed after part of a response went out, or in the command phase, gets the client
/// none: its library reports the lost connection itself, as it would direct.
fn error_reply(
    warnings: &mut RateLimit,
    io: &mut Io,
    c: &ClientConn,
    err: &Error,
    untouched: bool,
) -> Option<Vec<u8>> {
    if err.side == Side::Backend {
        io.stats.backend_errors += 1;
        if let Some(left_out) = warnings.allow(io.now()) {
            log::warn!(
                "session of client {:?}: {err} ({left_out} similar not logged)",
                c.peer
            );
        }
    } else {
        log::debug!("session of client {:?}: {err}", c.peer);
        if err.side == Side::Client {
            io.stats.protocol_errors += 1;
        }
    }
    let in_command = c.authenticated();
    if err.side == Side::Backend && (in_command || !untouched) {
        return None;
    }
    Some(c.err_bytes(err))
}

fn side_of(from: From) -> Side {
    match from {
        From::Client(_) => Side::Client,
        From::Backend(_) => Side::Backend,
    }
}

fn is_warming(b: &BackendConn) -> bool {
    matches!(
        b.phase(),
        backend::Phase::Connecting | backend::Phase::Greeting
    )
}

/// The sink of a client with no backend connection yet: nothing is a command yet.
struct NoBackend;

impl client::CommandSink for NoBackend {
    fn client_packet(
        &mut self,
        _p: &crate::protocol::framing::PacketHead<'_>,
    ) -> Result<crate::protocol::scanner::ClientPacket, crate::protocol::ProtoError> {
        Err(crate::protocol::ProtoError::Unexpected {
            what: "command",
            state: "no backend connection",
        })
    }
    fn room(&self) -> usize {
        0
    }
    fn awaits_client_data(&self) -> bool {
        false
    }
}

impl Service for Proxy {
    type Msg = ();

    fn on_inbox(&mut self, inbox: Arc<Inbox<()>>) {
        self.waker = Some(Arc::new(move || inbox.wake()));
    }

    fn on_start(&mut self, io: &mut Io) {
        if let Some(script) = self.shared.script.clone() {
            let shared = Arc::clone(&self.shared);
            self.scripted = Some(Scripted::new(shared, Arc::clone(&script)));
            self.executor = Some(Executor::new(script, self.waker.take()));
        }
        self.prewarm(io);
    }

    fn on_accept(&mut self, io: &mut Io, listener: usize, sock: SockId, peer: Option<SocketAddr>) {
        if let Some(err) = self.admit_error(io, peer) {
            return self.refuse(io, sock, &err);
        }
        match (self.pooled.as_mut(), self.scripted.as_mut()) {
            (Some(p), _) if p.is_pooled_listener(listener) => p.accept(io, sock, peer),
            (_, Some(s)) => s.accept(io, sock, peer),
            _ => self.accept(io, sock, peer),
        }
    }

    fn on_connect(&mut self, io: &mut Io, _sock: SockId, owner: u64, result: io::Result<()>) {
        if let (Some(Owner::PooledConn(bid)), Some(p)) = (Owner::of(owner), self.pooled.as_mut()) {
            return p.on_conn_connected(io, bid, result);
        }
        if let (Some(Owner::ScriptConn(id)), Some(s)) = (Owner::of(owner), self.scripted.as_mut()) {
            return s.on_connected(io, id, result);
        }
        let Some(Owner::Backend(bid)) = Owner::of(owner) else {
            return;
        };
        let Some(b) = self.backends.get_mut(bid.0) else {
            return;
        };
        let e = match result {
            Ok(()) => return b.on_connected(),
            Err(e) => e,
        };
        io.stats.backend_connect_errors += 1;
        let (addr, client) = (b.addr, b.client);
        let now = io.now();
        if let Some(left_out) = self.connect_warnings.allow(now) {
            log::warn!("can't connect to backend {addr}: {e} ({left_out} similar not logged)");
        }
        self.backends.remove(bid.0);
        match client {
            None => {
                self.warming = self.warming.saturating_sub(1);
                self.prewarm_after = Some(now + PREWARM_BACKOFF);
            }
            Some(cid) => {
                let err = Error::backend_unreachable(format!("{addr}: {e}"));
                self.end_session(io, cid, End::Error(err), Side::Backend);
            }
        }
    }

    fn on_data(&mut self, io: &mut Io, _sock: SockId, owner: u64, data: &[u8], buf: BufRef) {
        match Owner::of(owner) {
            Some(Owner::Client(cid)) => {
                let Some(c) = self.clients.get_mut(cid.0) else {
                    return;
                };
                if !c.stalled.is_empty() {
                    // Arrived after the pause took effect: keep it behind the stalled input.
                    c.stalled.push(io.hold(buf));
                    return;
                }
                self.client_bytes(io, cid, data, buf);
            }
            Some(Owner::Backend(bid)) => self.backend_bytes(io, bid, data, buf),
            Some(Owner::Pooled(sid)) => {
                if let Some(p) = self.pooled.as_mut() {
                    p.on_client_data(io, sid, data);
                }
                self.adopt_handoffs(io);
            }
            Some(Owner::PooledConn(bid)) => {
                if let Some(p) = self.pooled.as_mut() {
                    p.on_conn_data(io, bid, data, buf);
                }
            }
            Some(Owner::Script(id)) => {
                if let Some(s) = self.scripted.as_mut() {
                    s.on_client_data(io, id, data);
                }
            }
            Some(Owner::ScriptConn(id)) => {
                if let Some(s) = self.scripted.as_mut() {
                    s.on_backend_data(io, id, data);
                }
            }
            None => {}
        }
    }

    fn on_eof(&mut self, io: &mut Io, _sock: SockId, owner: u64, error: Option<io::Error>) {
        match Owner::of(owner) {
            Some(Owner::Client(cid)) => {
                if let Some(e) = error {
                    log::debug!("client connection failed: {e}");
                }
                self.end_session(io, cid, End::Quiet, Side::Client);
            }
            Some(Owner::Backend(bid)) => self.backend_gone(io, bid, error),
            Some(Owner::Pooled(sid)) => {
                if let Some(p) = self.pooled.as_mut() {
                    p.on_client_eof(io, sid);
                }
            }
            Some(Owner::PooledConn(bid)) => {
                if let Some(p) = self.pooled.as_mut() {
                    p.on_conn_eof(io, bid, error);
                }
            }
            Some(Owner::Script(id)) => {
                if let Some(s) = self.scripted.as_mut() {
                    s.on_client_eof(io, id);
                }
            }
            Some(Owner::ScriptConn(id)) => {
                if let Some(s) = self.scripted.as_mut() {
                    s.on_backend_eof(io, id, error);
                }
            }
            None => {}
        }
    }

    fn on_sent(&mut self, io: &mut Io, _sock: SockId, owner: u64, queued: usize) {
        if queued > self.shared.send_high_water / 2 || io.memory_exceeded() {
            return;
        }
        // The producer of this socket's bytes is the other end of its session.
        let producer = match Owner::of(owner) {
            Some(o @ (Owner::Pooled(_) | Owner::PooledConn(_))) => {
                if let Some(p) = self.pooled.as_mut() {
                    p.on_sent(io, o, queued);
                }
                None
            }
            Some(o @ (Owner::Script(_) | Owner::ScriptConn(_))) => {
                if let Some(s) = self.scripted.as_mut() {
                    s.on_sent(io, o);
                }
                None
            }
            Some(Owner::Client(cid)) => self
                .clients
                .get(cid.0)
                .and_then(|c| c.backend)
                .and_then(|b| self.backends.get(b.0))
                .map(|b| b.sock),
            Some(Owner::Backend(bid)) => self
                .backends
                .get(bid.0)
                .and_then(|b| b.client)
                .and_then(|c| self.clients.get(c.0))
                .filter(|c| c.stalled.is_empty() && !c.has_held())
                .map(|c| c.sock),
            None => None,
        };
        if let Some(p) = producer.filter(|p| io.is_paused(*p)) {
            io.resume_read(p);
        }
    }

    fn on_released(&mut self, io: &mut Io, _sock: SockId, owner: u64) {
        if let (Some(Owner::Pooled(sid)), Some(p)) = (Owner::of(owner), self.pooled.as_mut()) {
            return p.on_released(io, sid);
        }
        if let (Some(Owner::Script(id)), Some(s)) = (Owner::of(owner), self.scripted.as_mut()) {
            return s.on_released(io, id);
        }
        let Some(Owner::Client(cid)) = Owner::of(owner) else {
            return;
        };
        if let Some(c) = self.clients.remove(cid.0) {
            io.stats.active = io.stats.active.saturating_sub(1);
            self.shared.release(c.peer.map(|p| p.ip()));
        }
    }

    fn on_timer(&mut self, io: &mut Io, token: u64) {
        match Owner::of(token) {
            Some(Owner::Client(cid)) => self.client_timer(io, cid),
            Some(Owner::Backend(bid)) => self.backend_timer(io, bid),
            Some(Owner::Pooled(sid)) => {
                if let Some(p) = self.pooled.as_mut() {
                    p.session_timer(io, sid);
                }
                self.adopt_handoffs(io);
            }
            Some(Owner::PooledConn(bid)) => {
                if let Some(p) = self.pooled.as_mut() {
                    p.conn_timer(io, bid);
                }
            }
            Some(Owner::Script(id)) => {
                if let Some(s) = self.scripted.as_mut() {
                    s.on_timer(io, id);
                }
            }
            Some(Owner::ScriptConn(_)) | None => {}
        }
    }

    fn on_turn(&mut self, io: &mut Io) {
        self.run_scripts(io);
    }

    fn on_tick(&mut self, io: &mut Io, _now: Instant) {
        self.publish_script_counts(io);
        self.prewarm(io);
        if let Some(p) = self.pooled.as_mut() {
            p.tick(io);
        }
        self.resume_after_memory(io);
    }

    fn on_shutdown(&mut self, io: &mut Io) {
        self.draining = true;
        if let Some(p) = self.pooled.as_mut() {
            p.shutdown(io);
        }
        if let Some(s) = self.scripted.as_mut() {
            s.shutdown(io);
        }
        for bid in std::mem::take(&mut self.ready) {
            self.retire_backend(io, bid);
        }
        let open: Vec<_> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.is_closed())
            .map(|(k, c)| (k, c.phase()))
            .collect();
        for (key, c) in open {
            let cid = ClientId(key);
            let idle = self
                .clients
                .get(key)
                .and_then(|c| c.backend)
                .and_then(|b| self.backends.get(b.0))
                .is_some_and(BackendConn::is_idle);
            match c {
                client::Phase::Command if idle => {
                    self.end_session(io, cid, End::Flush, Side::Proxy)
                }
                client::Phase::Command => {}
                _ => self.end_session(io, cid, End::Error(Error::shutting_down()), Side::Proxy),
            }
        }
    }

    fn is_drained(&self) -> bool {
        self.clients.is_empty()
            && self.backends.is_empty()
            && self.pooled.as_ref().is_none_or(Pooled::is_empty)
            && self.scripted.as_ref().is_none_or(Scripted::is_empty)
    }

    fn abort_all(&mut self, io: &mut Io) {
        if let Some(p) = self.pooled.as_mut() {
            p.abort_all(io);
        }
        if let Some(s) = self.scripted.as_mut() {
            s.abort_all(io);
        }
        for key in self.clients.keys() {
            self.end_session(io, ClientId(key), End::Quiet, Side::Proxy);
        }
        for key in self.backends.keys() {
            self.close_backend(io, BackendId(key));
        }
    }
}

impl Proxy {
    /// Once per loop turn: the hook calls sessions queued go to the executor, and the decisions
    /// that are ready go back to their sessions (which may queue more: a few rounds at most).
    fn run_scripts(&mut self, io: &mut Io) {
        let Some(executor) = self.executor.as_mut() else {
            return;
        };
        for _ in 0..16 {
            if let Some(s) = self.scripted.as_mut() {
                s.take_calls(&mut self.calls);
            }
            if let Some(p) = self.pooled.as_mut() {
                p.take_calls(&mut self.calls);
            }
            for call in self.calls.drain(..) {
                executor.submit(call);
            }
            executor.turn(&mut self.decisions);
            if self.decisions.is_empty() {
                break;
            }
            for d in self.decisions.drain(..) {
                match (
                    Owner::of(d.conn),
                    self.scripted.as_mut(),
                    self.pooled.as_mut(),
                ) {
                    (Some(Owner::Script(id)), Some(s), _) => s.decided(io, id, d),
                    (Some(Owner::Pooled(sid)), _, Some(p)) => p.script_decided(io, sid, d),
                    _ => {}
                }
            }
        }
        if let Some(s) = self.scripted.as_mut() {
            s.after_turn(io);
        }
    }

    /// The executor's counters into the worker's (every tick: in thread mode they sit behind a
    /// mutex the executor thread takes).
    fn publish_script_counts(&mut self, io: &mut Io) {
        if let Some(executor) = &self.executor {
            let counts = executor.counts();
            io.stats.lua_calls = counts.calls;
            io.stats.lua_errors = counts.errors;
        }
    }

    /// The backend connection went away.
    fn backend_gone(&mut self, io: &mut Io, bid: BackendId, error: Option<io::Error>) {
        let Some(b) = self.backends.get(bid.0) else {
            return;
        };
        let why = error.map_or_else(|| "closed the connection".to_string(), |e| e.to_string());
        let (addr, phase, client) = (b.addr, b.phase(), b.client);
        self.close_backend(io, bid);
        let Some(cid) = client else {
            log::debug!("backend {addr} {why} (no client)");
            return;
        };
        let detail = format!("backend {addr} {why} ({phase:?})");
        let end = match phase {
            backend::Phase::Connecting | backend::Phase::Greeting => {
                End::Error(Error::backend_unreachable(detail))
            }
            backend::Phase::Ready | backend::Phase::RelayAuth { .. } => {
                End::Error(Error::backend_failed(crate::error::Retry::Safe, detail))
            }
            _ => {
                log::debug!("session of client ended: {detail}");
                End::Flush
            }
        };
        if let Some(c) = self.clients.get_mut(cid.0) {
            c.backend = None;
        }
        self.end_session(io, cid, end, Side::Backend);
    }
}
