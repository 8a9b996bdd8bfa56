//! The thread-per-core network core, with no MySQL knowledge (the proxy, loadgen's client side and
//! the mock server all sit on it).
//!
//! Each worker thread is pinned to a core (several per core when a configuration needs more
//! fixed-file tables than there are cores: each ring's table holds RLIMIT_NOFILE sockets, so
//! workers, not rings per worker, are what a large connection count adds) and owns one io_uring
//! ring (SINGLE_ISSUER | DEFER_TASKRUN | COOP_TASKRUN), its SO_REUSEPORT listeners with
//! accepts into direct descriptors, a provided-buffer ring feeding multishot recvs (an idle
//! connection holds no receive buffer), a socket table, a timer wheel and an inbox. Backend
//! sockets are created (IORING_OP_SOCKET), configured (TCP_NODELAY via
//! SOCKET_URING_OP_SETSOCKOPT) and connected through the ring, with a linked timeout.
//! A connection's queued output leaves as one vectored `sendmsg` per loop turn; each turn is
//! one `io_uring_enter` that submits everything and waits for completions, the next timer or
//! the tick.
//!
//! Why a hand-written loop on the `io-uring` crate and no async runtime: tokio-uring is
//! unmaintained, drives its ring from an epoll reactor, and has neither multishot operations nor
//! provided-buffer rings; an executor would also add a wake-up/poll layer and allocations per
//! operation on the data path that a completion loop does not need.
//!
//! Where things live:
//! - [`worker`]: the loop and the [`Service`] trait (the MySQL-aware half of a worker).
//! - [`io`]: [`Io`], the API a service acts through (and the memory budget).
//! - [`ops`]: how each operation is submitted and completed; in-flight counts.
//! - [`socks`]: the socket table and each socket's states.
//! - [`driver`]: the [`driver::Driver`] trait between the worker and the kernel, and [`driver::Op`].
//! - [`ring`]: the real driver on io_uring (the only place SQEs are built) and the feature probe.
//! - [`sim`]: a simulated driver for deterministic fault-injection tests.
//! - [`buffers`]: receive-buffer memory and reference counts; send queues.
//! - [`timer`]: the coarse timer wheel. [`inbox`]: cross-thread messages and wake-ups.
//! - [`slab`]: generation-checked tables (sockets here, connections in the services).
//! - [`op`]: `user_data` = kind | generation | index. [`placement`]: pinning, listeners.
//! - [`spawn`]: starting, stopping and joining a set of workers.

pub mod buffers;
pub mod driver;
pub mod inbox;
pub mod io;
pub mod op;
mod ops;
pub mod placement;
pub mod ring;
pub mod sim;
pub mod slab;
pub mod socks;
pub mod spawn;
pub mod timer;
pub mod worker;

#[cfg(test)]
mod tests;

pub use buffers::BufRef;
pub use io::{Io, MemoryBudget};
pub use slab::{Key, Slab};
pub use socks::SockId;
pub use worker::{Parts, Service, Turn, Worker, WorkerConfig};
