//! The boundary between the worker and the kernel: the [`Driver`] trait the worker drives its
//! ring through, and [`Op`], every operation the runtime submits, described by value. The real
//! driver ([`super::ring::Uring`]) turns each `Op` into its SQE (the only place SQEs are built);
//! the simulated one ([`super::sim::SimDriver`]) carries each out against simulated peers, so the
//! real worker and session code run unchanged under deterministic fault injection.
//!
//! Pointers inside an `Op` (msghdr, sockaddr, timespec, the eventfd word) must stay valid until
//! the operation completes; the worker owns them (see `ops.rs`). Both drivers read the msghdr
//! and its iovecs no later than the next [`Driver::submit`].

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cqe {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

/// `IORING_CQE_F_BUFFER`: the completion carries a provided buffer id in the upper 16 bits.
pub const CQE_F_BUFFER: u32 = 1;
/// `IORING_CQE_F_MORE`: a multishot operation stays armed after this completion.
pub const CQE_F_MORE: u32 = 2;

impl Cqe {
    /// The provided buffer this completion filled, if any.
    pub fn buffer(&self) -> Option<u16> {
        (self.flags & CQE_F_BUFFER != 0).then_some((self.flags >> 16) as u16)
    }

    /// True when a multishot operation is still armed.
    pub fn more(&self) -> bool {
        self.flags & CQE_F_MORE != 0
    }
}

/// How an operation is tied to the next one in the same submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    None,
    /// `IOSQE_IO_LINK`: the next runs only if this one succeeds.
    Soft,
    /// `IOSQE_IO_HARDLINK`: the next runs after this one whatever its result.
    Hard,
}

/// One operation, as the worker asks for it. Sockets are fixed-file slots of the ring.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Accept one connection on listener `listener` into a free fixed-file slot (the result is
    /// the slot); the peer address is written to `addr`/`addrlen`.
    Accept {
        listener: u32,
        addr: *mut libc::sockaddr_storage,
        addrlen: *mut libc::socklen_t,
    },
    /// Multishot receive into the provided buffers.
    RecvMulti { slot: u32 },
    /// One vectored send.
    SendMsg {
        slot: u32,
        msg: *const libc::msghdr,
        flags: i32,
    },
    /// A TCP socket created into a free fixed-file slot (the result is the slot).
    Socket { domain: i32 },
    /// `setsockopt(level, name, *value)` with an int value.
    SetSockOpt {
        slot: u32,
        level: i32,
        name: i32,
        value: *const libc::c_int,
    },
    Bind {
        slot: u32,
        addr: *const libc::sockaddr,
        len: libc::socklen_t,
    },
    Connect {
        slot: u32,
        addr: *const libc::sockaddr,
        len: libc::socklen_t,
    },
    /// Times out the operation linked before it.
    LinkTimeout { timeout: *const Timeout },
    /// `shutdown(SHUT_RDWR)`: ends an armed receive and a send in flight on their own.
    Shutdown { slot: u32 },
    /// Releases the fixed-file slot.
    Close { slot: u32 },
    /// Cancels the operation submitted with `target` as its user_data.
    Cancel { target: u64 },
    /// Cancels every operation on the slot (used to abort a connect chain).
    CancelSlot { slot: u32 },
    /// Reads the 8-byte counter of the worker's wake-up eventfd `fd` (a normal descriptor).
    ReadWake {
        fd: std::os::fd::RawFd,
        buf: *mut u64,
    },
}

/// A duration in the kernel's layout, for [`Op::LinkTimeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Timeout {
    pub sec: u64,
    pub nsec: u64,
}

impl From<Duration> for Timeout {
    fn from(d: Duration) -> Timeout {
        Timeout {
            sec: d.as_secs(),
            nsec: u64::from(d.subsec_nanos()),
        }
    }
}

/// How many completions a wait would like before it returns, and how long it may wait for
/// them once one has arrived (the kernel's min-wait): under load, one wake-up then carries
/// several completions instead of one each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub want: u32,
    pub min_wait: Duration,
}

impl Batch {
    /// Return as soon as one completion is ready.
    pub const ONE: Batch = Batch {
        want: 1,
        min_wait: Duration::ZERO,
    };
}

/// What the worker needs from a ring. Every method is called on the worker's thread only.
pub trait Driver {
    /// Submission-queue entries free right now.
    fn sq_space(&mut self) -> usize;
    /// Queues one operation; the caller has checked [`Driver::sq_space`].
    fn push(&mut self, op: Op, user_data: u64, link: Link);
    /// Hands every queued operation to the kernel without waiting.
    fn submit(&mut self) -> io::Result<()>;
    /// Submits and waits until at least one completion is ready or `timeout` passed. With a
    /// [`Batch`] of more than one, it first waits up to `batch.min_wait` for that many (rings
    /// without the kernel's min-wait, 6.12+, treat it as a batch of one).
    fn submit_and_wait(&mut self, timeout: Duration, batch: Batch) -> io::Result<()>;
    /// Moves every ready completion to `out`.
    fn reap(&mut self, out: &mut Vec<Cqe>);
    /// Registers `count` receive buffers of `size` bytes starting at `base` as the provided
    /// buffers, all initially given to the kernel.
    fn register_buffers(&mut self, base: *mut u8, size: u32, count: u16) -> io::Result<()>;
    /// Gives buffer `bid` back to the kernel (visible after [`Driver::publish_buffers`]).
    fn provide(&mut self, bid: u16);
    fn publish_buffers(&mut self);
    /// Opens a listening socket for `addr`; the returned number names it in [`Op::Accept`].
    fn listen(&mut self, addr: &SocketAddr) -> io::Result<u32>;
    /// Closes a listener (new connection attempts are refused from now on).
    fn close_listener(&mut self, listener: u32);
    /// The time now (the simulation's own clock under test).
    fn now(&self) -> Instant;
}
