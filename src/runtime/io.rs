//! [`Io`]: the ring-facing half of a worker, lent to the service during every callback. This file
//! holds its state and the public API services call (connect, send, hold and release buffers,
//! pause reading, close, timers, memory accounting); `ops.rs` holds how each operation is
//! submitted and completed.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::buffers::{BufMem, BufRef, Chunk};
use super::driver::{Cqe, Driver, Timeout};
use super::op::{self, OpKind};
use super::placement;
use super::socks::{ConnectAddrs, Sock, SockId, SockState, SockTable};
use super::timer::TimerWheel;
use crate::metrics::WorkerStats;

/// Most iovecs one send carries; the rest of a long queue goes in the next turn.
pub(crate) const IOV_PER_SEND: usize = 64;
/// Sends one turn can build (the msghdr arena); further dirty sockets wait for the next turn.
pub(crate) const SENDS_PER_TURN: usize = 1024;
/// Accepts kept armed per listener, each with its own peer-address slot.
pub(crate) const ACCEPTS_PER_LISTENER: usize = 16;
/// Timer tokens with this bit set belong to the runtime (linger deadlines).
pub const RUNTIME_TIMER: u64 = 1 << 63;

/// A limit on the heap memory all workers' I/O may hold (owned send chunks, and what services
/// charge for their own buffers), shared by every worker of a process.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    /// `limit` bytes; 0 = no limit.
    pub fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            used: AtomicUsize::new(0),
            limit: if limit == 0 { usize::MAX } else { limit },
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// True once more than the limit is in use.
    pub fn exceeded(&self) -> bool {
        self.used() > self.limit
    }

    fn add(&self, delta: isize) {
        if delta >= 0 {
            self.used.fetch_add(delta as usize, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }
}

/// Something that happened on a socket, delivered to the service by the worker loop.
pub(crate) enum Event {
    Accepted {
        listener: usize,
        sock: SockId,
        peer: Option<SocketAddr>,
    },
    Connected {
        sock: SockId,
        owner: u64,
        result: io::Result<()>,
    },
    /// Bytes arrived; the delivery holds one reference on the buffer, released after the call.
    Data {
        sock: SockId,
        owner: u64,
        buf: BufRef,
    },
    Eof {
        sock: SockId,
        owner: u64,
        error: Option<io::Error>,
    },
    Sent {
        sock: SockId,
        owner: u64,
        queued: usize,
    },
    Released {
        sock: SockId,
        owner: u64,
    },
}

/// One accept kept armed on a listener, with the place the kernel writes the peer address.
pub(crate) struct AcceptSlot {
    pub addr: libc::sockaddr_storage,
    pub len: libc::socklen_t,
    pub armed: bool,
}

pub(crate) struct Listener {
    /// The driver's number for it.
    pub id: u32,
    pub open: bool,
    pub accepts: Box<[AcceptSlot]>,
    /// Re-arm no earlier than this (after the fixed-file table was full).
    pub retry_at: Option<Instant>,
}

/// The wake-up read armed on the inbox's eventfd.
pub(crate) struct WakeRead {
    pub fd: std::os::fd::RawFd,
    pub buf: Box<u64>,
    pub armed: bool,
    pub fired: bool,
}

/// The ring-facing half of a worker.
pub struct Io {
    // Field order matters for drop: the driver (and the kernel ring in it) goes before the
    // receive buffers and the other memory its operations may still point into.
    pub(crate) driver: Box<dyn Driver>,
    pub(crate) bufs: BufMem,
    pub(crate) socks: SockTable,
    pub(crate) timers: TimerWheel,
    pub(crate) dirty: Vec<SockId>,
    /// Sockets whose multishot recv ended for lack of buffers.
    pub(crate) rearm: Vec<SockId>,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) iov_arena: Vec<libc::iovec>,
    pub(crate) msg_arena: Vec<libc::msghdr>,
    pub(crate) setopt_one: Box<libc::c_int>,
    pub(crate) connect_timeout: Box<Timeout>,
    pub(crate) wake: Option<WakeRead>,
    pub(crate) events: VecDeque<Event>,
    /// Completions reaped while making room in the submission queue, dispatched next.
    pub(crate) deferred: Vec<Cqe>,
    /// Heap bytes of this worker's owned send chunks plus what the service charged.
    pub(crate) owned_bytes: usize,
    pub(crate) budget: Arc<MemoryBudget>,
    pub(crate) linger: Duration,
    pub(crate) now: Instant,
    pub(crate) table_full_logged: Option<Instant>,
    pub stats: WorkerStats,
    pub worker: usize,
}

impl Io {
    /// An Io on `driver` with `bufs` registered as its provided buffers.
    pub(crate) fn new(
        mut driver: Box<dyn Driver>,
        bufs: BufMem,
        fixed_slots: u32,
        connect_timeout: Duration,
        linger: Duration,
        budget: Arc<MemoryBudget>,
        worker: usize,
    ) -> io::Result<Io> {
        driver.register_buffers(bufs.base(), bufs.size(), bufs.count())?;
        let now = driver.now();
        Ok(Io {
            driver,
            bufs,
            socks: SockTable::new(fixed_slots),
            timers: TimerWheel::new(now),
            dirty: Vec::new(),
            rearm: Vec::new(),
            listeners: Vec::new(),
            iov_arena: Vec::with_capacity(SENDS_PER_TURN * 4),
            msg_arena: Vec::with_capacity(SENDS_PER_TURN),
            setopt_one: Box::new(1),
            connect_timeout: Box::new(Timeout::from(connect_timeout)),
            wake: None,
            events: VecDeque::new(),
            deferred: Vec::new(),
            owned_bytes: 0,
            budget,
            linger,
            now,
            table_full_logged: None,
            stats: WorkerStats::default(),
            worker,
        })
    }

    /// The time of this loop turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Fixed-file slots still free in this worker's ring.
    pub fn free_slots(&self) -> u32 {
        self.socks
            .fixed_slots()
            .saturating_sub(self.socks.slots_in_use())
    }

    pub fn fixed_slots(&self) -> u32 {
        self.socks.fixed_slots()
    }

    /// Sockets of this worker, including those closing or flushing.
    pub fn sockets(&self) -> usize {
        self.socks.len()
    }

    /// Sets the token delivered with this socket's events.
    pub fn set_owner(&mut self, id: SockId, owner: u64) {
        if let Some(s) = self.socks.get_mut(id) {
            s.owner = owner;
        }
    }

    /// Bytes queued and not yet acknowledged by a send completion.
    pub fn queued(&self, id: SockId) -> usize {
        self.socks.get(id).map_or(0, |s| s.send.queued())
    }

    /// Starts a TCP connection to `addr` through the ring (socket, TCP_NODELAY, connect with the
    /// connect timeout). `on_connect` reports the outcome.
    pub fn connect(&mut self, addr: &SocketAddr, owner: u64) -> SockId {
        self.connect_from(addr, None, owner)
    }

    /// Like [`Io::connect`], from a chosen local address: the socket gets IP_BIND_ADDRESS_NO_PORT
    /// and is bound to `source` (port 0) through the ring (IORING_OP_BIND, Linux 6.11), so the
    /// kernel picks the port at connect time and each source address has its own port range.
    pub fn connect_from(
        &mut self,
        addr: &SocketAddr,
        source: Option<SocketAddr>,
        owner: u64,
    ) -> SockId {
        let mut sock = Sock::new(SockState::Creating, owner);
        sock.connect = Some(Box::new(ConnectAddrs {
            dst: placement::sockaddr(addr),
            src: source.map(|a| placement::sockaddr(&a)),
        }));
        let id = self.socks.insert(sock);
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        self.submit_socket(id, domain);
        id
    }

    /// Stops reading this socket (backpressure) until [`Io::resume_read`]. A few buffers already
    /// on their way may still be delivered.
    pub fn pause_read(&mut self, id: SockId) {
        let Some(s) = self.socks.get_mut(id) else {
            return;
        };
        if s.paused {
            return;
        }
        s.paused = true;
        self.stats.read_pauses += 1;
        self.cancel_recv(id);
    }

    pub fn resume_read(&mut self, id: SockId) {
        let Some(s) = self.socks.get_mut(id) else {
            return;
        };
        if !s.paused {
            return;
        }
        s.paused = false;
        self.arm_recv(id);
    }

    pub fn is_paused(&self, id: SockId) -> bool {
        self.socks.get(id).is_some_and(|s| s.paused)
    }

    /// Queues bytes the service built (a buffer it hands over).
    pub fn send_owned(&mut self, id: SockId, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.stats.bytes_copied += data.len() as u64;
        self.enqueue(id, Chunk::Owned(data));
    }

    /// Queues bytes that live for the whole program (prebuilt responses): no copy, no allocation.
    pub fn send_static(&mut self, id: SockId, data: &'static [u8]) {
        if !data.is_empty() {
            self.enqueue(id, Chunk::Static(data));
        }
    }

    /// Queues part of a received buffer the caller holds (a delivery or a hold) without copying.
    /// When the buffer pool runs low the bytes are copied instead, so slow peers cannot starve
    /// every other connection of receive buffers.
    pub fn send_buf(&mut self, id: SockId, buf: BufRef) {
        if buf.len == 0 || !self.socks.get(id).is_some_and(Sock::accepts_output) {
            return;
        }
        if self.bufs.free() < u32::from(self.bufs.count()) / 4 {
            let v = self.bufs.slice(buf).to_vec();
            self.stats.bytes_copied += v.len() as u64;
            self.enqueue(id, Chunk::Owned(v));
            return;
        }
        self.bufs.retain(buf.bid);
        self.enqueue(id, Chunk::Buf(buf));
    }

    /// Keeps (part of) a delivered buffer past the callback; give it back with
    /// [`Io::release`]. While held it cannot receive, so hold briefly and few.
    pub fn hold(&mut self, buf: BufRef) -> BufRef {
        self.bufs.retain(buf.bid);
        buf
    }

    /// Gives back a hold taken with [`Io::hold`].
    pub fn release(&mut self, buf: BufRef) {
        self.release_buf(buf.bid);
    }

    /// The bytes of a held buffer part.
    pub fn bytes(&self, buf: BufRef) -> &[u8] {
        self.bufs.slice(buf)
    }

    /// Receive buffers the kernel can fill now, and how many there are in all.
    pub fn buffers_free(&self) -> (u32, u16) {
        (self.bufs.free(), self.bufs.count())
    }

    /// Closes the socket once everything queued has been sent, or when the linger deadline
    /// passes, whichever comes first. No events are delivered for it any more; its release is.
    pub fn close_after_flush(&mut self, id: SockId) {
        let Some(s) = self.socks.get_mut(id) else {
            return;
        };
        s.detached = true;
        let nothing_left = s.send.is_empty() && !s.send.in_flight();
        if nothing_left || s.state != SockState::Open {
            self.close(id);
            return;
        }
        self.socks.set_state(id, SockState::Flushing);
        let at = self.now + self.linger;
        self.timers.insert(at, RUNTIME_TIMER | id.pack());
    }

    /// Closes the socket now, dropping unsent output. No events are delivered for it any more;
    /// its release is.
    pub fn close(&mut self, id: SockId) {
        let Some(s) = self.socks.get_mut(id) else {
            return;
        };
        s.detached = true;
        match s.state {
            // The socket op is in flight; its completion closes what it created.
            SockState::Creating => self.socks.set_state(id, SockState::Closing),
            SockState::Connecting | SockState::Open | SockState::Flushing => {
                self.socks.set_state(id, SockState::Closing);
                self.submit_close(id);
                self.drop_unsent(id);
            }
            SockState::Closing => {}
        }
        self.free_if_done(id);
    }

    /// Calls back [`super::Service::on_timer`] with `token` once `at` has passed. There is no
    /// cancel: check on arrival whether it still matters. `token` must not use the top bit.
    pub fn set_timer(&mut self, at: Instant, token: u64) {
        assert_eq!(
            token & RUNTIME_TIMER,
            0,
            "the top bit of timer tokens is the runtime's"
        );
        self.timers.insert(at, token);
    }

    /// Heap bytes this worker's I/O holds now (owned send chunks and service charges).
    pub fn memory_used(&self) -> usize {
        self.owned_bytes
    }

    /// True while all workers together hold more than the memory limit: services then stop
    /// reading what would be copied and refuse new clients.
    pub fn memory_exceeded(&self) -> bool {
        self.budget.exceeded()
    }

    /// The process-wide budget (for reporting).
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// Counts `delta` bytes of the service's own buffers against the memory limit.
    pub fn charge(&mut self, delta: isize) {
        self.owned_bytes = self.owned_bytes.saturating_add_signed(delta);
        self.budget.add(delta);
    }

    /// Checks the worker's bookkeeping: the socket table, and that every receive buffer's
    /// reference count covers the send-queue chunks pointing into it. `holds` adds the references
    /// the service holds itself. Returns what is wrong.
    pub fn invariants(&self, holds: &[BufRef]) -> Result<(), String> {
        self.socks.invariants()?;
        let mut refs = vec![0u32; usize::from(self.bufs.count())];
        for (_, s) in self.socks.iter() {
            for bid in s.send.buf_refs() {
                refs[bid as usize] += 1;
            }
        }
        for h in holds {
            refs[h.bid as usize] += 1;
        }
        let mut held = 0u32;
        for (bid, want) in refs.iter().enumerate() {
            let have = u32::from(self.bufs.refs(bid as u16));
            if have != *want {
                return Err(format!(
                    "buffer {bid}: {have} references counted, {want} found in queues and holds"
                ));
            }
            held += u32::from(have > 0);
        }
        if held + self.bufs.free() != u32::from(self.bufs.count()) {
            return Err(format!(
                "{held} buffers held + {} free != {}",
                self.bufs.free(),
                self.bufs.count()
            ));
        }
        let owned: usize = self.socks.iter().map(|(_, s)| s.send.owned()).sum();
        if owned > self.owned_bytes {
            return Err(format!(
                "owned send bytes {owned} exceed the accounted {}",
                self.owned_bytes
            ));
        }
        Ok(())
    }

    /// Drops one reference on `bid`; the last one gives it back to the kernel.
    pub(crate) fn release_buf(&mut self, bid: u16) {
        if self.bufs.release(bid) {
            self.driver.provide(bid);
        }
    }

    /// Drops a chunk that left the queue (sent, or dropped at close).
    pub(crate) fn drop_chunk(&mut self, c: Chunk) {
        match c {
            Chunk::Buf(b) => self.release_buf(b.bid),
            Chunk::Owned(v) => self.charge(-(v.capacity() as isize)),
            Chunk::Static(_) => {}
        }
    }

    fn enqueue(&mut self, id: SockId, chunk: Chunk) {
        let Some(s) = self.socks.get_mut(id) else {
            self.drop_chunk(chunk);
            return;
        };
        if !s.accepts_output() {
            self.drop_chunk(chunk);
            return;
        }
        let owned = chunk.owned_bytes();
        s.send.push(chunk);
        if !s.dirty && !s.send.in_flight() {
            s.dirty = true;
            self.dirty.push(id);
        }
        if owned > 0 {
            self.charge(owned as isize);
        }
    }

    /// Drops the output no send in flight covers (the socket is closing).
    fn drop_unsent(&mut self, id: SockId) {
        let Some(s) = self.socks.get_mut(id) else {
            return;
        };
        let mut q = std::mem::take(&mut s.send);
        q.drop_unsent(|c| self.drop_chunk(c));
        if let Some(s) = self.socks.get_mut(id) {
            s.send = q;
        }
    }

    /// Frees the socket entry if nothing references it any more, and reports its release.
    pub(crate) fn free_if_done(&mut self, id: SockId) {
        if let Some(owner) = self.socks.free_if_done(id) {
            self.events.push_back(Event::Released { sock: id, owner });
        }
    }

    /// True when `id` names a live entry with this generation.
    pub(crate) fn live(&self, id: SockId) -> bool {
        self.socks.get(id).is_some()
    }

    pub(crate) fn user_data(kind: OpKind, id: SockId) -> u64 {
        op::encode(kind, id)
    }
}
