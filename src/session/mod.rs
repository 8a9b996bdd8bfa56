//! Sessions: what a client connection and the backend connections serving it do, in two modes.
//!
//! Pass-through (MySQL Proxy style): the client gets its own backend connection, the server's
//! greeting and the whole authentication exchange are relayed (so any auth plugin both ends
//! agree on works), then every command is relayed and the response tracker follows where each
//! response ends.
//! - [`client`]: the client connection's state machine (handshake, auth, commands).
//! - [`backend`]: the backend connection's state machine (greeting, relayed auth, idle/busy,
//!   retiring), which owns the response tracker.
//! - [`proxy`]: [`Proxy`], the worker's service: the connection tables, the prewarmed backend
//!   connections, limits and timeouts, and the I/O for the machines' actions; it hands pooled
//!   listeners' events to [`pooled`], and, with a Lua script, pass-through listeners' events to
//!   [`crate::script`]'s scripted sessions and every session's hook calls to the executor.
//!
//! Pooled (ProxySQL style): the proxy authenticates the client and runs its commands on
//! connections of a per-worker pool, tracking and replaying the session's state.
//! - [`pooled_client`]: the client side (own greeting, server-side auth, command packets).
//! - [`pooled_backend`]: a pooled backend connection (login, tracking setup, jobs).
//! - [`pooled`]: the sessions, the pool and its waiters, pins, and the glue of both (with a
//!   script, its `script` submodule runs each command through read_query/read_query_result).
//! - [`pool`], [`state`], [`relay`], [`pooled_stmt`], [`users`]: the pool's bookkeeping, session
//!   state and its replay, the packet relay, prepared statements, and the users pooled
//!   listeners accept (from the configuration and the backends).
//!
//! Shared: [`action`] (what the machines ask the service to do) and [`login`] (a client's login
//! to a server, I/O-free: the pooled connections', loadgen's and the simulation's).
//!
//! Connections live in their own generation-checked tables and are named by typed ids. The
//! machines are I/O-free (`bytes/event in → actions out`) and unit-tested on byte literals.

pub mod action;
pub mod backend;
pub mod client;
pub mod login;
pub mod pool;
pub mod pooled;
pub mod pooled_backend;
pub mod pooled_client;
pub mod pooled_stmt;
pub mod proxy;
pub mod relay;
pub mod state;
pub mod users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::runtime::Key;

pub use proxy::Proxy;

/// A client connection of this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(pub Key);

/// A backend connection of this worker (pass-through, or pooled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendId(pub Key);

/// A scripted session of this worker ([`crate::script`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScriptId(pub Key);

/// A pooled session of this worker (its client connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PooledId(pub Key);

const CLIENT_TAG: u64 = 1 << 56;
const BACKEND_TAG: u64 = 2 << 56;
const POOLED_TAG: u64 = 3 << 56;
const POOLED_CONN_TAG: u64 = 4 << 56;
const SCRIPT_TAG: u64 = 5 << 56;
const SCRIPT_CONN_TAG: u64 = 6 << 56;
const TAG_MASK: u64 = 0xff << 56;

/// Whose a socket (or a timer) is: the token the runtime hands back with its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Client(ClientId),
    Backend(BackendId),
    /// A pooled session's client connection.
    Pooled(PooledId),
    /// A pooled backend connection.
    PooledConn(BackendId),
    /// A scripted session's client connection.
    Script(ScriptId),
    /// A scripted session's backend connection.
    ScriptConn(ScriptId),
}

impl Owner {
    pub fn token(self) -> u64 {
        match self {
            Owner::Client(c) => CLIENT_TAG | c.0.pack(),
            Owner::Backend(b) => BACKEND_TAG | b.0.pack(),
            Owner::Pooled(p) => POOLED_TAG | p.0.pack(),
            Owner::PooledConn(b) => POOLED_CONN_TAG | b.0.pack(),
            Owner::Script(s) => SCRIPT_TAG | s.0.pack(),
            Owner::ScriptConn(s) => SCRIPT_CONN_TAG | s.0.pack(),
        }
    }

    pub fn of(token: u64) -> Option<Owner> {
        let key = Key::unpack(token);
        match token & TAG_MASK {
            CLIENT_TAG => Some(Owner::Client(ClientId(key))),
            BACKEND_TAG => Some(Owner::Backend(BackendId(key))),
            POOLED_TAG => Some(Owner::Pooled(PooledId(key))),
            POOLED_CONN_TAG => Some(Owner::PooledConn(BackendId(key))),
            SCRIPT_TAG => Some(Owner::Script(ScriptId(key))),
            SCRIPT_CONN_TAG => Some(Owner::ScriptConn(ScriptId(key))),
            _ => None,
        }
    }
}

/// What all workers share: the backends, the limits, and the counts limits are checked against.
#[derive(Debug)]
pub struct Shared {
    /// Every backend server: the read-write ones (`backends`), then the read-only ones
    /// (`read_only_backends`, which only a script's routing uses).
    pub backends: Vec<SocketAddr>,
    /// How many of `backends` are read-write (round-robin picks among those).
    pub rw_backends: usize,
    /// Local address backend connections are made from.
    pub backend_source: Option<IpAddr>,
    pub max_connections: usize,
    /// Client connections from one IP address at once (0: no limit).
    pub max_per_source: usize,
    pub max_packet_size: u64,
    pub send_high_water: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    /// Prewarmed backend connections per worker.
    pub prewarm: usize,
    pub prewarm_max_age: Duration,
    pub backend_handshake_timeout: Duration,
    /// Pooled listeners' shared part (None without `pooled_listen`).
    pub pooled: Option<Arc<pooled::PooledShared>>,
    /// The script pass-through listeners run (None without `lua_script`).
    pub script: Option<Arc<crate::script::ScriptShared>>,
    next_backend: AtomicUsize,
    /// Client connections open across all workers (until their socket is released).
    pub active: AtomicUsize,
    sources: Mutex<HashMap<IpAddr, usize>>,
}

impl Shared {
    pub fn new(config: &crate::config::Config) -> Shared {
        let ms = Duration::from_millis;
        let mut backends = config.backends.clone();
        backends.extend_from_slice(&config.read_only_backends);
        Shared {
            backends,
            rw_backends: config.backends.len(),
            backend_source: config.backend_source,
            max_connections: config.max_connections,
            max_per_source: config.max_connections_per_source,
            max_packet_size: config.max_packet_size as u64,
            send_high_water: config.send_high_water,
            handshake_timeout: ms(config.handshake_timeout_ms),
            idle_timeout: (config.idle_timeout_ms > 0).then(|| ms(config.idle_timeout_ms)),
            // Prewarmed connections serve unscripted pass-through clients only.
            prewarm: if config.listen.is_empty() || config.lua_script.is_some() {
                0
            } else {
                config.prewarm
            },
            prewarm_max_age: ms(config.prewarm_max_age_ms),
            backend_handshake_timeout: ms(config.backend_handshake_timeout_ms),
            pooled: None,
            script: crate::script::ScriptShared::new(config),
            next_backend: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// The next backend, round-robin.
    pub fn pick_backend(&self) -> SocketAddr {
        self.backends[self.pick_index()]
    }

    /// The index of the next read-write backend, round-robin.
    pub fn pick_index(&self) -> usize {
        let i = self.next_backend.fetch_add(1, Ordering::Relaxed);
        i % self.rw_backends
    }

    /// Where backend connections are made from.
    pub fn source_for(&self, backend: &SocketAddr) -> Option<SocketAddr> {
        let ip = self.backend_source?;
        (ip.is_ipv4() == backend.is_ipv4()).then_some(SocketAddr::new(ip, 0))
    }

    /// Counts a client in: false (and nothing counted) when a limit says no. `Err` names the
    /// limit.
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<(), String> {
        let active = self.active.fetch_add(1, Ordering::Relaxed);
        if active >= self.max_connections {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return Err(format!(
                "Too many connections (ringproxy max_connections = {})",
                self.max_connections
            ));
        }
        if let (Some(ip), true) = (peer, self.max_per_source > 0) {
            let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_source {
                drop(map);
                self.active.fetch_sub(1, Ordering::Relaxed);
                return Err(format!(
                    "Too many connections from your address (ringproxy max_connections_per_source = {})",
                    self.max_per_source
                ));
            }
            *n += 1;
        }
        Ok(())
    }

    /// Counts a client out (its socket is gone).
    pub fn release(&self, peer: Option<IpAddr>) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        if let (Some(ip), true) = (peer, self.max_per_source > 0) {
            let mut map = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// At most one log line per `period` for a repeated event, with the count of those left out.
#[derive(Debug)]
pub struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(period: Duration) -> RateLimit {
        RateLimit {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were left out since the last.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.period)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
