//! Lua scripting with MySQL Proxy 0.8's hook API: a script loaded from `lua_script` sees every
//! phase of a pass-through session (connect_server, read_handshake, read_auth,
//! read_auth_result, read_query, read_query_result, disconnect_client) and can forward,
//! rewrite, inject queries, answer from the proxy, or hide results. On pooled listeners it sees
//! each command (read_query, read_query_result, disconnect_client; routing by backend_ndx): see
//! `crate::session::pooled`'s `script` module.
//!
//! Layers, from the wire up:
//! - [`session`]: one scripted session (a client, at most one backend connection) as an
//!   I/O-free machine: whole packets in, [`session::Out`]s out, one hook call in flight.
//! - [`part`]: [`part::Scripted`], the part of a worker that owns its scripted sessions, does
//!   their I/O and hands their hook calls to the executor.
//! - [`executor`]: runs hook calls, inline at the end of the worker's loop turn or on a thread of
//!   the worker's own, fed through a bounded queue, so the ring keeps receiving and decoding
//!   while a script runs.
//! - [`vm`]: the worker's Lua VM (LuaJIT through mlua): the script, per-connection environments,
//!   the `proxy` table, budgets, reloads. [`api`] turns Lua values into packets and back;
//!   [`modules`] are the modules scripts `require` (`mysql.proto`, `mysql.tokenizer`,
//!   `proxy.*`); [`store`] is `proxy.global`, shared by every worker's VM.
//!
//! Calls and decisions ([`Call`], [`Decision`]) are plain data, so the executor may run on
//! another thread.

pub mod api;
pub mod executor;
pub mod modules;
pub mod part;
pub mod session;
pub mod store;
pub mod vm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// `proxy.PROXY_SEND_QUERY` and the other return codes, as MySQL Proxy 0.8 numbers them.
pub const PROXY_SEND_QUERY: i64 = 1;
pub const PROXY_SEND_RESULT: i64 = 2;
pub const PROXY_IGNORE_RESULT: i64 = 4;

/// The hooks a connection's script defines, one bit each (see [`Hooks::has`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hooks(pub u8);

/// The hooks, in the bit order of [`Hooks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookName {
    ConnectServer = 0,
    ReadHandshake = 1,
    ReadAuth = 2,
    ReadAuthResult = 3,
    ReadQuery = 4,
    ReadQueryResult = 5,
    DisconnectClient = 6,
}

impl HookName {
    pub fn lua_name(self) -> &'static str {
        match self {
            HookName::ConnectServer => "connect_server",
            HookName::ReadHandshake => "read_handshake",
            HookName::ReadAuth => "read_auth",
            HookName::ReadAuthResult => "read_auth_result",
            HookName::ReadQuery => "read_query",
            HookName::ReadQueryResult => "read_query_result",
            HookName::DisconnectClient => "disconnect_client",
        }
    }
}

impl Hooks {
    pub fn has(self, h: HookName) -> bool {
        self.0 & (1 << h as u8) != 0
    }
}

/// One hook call for connection `conn` (the session's owner token), with what the connection
/// learned since its last call (applied to `proxy.connection` first).
#[derive(Debug)]
pub struct Call {
    pub conn: u64,
    pub hook: Hook,
    pub updates: Vec<Update>,
}

/// Something `proxy.connection` shows, learned from the wire.
#[derive(Debug, Clone)]
pub enum Update {
    /// The backend's greeting (payload), from backend `ndx` (0-based) at `addr`.
    Server {
        greeting: Vec<u8>,
        ndx: usize,
        addr: SocketAddr,
    },
    /// The client's handshake response (payload).
    Client { response: Vec<u8> },
    /// Who the client is, when the proxy authenticated it itself (pooled listeners).
    Identity {
        username: Vec<u8>,
        default_db: Vec<u8>,
    },
}

/// What a hook is called with. Packets are payloads (no header).
#[derive(Debug)]
pub enum Hook {
    /// A new client: its environment is made (the script's chunk runs), then connect_server.
    Open(Box<ConnInfo>),
    /// The backend's greeting arrived (see [`Update::Server`]).
    Handshake,
    /// The client's handshake response arrived (see [`Update::Client`]).
    Auth,
    /// The server's answer to the authentication (OK or ERR).
    AuthResult(Vec<u8>),
    /// A client command.
    Query(Vec<u8>),
    /// The result of an injected query.
    Result(Box<Injected>),
    /// The client left: disconnect_client, then the environment is dropped.
    Close,
}

/// Where a client connection is.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub client: Option<SocketAddr>,
    pub proxy: Option<SocketAddr>,
    /// A pooled listener's session: connect_server is not called (there is no backend
    /// connection of its own to choose).
    pub pooled: bool,
}

/// An injected query and its result, for read_query_result.
#[derive(Debug, Clone)]
pub struct Injected {
    pub id: i64,
    pub query: Vec<u8>,
    pub resultset_is_needed: bool,
    /// Microseconds from sending the query to the first packet of its result.
    pub query_time_us: u64,
    /// Microseconds from sending the query to the end of its result.
    pub response_time_us: u64,
    /// The result's packets (payloads).
    pub packets: Vec<Vec<u8>>,
    /// Capabilities of the backend connection.
    pub caps: u32,
}

/// A query for the backend from `proxy.queries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub id: i64,
    pub packet: Vec<u8>,
    pub resultset_is_needed: bool,
}

/// What a hook returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// nil, another value, or the hook failed: the proxy goes on as without the hook.
    NoDecision,
    SendQuery,
    SendResult,
    IgnoreResult,
}

/// The outcome of a [`Call`].
#[derive(Debug, Clone)]
pub struct Decision {
    pub conn: u64,
    pub ret: Ret,
    /// `proxy.response` as packets (payloads), when the hook returned PROXY_SEND_RESULT.
    pub response: Option<Vec<Vec<u8>>>,
    /// `proxy.queries` after the call (the queue is emptied).
    pub queries: Vec<Injection>,
    /// `proxy.connection.backend_ndx` after connect_server and read_query (0-based), when the
    /// script set one: the backend of a pass-through session (connect_server), of a pooled
    /// session's commands (read_query).
    pub backend_ndx: Option<usize>,
    /// The hooks the connection's script defines (after [`Hook::Open`]).
    pub hooks: Hooks,
}

impl Decision {
    pub fn none(conn: u64) -> Decision {
        Decision {
            conn,
            ret: Ret::NoDecision,
            response: None,
            queries: Vec::new(),
            backend_ndx: None,
            hooks: Hooks::default(),
        }
    }
}

/// A backend as `proxy.global.backends` shows it.
#[derive(Debug)]
pub struct BackendInfo {
    pub addr: SocketAddr,
    /// BACKEND_TYPE_RW (1) or BACKEND_TYPE_RO (2).
    pub kind: u8,
    /// Scripted sessions connected to it now.
    pub connected_clients: AtomicUsize,
}

/// What every worker's scripting shares: the settings, the backends, `proxy.global`, and the
/// reload generation (bumped by SIGHUP).
#[derive(Debug)]
pub struct ScriptShared {
    pub path: PathBuf,
    pub lua_path: Option<String>,
    pub lua_cpath: Option<String>,
    pub executor_thread: bool,
    pub queue_depth: usize,
    pub max_instructions: u64,
    pub memory_limit: usize,
    pub backends: Vec<BackendInfo>,
    pub store: store::Store,
    pub reloads: AtomicU64,
}

impl ScriptShared {
    /// The scripting of `config`, or None without a script.
    pub fn new(config: &crate::config::Config) -> Option<Arc<ScriptShared>> {
        let path = config.lua_script.clone()?;
        let rw = config.backends.iter().map(|a| (a, 1));
        let ro = config.read_only_backends.iter().map(|a| (a, 2));
        let backends = rw
            .chain(ro)
            .map(|(addr, kind)| BackendInfo {
                addr: *addr,
                kind,
                connected_clients: AtomicUsize::new(0),
            })
            .collect();
        Some(Arc::new(ScriptShared {
            path,
            lua_path: config.lua_path.clone(),
            lua_cpath: config.lua_cpath.clone(),
            executor_thread: config.lua_executor_thread,
            queue_depth: config.lua_queue_depth,
            max_instructions: config.lua_max_instructions,
            memory_limit: config.lua_memory_limit,
            backends,
            store: store::Store::with_config_table(),
            reloads: AtomicU64::new(0),
        }))
    }

    /// Asks every VM to reload the script before its next call (SIGHUP).
    pub fn request_reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }
}
