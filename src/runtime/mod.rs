//! The thread-per-core network core, with no MySQL knowledge (the proxy and, later, loadgen both
//! sit on it).
//!
//! Each worker thread is pinned to a core and owns one io_uring ring (SINGLE_ISSUER |
//! DEFER_TASKRUN | COOP_TASKRUN), its SO_REUSEPORT listeners with multishot accept into direct
//! descriptors, a provided-buffer ring feeding multishot recvs (an idle connection holds no
//! receive buffer), and a slab of sockets. Backend sockets are created (IORING_OP_SOCKET),
//! configured (TCP_NODELAY via SOCKET_URING_OP_SETSOCKOPT) and connected through the ring, with a
//! linked timeout. A connection's queued output leaves as one vectored `sendmsg` per loop turn,
//! with MSG_MORE while the service says more of the burst is coming; each turn is one
//! `io_uring_enter` that submits everything and waits for completions or the tick.
//!
//! Why a hand-written loop on the `io-uring` crate and no async runtime: tokio-uring is
//! unmaintained, drives its ring from an epoll reactor, and has neither multishot operations nor
//! provided-buffer rings; an executor would also add a wake-up/poll layer and allocations per
//! operation on the data path that a completion loop does not need.
//!
//! - [`ring`]: ring setup and the start-up feature probe.
//! - [`op`]: `user_data` = kind | generation | slab index.
//! - [`buffers`]: the provided-buffer ring and buffer reference counts.
//! - [`placement`]: CPU pinning, SO_REUSEPORT listeners, RLIMIT_NOFILE.
//! - [`worker`]: the loop, the socket slab, the [`worker::Service`] trait and [`worker::Io`].

pub mod buffers;
pub mod op;
pub mod placement;
pub mod ring;
pub mod worker;

pub use worker::{BufRef, Io, Service, SockId, Worker, WorkerConfig};
