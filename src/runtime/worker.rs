//! One worker: its ring, its provided buffers, its socket slab and its loop. The loop flushes every
//! connection's queued output as one vectored send, publishes returned buffers, enters the kernel
//! once (submitting everything and waiting for at least one completion or the tick), copies the
//! completions out and dispatches them to the [`Service`] — which holds the MySQL knowledge; the
//! worker has none.
//!
//! Sockets live in a slab indexed by `u32`; every submission's `user_data` carries the entry's
//! generation (see [`super::op`]), so completions for a closed and reused entry are dropped
//! (returning any buffer they carry). All sockets are direct descriptors in the ring's fixed-file
//! table, whose size the kernel caps at RLIMIT_NOFILE.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buffers::{BufRing, BGID};
use super::op::{self, OpKind};
use super::placement;
use crate::metrics::{SharedStats, WorkerStats};

/// Most iovecs one send carries; the rest of a long queue goes in the next turn.
const IOV_PER_SEND: usize = 64;
/// Bytes in the scratch arenas that hold msghdrs and iovecs until the turn's enter.
const SEND_ARENA_MSGS: usize = 1024;
/// How long one enter may wait when nothing completes: the coarse tick.
const TICK: Duration = Duration::from_millis(50);

/// Set once the first failure to set TCP_NODELAY on a backend socket has been logged.
static NODELAY_WARNED: AtomicBool = AtomicBool::new(false);

/// A socket in the worker's slab, as the service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockId {
    pub index: u32,
    pub generation: u32,
}

/// Part of a received buffer, handed to the service and forwardable without a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufRef {
    pub bid: u16,
    pub off: u32,
    pub len: u32,
}

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
    /// Fixed-file slots this worker's ring gets (capped by RLIMIT_NOFILE).
    pub fixed_slots: u32,
}

/// The MySQL-aware side of a worker: it receives events and acts through [`Io`].
pub trait Service {
    /// Called once on the worker's thread before the loop starts (a client role opens its
    /// connections here).
    fn on_start(&mut self, _io: &mut Io) {}
    /// A client connection was accepted on one of the worker's listeners. Without listeners this
    /// never happens; the default closes the connection.
    fn on_accept(&mut self, io: &mut Io, sock: SockId) {
        io.close(sock);
    }
    /// A socket created by [`Io::connect`] connected, or failed to.
    fn on_connect(&mut self, io: &mut Io, sock: SockId, owner: u32, result: io::Result<()>);
    /// Bytes arrived. `data` is valid only during the call; `buf` may be passed to
    /// [`Io::send_buf`] to forward (part of) it without copying.
    fn on_data(&mut self, io: &mut Io, sock: SockId, owner: u32, data: &[u8], buf: BufRef);
    /// The peer closed (`None`) or the socket failed; no more data will arrive.
    fn on_eof(&mut self, io: &mut Io, sock: SockId, owner: u32, error: Option<io::Error>);
    /// A send completed; `queued` bytes remain queued for this socket.
    fn on_sent(&mut self, _io: &mut Io, _sock: SockId, _owner: u32, _queued: usize) {}
    /// Called about every tick.
    fn on_tick(&mut self, _io: &mut Io, _now: Instant) {}
    /// SIGINT/SIGTERM (or the shutdown flag): listeners are closed; finish in-flight work.
    fn on_shutdown(&mut self, _io: &mut Io) {}
    /// True when the service holds no connection any more.
    fn is_drained(&self) -> bool;
    /// The drain timeout passed: close everything now.
    fn abort_all(&mut self, _io: &mut Io) {}
}

enum Chunk {
    Buf(BufRef),
    Owned(Vec<u8>),
    Static(&'static [u8]),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Buf(b) => b.len as usize,
            Chunk::Owned(v) => v.len(),
            Chunk::Static(b) => b.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    /// IORING_OP_SOCKET in flight.
    Creating,
    /// setsockopt + connect (+ link timeout) in flight.
    Connecting,
    Open,
    /// Close requested; waiting for in-flight operations before the entry is freed.
    Closing,
}

struct Sock {
    generation: u32,
    state: State,
    /// Index in the ring's fixed-file table (valid from Connecting/Open on).
    slot: u32,
    has_slot: bool,
    owner: u32,
    /// Operations in flight that reference this entry.
    inflight: u16,
    recv_armed: bool,
    recv_cancel_sent: bool,
    paused: bool,
    /// Events are no longer delivered (the service dropped its interest).
    detached: bool,
    close_after_flush: bool,
    close_submitted: bool,
    send_q: VecDeque<Chunk>,
    /// Bytes of the first chunk already sent.
    sent_off: usize,
    queued: usize,
    send_inflight: bool,
    dirty: bool,
    more: bool,
    /// Addresses of a connect in flight (kept until its completion).
    addr: Option<Box<ConnectAddrs>>,
    /// Errno of a failed bind to the source address (the linked connect then reports it).
    bind_error: i32,
}

impl Sock {
    fn new() -> Sock {
        Sock {
            generation: 0,
            state: State::Free,
            slot: 0,
            has_slot: false,
            owner: 0,
            inflight: 0,
            recv_armed: false,
            recv_cancel_sent: false,
            paused: false,
            detached: false,
            close_after_flush: false,
            close_submitted: false,
            send_q: VecDeque::new(),
            sent_off: 0,
            queued: 0,
            send_inflight: false,
            dirty: false,
            more: false,
            addr: None,
            bind_error: 0,
        }
    }
}

/// Destination and optional source of a connect, alive until the connect completes.
struct ConnectAddrs {
    dst: (libc::sockaddr_storage, libc::socklen_t),
    src: Option<(libc::sockaddr_storage, libc::socklen_t)>,
}

struct Listener {
    fd: Option<OwnedFd>,
    armed: bool,
    /// Re-arm no earlier than this (after the table was full).
    retry_at: Option<Instant>,
}

/// The ring-facing half of a worker, lent to the service during dispatch.
pub struct Io {
    // Field order matters for drop: the ring goes before the buffers it may still write into.
    ring: IoUring,
    bufs: BufRing,
    socks: Vec<Sock>,
    free_socks: Vec<u32>,
    dirty: Vec<u32>,
    rearm: Vec<u32>,
    listeners: Vec<Listener>,
    iov_arena: Vec<libc::iovec>,
    msg_arena: Vec<libc::msghdr>,
    setopt_val: Box<libc::c_int>,
    connect_timeout: types::Timespec,
    fixed_slots: u32,
    slots_in_use: u32,
    pub stats: WorkerStats,
    table_full_logged: Option<Instant>,
    pub worker: usize,
}

impl Io {
    fn sock(&self, id: SockId) -> Option<&Sock> {
        self.socks
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation && s.state != State::Free)
    }

    fn sock_mut(&mut self, id: SockId) -> Option<&mut Sock> {
        self.socks
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.state != State::Free)
    }

    fn id_of(&self, index: u32) -> SockId {
        SockId {
            index,
            generation: self.socks[index as usize].generation,
        }
    }

    /// Queues one SQE; if the submission queue is full, submits what is there first.
    fn push(&mut self, e: squeue::Entry) {
        // SAFETY: every pointer an SQE carries (msghdr/iovec arenas, sockaddr boxes, the setopt
        // value, buffer memory) outlives its use: arenas until the enter that submits them, the
        // rest until the operation's completion (see the owning fields' comments).
        unsafe {
            if self.ring.submission().push(&e).is_err() {
                self.stats.enter_calls += 1;
                let _ = self.ring.submit();
                self.ring
                    .submission()
                    .push(&e)
                    .expect("submission queue still full right after submit");
            }
        }
        self.stats.sqes += 1;
    }

    fn alloc_sock(&mut self) -> u32 {
        let idx = match self.free_socks.pop() {
            Some(i) => i,
            None => {
                self.socks.push(Sock::new());
                (self.socks.len() - 1) as u32
            }
        };
        let s = &mut self.socks[idx as usize];
        let generation = s.generation;
        *s = Sock::new();
        s.generation = generation;
        idx
    }

    fn free_sock(&mut self, idx: u32) {
        let s = &mut self.socks[idx as usize];
        debug_assert!(s.send_q.is_empty() && s.inflight == 0);
        s.state = State::Free;
        s.generation = op::next_generation(s.generation);
        s.addr = None;
        s.send_q = VecDeque::new();
        if s.has_slot {
            s.has_slot = false;
            self.slots_in_use -= 1;
        }
        self.free_socks.push(idx);
    }

    /// A hard-linked SQE setting the integer socket option `level`/`name` to 1 on `slot`.
    fn set_one(&self, slot: u32, level: libc::c_int, name: libc::c_int) -> squeue::Entry {
        let val: *const libc::c_void = (&*self.setopt_val as *const libc::c_int).cast();
        // setopt_val lives in Io for the worker's lifetime, so the pointer outlives the SQE.
        opcode::SetSockOpt::new(
            types::Fixed(slot),
            level as u32,
            name as u32,
            val,
            std::mem::size_of::<libc::c_int>() as u32,
        )
        .build()
        .flags(squeue::Flags::IO_HARDLINK)
    }

    /// Fixed-file slots still free in this worker's ring.
    pub fn free_slots(&self) -> u32 {
        self.fixed_slots.saturating_sub(self.slots_in_use)
    }

    pub fn fixed_slots(&self) -> u32 {
        self.fixed_slots
    }

    /// Sets the token delivered with this socket's events.
    pub fn set_owner(&mut self, id: SockId, owner: u32) {
        if let Some(s) = self.sock_mut(id) {
            s.owner = owner;
        }
    }

    /// Bytes queued and not yet acknowledged by a send completion.
    pub fn queued(&self, id: SockId) -> usize {
        self.sock(id).map_or(0, |s| s.queued)
    }

    /// Starts a TCP connection to `addr` through the ring (socket, TCP_NODELAY, connect with the
    /// connect timeout). `on_connect` reports the outcome.
    pub fn connect(&mut self, addr: &SocketAddr, owner: u32) -> SockId {
        self.connect_from(addr, None, owner)
    }

    /// Like [`Io::connect`], from a chosen local address: the socket gets
    /// IP_BIND_ADDRESS_NO_PORT and is bound to `source` (port 0) through the ring
    /// (IORING_OP_BIND, Linux 6.11), so the kernel picks the port at connect time and each source
    /// address has its own ephemeral port range.
    pub fn connect_from(
        &mut self,
        addr: &SocketAddr,
        source: Option<SocketAddr>,
        owner: u32,
    ) -> SockId {
        let idx = self.alloc_sock();
        let generation = self.socks[idx as usize].generation;
        let s = &mut self.socks[idx as usize];
        s.state = State::Creating;
        s.owner = owner;
        s.addr = Some(Box::new(ConnectAddrs {
            dst: placement::sockaddr(addr),
            src: source.map(|a| placement::sockaddr(&a)),
        }));
        s.inflight += 1;
        let domain = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        // No SOCK_CLOEXEC: the kernel rejects it (EINVAL) for sockets created as direct
        // descriptors, which are not in the process fd table anyway.
        let e = opcode::Socket::new(domain, libc::SOCK_STREAM, 0)
            .file_index(Some(types::DestinationSlot::auto_target()))
            .build()
            .user_data(op::encode(OpKind::Socket, idx, generation));
        self.push(e);
        SockId {
            index: idx,
            generation,
        }
    }

    fn arm_recv(&mut self, idx: u32) {
        let s = &mut self.socks[idx as usize];
        if s.recv_armed || s.paused || s.state != State::Open || s.close_submitted {
            return;
        }
        s.recv_armed = true;
        s.recv_cancel_sent = false;
        s.inflight += 1;
        let e = opcode::RecvMulti::new(types::Fixed(s.slot), BGID)
            .build()
            .user_data(op::encode(OpKind::Recv, idx, s.generation));
        self.push(e);
    }

    /// Stops reading this socket (backpressure) until [`Io::resume_read`]. A few buffers already
    /// on their way may still be delivered.
    pub fn pause_read(&mut self, id: SockId) {
        let Some(s) = self.sock_mut(id) else { return };
        if s.paused {
            return;
        }
        s.paused = true;
        if s.recv_armed && !s.recv_cancel_sent {
            s.recv_cancel_sent = true;
            s.inflight += 1;
            let target = op::encode(OpKind::Recv, id.index, s.generation);
            let e = opcode::AsyncCancel::new(target)
                .build()
                .user_data(op::encode(OpKind::Cancel, id.index, s.generation));
            self.push(e);
        }
        self.stats.read_pauses += 1;
    }

    pub fn resume_read(&mut self, id: SockId) {
        let Some(s) = self.sock_mut(id) else { return };
        if !s.paused {
            return;
        }
        s.paused = false;
        self.arm_recv(id.index);
    }

    pub fn is_paused(&self, id: SockId) -> bool {
        self.sock(id).is_some_and(|s| s.paused)
    }

    fn enqueue(&mut self, id: SockId, chunk: Chunk, more: bool) -> bool {
        let Some(s) = self.sock_mut(id) else {
            return false;
        };
        if s.close_submitted || s.state != State::Open && s.state != State::Connecting {
            return false;
        }
        s.queued += chunk.len();
        s.send_q.push_back(chunk);
        s.more = more;
        if !s.dirty && !s.send_inflight {
            s.dirty = true;
            self.dirty.push(id.index);
        }
        true
    }

    /// Queues bytes the service built (a copy it owns). `more`: further packets of the same
    /// burst will follow soon, so the send may carry MSG_MORE.
    pub fn send_owned(&mut self, id: SockId, data: Vec<u8>, more: bool) {
        if data.is_empty() {
            return;
        }
        self.stats.bytes_copied += data.len() as u64;
        self.enqueue(id, Chunk::Owned(data), more);
    }

    /// Queues bytes that live for the whole program (prebuilt responses): no copy, no allocation.
    pub fn send_static(&mut self, id: SockId, data: &'static [u8], more: bool) {
        if !data.is_empty() {
            self.enqueue(id, Chunk::Static(data), more);
        }
    }

    /// Queues part of a received buffer without copying it. When the buffer pool runs low the
    /// bytes are copied instead, so slow peers cannot starve every other connection of buffers.
    pub fn send_buf(&mut self, id: SockId, buf: BufRef, more: bool) {
        if buf.len == 0 {
            return;
        }
        if self.bufs.free() < u32::from(self.bufs.count()) / 4 {
            let v = self.bufs.slice(buf.bid, buf.off, buf.len).to_vec();
            self.stats.bytes_copied += v.len() as u64;
            self.enqueue(id, Chunk::Owned(v), more);
            return;
        }
        if self.enqueue(id, Chunk::Buf(buf), more) {
            self.bufs.retain(buf.bid);
        }
    }

    /// Closes the socket once everything queued has been sent. No events are delivered for it
    /// any more.
    pub fn close_after_flush(&mut self, id: SockId) {
        let Some(s) = self.sock_mut(id) else { return };
        s.detached = true;
        if s.queued == 0 && !s.send_inflight || s.state != State::Open {
            self.close(id);
        } else {
            s.close_after_flush = true;
        }
    }

    /// Closes the socket now, dropping unsent output. No events are delivered for it any more.
    pub fn close(&mut self, id: SockId) {
        let Some(s) = self.sock_mut(id) else { return };
        s.detached = true;
        if s.close_submitted {
            return;
        }
        match s.state {
            State::Creating => {
                // The socket op is in flight; its completion closes what it created.
                s.state = State::Closing;
                s.close_submitted = true;
            }
            State::Connecting | State::Open => {
                let connecting = s.state == State::Connecting;
                s.state = State::Closing;
                s.close_submitted = true;
                let slot = s.slot;
                let generation = s.generation;
                let busy = s.recv_armed || s.send_inflight || s.inflight > 0;
                if busy && connecting {
                    // Abort the connect chain in flight.
                    s.inflight += 1;
                    let e = opcode::AsyncCancel2::new(
                        types::CancelBuilder::fd(types::Fixed(slot)).all(),
                    )
                    .build()
                    .user_data(op::encode(
                        OpKind::Cancel,
                        id.index,
                        generation,
                    ));
                    self.push(e);
                } else if busy {
                    // Shutting the socket down ends the armed multishot recv (EOF) and any send
                    // in flight on their own. Cancelling by descriptor instead walks every
                    // request armed on the ring, which makes closing N connections O(N^2).
                    s.inflight += 1;
                    // Hard-linked: the close must not run first (shutdown may be punted to a
                    // kernel worker and would then find no file), yet must run if it fails.
                    let e = opcode::Shutdown::new(types::Fixed(slot), libc::SHUT_RDWR)
                        .build()
                        .flags(squeue::Flags::IO_HARDLINK)
                        .user_data(op::encode(OpKind::Shutdown, id.index, generation));
                    self.push(e);
                }
                self.socks[id.index as usize].inflight += 1;
                let e = opcode::Close::new(types::Fixed(slot))
                    .build()
                    .user_data(op::encode(OpKind::Close, id.index, generation));
                self.push(e);
                self.drop_queue(id.index);
            }
            State::Closing | State::Free => {}
        }
    }

    fn drop_queue(&mut self, idx: u32) {
        let q = std::mem::take(&mut self.socks[idx as usize].send_q);
        for c in q {
            if let Chunk::Buf(b) = c {
                self.bufs.release(b.bid);
            }
        }
        let s = &mut self.socks[idx as usize];
        s.queued = 0;
        s.sent_off = 0;
    }

    fn maybe_free(&mut self, idx: u32) {
        let s = &self.socks[idx as usize];
        if s.state == State::Closing && s.inflight == 0 {
            self.free_sock(idx);
        }
    }

    /// Builds one SendMsg per dirty socket from its queue (up to IOV_PER_SEND chunks).
    fn flush(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        let mut deferred = Vec::new();
        for idx in dirty.drain(..) {
            let s = &mut self.socks[idx as usize];
            s.dirty = false;
            if s.state != State::Open || s.send_inflight || s.send_q.is_empty() {
                continue;
            }
            if self.msg_arena.len() == self.msg_arena.capacity()
                || self.iov_arena.len() + IOV_PER_SEND > self.iov_arena.capacity()
            {
                s.dirty = true;
                deferred.push(idx);
                continue;
            }
            let iov_start = self.iov_arena.len();
            let mut first = true;
            for c in s.send_q.iter().take(IOV_PER_SEND) {
                let skip = if first { s.sent_off } else { 0 };
                first = false;
                let (ptr, len) = match c {
                    Chunk::Buf(b) => (self.bufs.ptr(b.bid, b.off), b.len as usize),
                    Chunk::Owned(v) => (v.as_ptr(), v.len()),
                    Chunk::Static(b) => (b.as_ptr(), b.len()),
                };
                self.iov_arena.push(libc::iovec {
                    // SAFETY: skip < len (sent_off never reaches a chunk's length; fully sent
                    // chunks are popped), so the pointer stays inside the chunk.
                    iov_base: unsafe { ptr.add(skip) } as *mut libc::c_void,
                    iov_len: len - skip,
                });
            }
            let niov = self.iov_arena.len() - iov_start;
            let all = niov == s.send_q.len();
            // SAFETY: msghdr is plain old data; zero is a valid "no name, no control" value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = self.iov_arena[iov_start..].as_mut_ptr();
            msg.msg_iovlen = niov;
            self.msg_arena.push(msg);
            let msg_ptr: *const libc::msghdr = self.msg_arena.last().unwrap();
            let mut flags = libc::MSG_NOSIGNAL;
            if s.more || !all {
                flags |= libc::MSG_MORE;
            }
            s.send_inflight = true;
            s.inflight += 1;
            let e = opcode::SendMsg::new(types::Fixed(s.slot), msg_ptr)
                .flags(flags as u32)
                .build()
                .user_data(op::encode(OpKind::Send, idx, s.generation));
            self.push(e);
            self.stats.sends += 1;
        }
        self.dirty = dirty;
        self.dirty.extend(deferred);
    }
}

/// A worker thread's whole state.
pub struct Worker<S: Service> {
    pub io: Io,
    pub service: S,
    shutdown: Arc<AtomicBool>,
    shared: Arc<SharedStats>,
    drain_timeout: Duration,
    cqes: Vec<(u64, i32, u32)>,
}

impl<S: Service> Worker<S> {
    /// Builds the ring, the buffers and the listeners of one worker (called on its own thread,
    /// after pinning, so every allocation lands near its core).
    pub fn new(
        cfg: &WorkerConfig,
        listen: &[SocketAddr],
        service: S,
        shutdown: Arc<AtomicBool>,
        shared: Arc<SharedStats>,
    ) -> io::Result<Worker<S>> {
        let ring = super::ring::build(cfg.ring_entries)?;
        ring.submitter()
            .register_files_sparse(cfg.fixed_slots)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot register a fixed-file table of {} slots: {e} (the kernel caps it at RLIMIT_NOFILE)",
                        cfg.fixed_slots
                    ),
                )
            })?;
        let bufs = BufRing::new(&ring, cfg.buffer_count, cfg.buffer_size)?;
        let mut listeners = Vec::new();
        for addr in listen {
            listeners.push(Listener {
                // The kernel caps the backlog at net.core.somaxconn, which then governs.
                fd: Some(placement::reuseport_listener(addr, i32::MAX)?),
                armed: false,
                retry_at: None,
            });
        }
        let mut io = Io {
            ring,
            bufs,
            socks: Vec::with_capacity(cfg.fixed_slots as usize),
            free_socks: Vec::new(),
            dirty: Vec::new(),
            rearm: Vec::new(),
            listeners,
            iov_arena: Vec::with_capacity(SEND_ARENA_MSGS * 4),
            msg_arena: Vec::with_capacity(SEND_ARENA_MSGS),
            setopt_val: Box::new(1),
            connect_timeout: types::Timespec::from(cfg.connect_timeout),
            fixed_slots: cfg.fixed_slots,
            slots_in_use: 0,
            stats: WorkerStats::default(),
            table_full_logged: None,
            worker: cfg.index,
        };
        for i in 0..io.listeners.len() {
            arm_accept(&mut io, i);
        }
        Ok(Worker {
            io,
            service,
            shutdown,
            shared,
            drain_timeout: cfg.drain_timeout,
            cqes: Vec::with_capacity(1024),
        })
    }

    /// Runs until shutdown has been requested and the service has drained (or the drain timeout
    /// passed).
    pub fn run(&mut self) -> io::Result<()> {
        self.service.on_start(&mut self.io);
        let mut last_tick = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        let mut aborted = false;
        loop {
            self.io.flush();
            self.io.bufs.publish();
            let ts = types::Timespec::from(TICK);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.io.stats.enter_calls += 1;
            match self.io.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.io.iov_arena.clear();
            self.io.msg_arena.clear();
            self.reap();
            let now = Instant::now();
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
            if drain_deadline.is_none() && self.shutdown.load(Ordering::Relaxed) {
                drain_deadline = Some(now + self.drain_timeout);
                self.begin_shutdown();
            }
            if let Some(deadline) = drain_deadline {
                if self.service.is_drained() && self.io.free_socks.len() == self.io.socks.len() {
                    break;
                }
                if now >= deadline && !aborted {
                    aborted = true;
                    log::warn!(
                        "worker {}: drain timeout passed, closing the remaining connections",
                        self.io.worker
                    );
                    self.service.abort_all(&mut self.io);
                }
                if aborted && now >= deadline + Duration::from_secs(2) {
                    break;
                }
            }
        }
        self.publish_stats();
        Ok(())
    }

    fn begin_shutdown(&mut self) {
        for i in 0..self.io.listeners.len() {
            let l = &mut self.io.listeners[i];
            if let Some(fd) = l.fd.take() {
                if l.armed {
                    let e = opcode::AsyncCancel::new(op::encode(OpKind::Accept, i as u32, 0))
                        .build()
                        .user_data(op::encode(OpKind::Cancel, u32::MAX, 0));
                    self.io.push(e);
                }
                // Closing the listener makes new connection attempts fail at once (RST) while
                // the sessions already accepted finish.
                drop(fd);
            }
        }
        self.service.on_shutdown(&mut self.io);
    }

    fn tick(&mut self, now: Instant) {
        for i in 0..self.io.listeners.len() {
            let l = &self.io.listeners[i];
            if !l.armed && l.fd.is_some() && l.retry_at.is_none_or(|t| now >= t) {
                arm_accept(&mut self.io, i);
            }
        }
        self.service.on_tick(&mut self.io, now);
        self.publish_stats();
    }

    fn publish_stats(&mut self) {
        self.io.stats.buffers_free = u64::from(self.io.bufs.free());
        self.io.stats.fixed_slots_in_use = u64::from(self.io.slots_in_use);
        self.shared.store(&self.io.stats);
    }

    fn reap(&mut self) {
        self.cqes.clear();
        for cqe in self.io.ring.completion() {
            self.cqes.push((cqe.user_data(), cqe.result(), cqe.flags()));
        }
        self.io.stats.cqes += self.cqes.len() as u64;
        let cqes = std::mem::take(&mut self.cqes);
        for &(ud, res, flags) in &cqes {
            self.dispatch(ud, res, flags);
        }
        self.cqes = cqes;
        // Sockets whose recv ended for lack of buffers get another one when buffers are back.
        if !self.io.rearm.is_empty() && self.io.bufs.free() > 0 {
            let rearm = std::mem::take(&mut self.io.rearm);
            for idx in rearm {
                self.io.arm_recv(idx);
            }
        }
    }

    fn dispatch(&mut self, ud: u64, res: i32, flags: u32) {
        let Some((kind, idx, generation)) = op::decode(ud) else {
            log::error!("completion with unknown user_data {ud:#x}");
            return;
        };
        if kind == OpKind::Accept {
            self.on_accept_cqe(idx as usize, res, flags);
            return;
        }
        if kind == OpKind::Cancel && idx == u32::MAX {
            return;
        }
        let live = self
            .io
            .socks
            .get(idx as usize)
            .is_some_and(|s| s.generation == generation && s.state != State::Free);
        if !live {
            // A completion for an entry already freed: only a buffer it carries matters.
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.io.bufs.take(bid);
                self.io.bufs.release(bid);
            }
            log::debug!("stale completion {kind:?} for slab entry {idx}");
            return;
        }
        let id = SockId {
            index: idx,
            generation,
        };
        match kind {
            OpKind::Recv => self.on_recv_cqe(id, res, flags),
            OpKind::Send => self.on_send_cqe(id, res),
            OpKind::Socket => self.on_socket_cqe(id, res),
            OpKind::SetOpt => {
                self.io.socks[idx as usize].inflight -= 1;
                if res < 0
                    && res != -libc::ECANCELED
                    && !NODELAY_WARNED.swap(true, Ordering::Relaxed)
                {
                    log::warn!(
                        "TCP_NODELAY on backend sockets failed: {} (setting socket options through \
                         io_uring needs Linux 6.7); backend sockets keep Nagle's algorithm",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                self.io.maybe_free(idx);
            }
            OpKind::Connect => self.on_connect_cqe(id, res),
            OpKind::Bind => {
                let s = &mut self.io.socks[idx as usize];
                s.inflight -= 1;
                if res < 0 {
                    s.bind_error = -res;
                }
                self.io.maybe_free(idx);
            }
            OpKind::ConnectTimeout => {
                // -ETIME when it fired (the connect then completes with -ECANCELED and is
                // reported as timed out), -ECANCELED when the connect finished first.
                self.io.socks[idx as usize].inflight -= 1;
                self.io.maybe_free(idx);
            }
            OpKind::Close => {
                self.io.socks[idx as usize].inflight -= 1;
                if res < 0 {
                    log::debug!(
                        "close of a direct descriptor: {}",
                        io::Error::from_raw_os_error(-res)
                    );
                }
                self.io.maybe_free(idx);
            }
            OpKind::Cancel | OpKind::Shutdown => {
                self.io.socks[idx as usize].inflight -= 1;
                self.io.maybe_free(idx);
            }
            OpKind::Accept => unreachable!("handled above"),
        }
    }

    fn on_accept_cqe(&mut self, li: usize, res: i32, flags: u32) {
        let Some(l) = self.io.listeners.get_mut(li) else {
            return;
        };
        if !cqueue::more(flags) {
            l.armed = false;
        }
        if res < 0 {
            match -res {
                libc::ENFILE | libc::EMFILE => {
                    self.io.stats.refused += 1;
                    l.retry_at = Some(Instant::now() + TICK);
                    let now = Instant::now();
                    if self
                        .io
                        .table_full_logged
                        .is_none_or(|t| now.duration_since(t) > Duration::from_secs(5))
                    {
                        self.io.table_full_logged = Some(now);
                        log::warn!(
                            "worker {}: fixed-file table full ({} slots, the soft RLIMIT_NOFILE): refusing new connections",
                            self.io.worker,
                            self.io.fixed_slots
                        );
                    }
                }
                libc::ECANCELED => {}
                e => {
                    log::warn!("accept failed: {}", io::Error::from_raw_os_error(e));
                    l.retry_at = Some(Instant::now() + TICK);
                }
            }
            return;
        }
        let idx = self.io.alloc_sock();
        let s = &mut self.io.socks[idx as usize];
        s.state = State::Open;
        s.slot = res as u32;
        s.has_slot = true;
        self.io.slots_in_use += 1;
        self.io.stats.accepted += 1;
        self.io.arm_recv(idx);
        let id = self.io.id_of(idx);
        self.service.on_accept(&mut self.io, id);
    }

    fn on_socket_cqe(&mut self, id: SockId, res: i32) {
        let idx = id.index;
        let s = &mut self.io.socks[idx as usize];
        s.inflight -= 1;
        if res >= 0 {
            s.slot = res as u32;
            s.has_slot = true;
            self.io.slots_in_use += 1;
        }
        if s.state == State::Closing {
            // Closed while the socket op was in flight.
            if res >= 0 {
                let slot = s.slot;
                s.inflight += 1;
                let e = opcode::Close::new(types::Fixed(slot))
                    .build()
                    .user_data(op::encode(OpKind::Close, idx, id.generation));
                self.io.push(e);
            }
            self.io.maybe_free(idx);
            return;
        }
        if res < 0 {
            let err = if -res == libc::ENFILE {
                io::Error::other(format!(
                    "no free fixed-file slot for a backend socket ({} slots, capped by RLIMIT_NOFILE)",
                    self.io.fixed_slots
                ))
            } else {
                io::Error::from_raw_os_error(-res)
            };
            s.state = State::Closing;
            s.close_submitted = true;
            let owner = s.owner;
            self.io.maybe_free(idx);
            self.service.on_connect(&mut self.io, id, owner, Err(err));
            return;
        }
        s.state = State::Connecting;
        let slot = s.slot;
        let (dst, src) = {
            let a = s
                .addr
                .as_ref()
                .expect("connect addresses kept until completion");
            let dst = (
                &a.dst.0 as *const libc::sockaddr_storage as *const libc::sockaddr,
                a.dst.1,
            );
            let src = a.src.as_ref().map(|(ss, len)| {
                (
                    ss as *const libc::sockaddr_storage as *const libc::sockaddr,
                    *len,
                )
            });
            (dst, src)
        };
        s.inflight += if src.is_some() { 5 } else { 3 };
        // Chain: NODELAY ⇒ [BIND_ADDRESS_NO_PORT ⇒ bind] → connect → timeout. Hard links keep
        // the chain going when a socket option cannot be set; a failed bind cancels the connect.
        let nodelay = self
            .io
            .set_one(slot, libc::IPPROTO_TCP, libc::TCP_NODELAY)
            .user_data(op::encode(OpKind::SetOpt, idx, id.generation));
        self.io.push(nodelay);
        if let Some((src_ptr, src_len)) = src {
            let no_port = self
                .io
                .set_one(slot, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT)
                .user_data(op::encode(OpKind::SetOpt, idx, id.generation));
            let bind = opcode::Bind::new(types::Fixed(slot), src_ptr, src_len)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(op::encode(OpKind::Bind, idx, id.generation));
            self.io.push(no_port);
            self.io.push(bind);
        }
        let connect = opcode::Connect::new(types::Fixed(slot), dst.0, dst.1)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(op::encode(OpKind::Connect, idx, id.generation));
        let ts: *const types::Timespec = &self.io.connect_timeout;
        // SAFETY: connect_timeout lives in Io for the worker's lifetime.
        let timeout = opcode::LinkTimeout::new(ts).build().user_data(op::encode(
            OpKind::ConnectTimeout,
            idx,
            id.generation,
        ));
        self.io.push(connect);
        self.io.push(timeout);
    }

    fn on_connect_cqe(&mut self, id: SockId, res: i32) {
        let idx = id.index;
        let s = &mut self.io.socks[idx as usize];
        s.inflight -= 1;
        s.addr = None;
        if s.state == State::Closing || s.detached {
            self.io.maybe_free(idx);
            return;
        }
        let owner = s.owner;
        if res < 0 {
            let err = if res == -libc::ECANCELED && s.bind_error != 0 {
                let e = io::Error::from_raw_os_error(s.bind_error);
                io::Error::new(e.kind(), format!("bind to the source address failed: {e}"))
            } else if res == -libc::ECANCELED {
                io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
            } else {
                io::Error::from_raw_os_error(-res)
            };
            self.io.close(id);
            self.service.on_connect(&mut self.io, id, owner, Err(err));
            return;
        }
        s.state = State::Open;
        let has_output = !s.send_q.is_empty();
        if has_output && !s.dirty {
            s.dirty = true;
            self.io.dirty.push(idx);
        }
        self.io.arm_recv(idx);
        self.service.on_connect(&mut self.io, id, owner, Ok(()));
    }

    fn on_recv_cqe(&mut self, id: SockId, res: i32, flags: u32) {
        let idx = id.index;
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        {
            let s = &mut self.io.socks[idx as usize];
            if !more {
                s.recv_armed = false;
                s.inflight -= 1;
            }
        }
        if let Some(bid) = bid {
            self.io.bufs.take(bid);
        }
        let s = &self.io.socks[idx as usize];
        let deliver = !s.detached && s.state == State::Open;
        let owner = s.owner;
        if res > 0 {
            let bid = bid.expect("a recv with data carries a buffer");
            self.io.stats.recvs += 1;
            self.io.stats.bytes_in += res as u64;
            if deliver {
                let buf = BufRef {
                    bid,
                    off: 0,
                    len: res as u32,
                };
                let data = self.io.bufs.slice(bid, 0, res as u32);
                // SAFETY: the buffer is held by the delivery reference until `release` below,
                // so neither the kernel nor another connection writes it while `data` lives;
                // the slice is detached from `self.io`'s borrow only so the service can also
                // call `&mut Io` methods, none of which frees or writes a held buffer.
                let data: &[u8] = unsafe { std::slice::from_raw_parts(data.as_ptr(), data.len()) };
                self.service.on_data(&mut self.io, id, owner, data, buf);
            }
            self.io.bufs.release(bid);
            if !more {
                self.rearm_after(idx);
            }
        } else if res == 0 {
            if let Some(bid) = bid {
                self.io.bufs.release(bid);
            }
            if deliver {
                self.service.on_eof(&mut self.io, id, owner, None);
            }
        } else if res == -libc::ENOBUFS {
            self.io.stats.recv_nobufs += 1;
            self.io.rearm.push(idx);
        } else if res == -libc::ECANCELED {
            self.rearm_after(idx);
        } else if deliver {
            self.service.on_eof(
                &mut self.io,
                id,
                owner,
                Some(io::Error::from_raw_os_error(-res)),
            );
        }
        self.io.maybe_free(idx);
    }

    fn rearm_after(&mut self, idx: u32) {
        let s = &self.io.socks[idx as usize];
        if !s.recv_armed && !s.paused && s.state == State::Open && !s.close_submitted {
            self.io.arm_recv(idx);
        }
    }

    fn on_send_cqe(&mut self, id: SockId, res: i32) {
        let idx = id.index;
        {
            let s = &mut self.io.socks[idx as usize];
            s.inflight -= 1;
            s.send_inflight = false;
        }
        if self.io.socks[idx as usize].state != State::Open {
            self.io.maybe_free(idx);
            return;
        }
        if res < 0 {
            let s = &self.io.socks[idx as usize];
            let (owner, detached) = (s.owner, s.detached);
            self.io.drop_queue(idx);
            if detached {
                self.io.close(id);
            } else {
                self.service.on_eof(
                    &mut self.io,
                    id,
                    owner,
                    Some(io::Error::from_raw_os_error(-res)),
                );
            }
            self.io.maybe_free(idx);
            return;
        }
        self.io.stats.bytes_out += res as u64;
        let mut left = res as usize;
        while left > 0 {
            let s = &mut self.io.socks[idx as usize];
            let Some(front) = s.send_q.front() else { break };
            let avail = front.len() - s.sent_off;
            if left >= avail {
                left -= avail;
                s.sent_off = 0;
                s.queued -= avail;
                if let Some(Chunk::Buf(b)) = s.send_q.pop_front() {
                    self.io.bufs.release(b.bid);
                }
            } else {
                s.sent_off += left;
                s.queued -= left;
                left = 0;
            }
        }
        let s = &mut self.io.socks[idx as usize];
        if s.queued > 0 {
            if !s.dirty {
                s.dirty = true;
                self.io.dirty.push(idx);
            }
        } else if s.close_after_flush {
            self.io.close(id);
            return;
        }
        if !s.detached {
            let (owner, queued) = (s.owner, s.queued);
            self.service.on_sent(&mut self.io, id, owner, queued);
        }
    }
}

fn arm_accept(io: &mut Io, li: usize) {
    let l = &mut io.listeners[li];
    let Some(fd) = l.fd.as_ref() else { return };
    l.armed = true;
    l.retry_at = None;
    let e = opcode::AcceptMulti::new(types::Fd(fd.as_raw_fd()))
        .allocate_file_index(true)
        .build()
        .user_data(op::encode(OpKind::Accept, li as u32, 0));
    io.push(e);
}
