//! ringproxy: a layer-7 MySQL-protocol proxy for Linux on io_uring.
//!
//! Module map:
//! - [`config`]: typed configuration, the TOML file plus command-line overrides, validation.
//! - [`error`]: errors that say which side failed and whether a retry is safe; the ERR map.
//! - [`protocol`]: the pure MySQL wire codec (no I/O).
//! - [`runtime`]: thread-per-core io_uring machinery with no MySQL knowledge.
//! - [`session`]: client and backend connections as I/O-free state machines, and the proxy
//!   service that runs them: pass-through sessions (the handshake and auth relayed, then
//!   commands, with the response tracker following where each response ends).
//! - [`script`]: Lua scripts with MySQL Proxy's hook API, run on pass-through listeners.
//! - [`metrics`]: per-worker counters.
//! - [`alloc_count`]: the counting allocator of benchmark builds (feature `count-allocs`).
//! - [`server`]: starts the workers for a configuration and handles SIGINT/SIGTERM.
//!
//! The life of a query: a multishot recv fills a provided buffer with the client's bytes; the
//! worker hands them to the [`session::Proxy`] service, whose client connection machine splits
//! them into packets with [`protocol::framing::PacketStream`] (no copy) and has the backend
//! connection's [`protocol::scanner::ResponseTracker`] register each command; the service queues
//! the very same buffer on the backend socket; the backend's reply comes back the same way, the
//! tracker finds where the response ends, and the bytes leave to the client as one vectored send
//! per loop turn.

pub mod alloc_count;
pub mod config;
pub mod error;
pub mod metrics;
pub mod protocol;
pub mod runtime;
pub mod script;
pub mod server;
pub mod session;
