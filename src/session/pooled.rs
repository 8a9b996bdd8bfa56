//! Pooled sessions, ProxySQL style: the proxy authenticates the client itself
//! ([`PooledClient`]), and runs each of its commands on a backend connection of the worker's
//! pool ([`PooledBackend`], logged in as the same user), which goes back to the pool after the
//! response unless the session must keep it. [`Pooled`] is that part of a worker: the sessions,
//! the pooled connections, the pool and its waiters, the statement registry, and the carrying
//! out of both machines' actions.
//!
//! A session's state (schema, system and user variables, last insert id) is what its last
//! connection reported through session tracking (and, for user variables, read back after the
//! statements that assign them); a connection in another state is given the session's state
//! first ([`SessionState::replay_from`]). A session keeps its connection while something that
//! cannot be replayed holds (see [`Pins`] and [`Held`]); nothing is refused for it.
//!
//! A plain SELECT that finds no free connection may be pipelined behind other sessions'
//! SELECTs on a busy one instead of waiting (the `pipeline` module).

mod pipeline;
mod script;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::action::Action;
use super::login::Credentials;
use super::pool::{Limits, Pool, PoolKey, Waiter};
use super::pooled_backend::{
    user_var_columns, Done, Job, Outcome, Phase as ConnPhase, PooledBackend,
};
use super::pooled_client::{Event, Phase as ClientPhase, PooledClient, SHAPING};
use super::pooled_stmt::{
    opens_cursor, rewrite_execute, stmt_id, with_stmt_id, Cached, SessionStmt, Statements,
};
use super::state::{Replay, SessionState};
use super::users::{UserEntry, Users};
use super::{BackendId, Owner, PooledId, RateLimit, Shared};
use crate::error::Error;
use crate::protocol::auth_server::{Learned, Sha2Cache, Stored};
use crate::protocol::constants::*;
use crate::protocol::framing::write_packet;
use crate::protocol::packets::{write_err_packet, write_ok_packet};
use crate::protocol::sql;
use crate::runtime::{BufRef, Io, Slab, SockId};
use crate::script::Call;
use script::{Next, SessionScript};

/// Commands a session may have waiting behind the one running before its reading is paused.
const MAX_QUEUED: usize = 64;
/// How long a login may wait for the backends' users to be reloaded.
const LOOKUP_WAIT: Duration = Duration::from_secs(3);
/// How often a login waiting for a reload checks again.
const LOOKUP_POLL: Duration = Duration::from_millis(20);
/// Prepare responses larger than this are not cached.
const PREPARE_CACHE_MAX: usize = 64 * 1024;
/// ER_UNKNOWN_STMT_HANDLER.
const ER_UNKNOWN_STMT_HANDLER: u16 = 1243;
/// The error a command gets when no connection became free in time (ProxySQL's code for it).
const ER_POOL_TIMEOUT: u16 = 9001;
/// How long a connection may go on with the command of a client that left before it is
/// closed instead of pooled.
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// How long a connection that said COM_QUIT waits for the server to close before the proxy
/// closes it.
const QUIT_GRACE: Duration = Duration::from_secs(1);
/// How long a worker's session must have waited for a connection before the worker asks the
/// others for room (see [`Pooled::update_hungry`]): waits shorter than that are a busy pool's
/// normal queueing, and giving connections back and forth for them would only churn.
const HUNGRY_AFTER: Duration = Duration::from_millis(20);

/// What the workers share for pooled sessions.
#[derive(Debug)]
pub struct PooledShared {
    pub users: Arc<Users>,
    pub limits: Limits,
    pub idle_timeout: Option<Duration>,
    /// Idle connections per worker and key the idle timeout spares (`pool_min_idle`).
    pub min_idle: usize,
    pub max_age: Option<Duration>,
    pub ping_after: Duration,
    pub wait_timeout: Duration,
    pub failure_delay: Duration,
    /// autocommit=0 alone pins a session (`autocommit_off_pins`).
    pub autocommit_off_pins: bool,
    /// Commands pipelined per connection at most (`pipeline_depth`; 0: none).
    pub pipeline_depth: usize,
    /// Listeners from this index on are pooled ones.
    pub first_listener: usize,
    /// Failed logins per client address: count and time of the last.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    next_conn_id: AtomicU32,
    /// Every pooled session by the connection id its greeting gave (what KILL names).
    registry: Mutex<HashMap<u32, Arc<KillTarget>>>,
    /// Workers whose sessions starve for a connection. The connection limit is shared, the
    /// pools are not: while another worker's sessions starve, a worker closes its free
    /// connections when it holds more than its share or has no session waiting itself.
    hungry: AtomicUsize,
    /// A worker's fair share of the limit: the limit over all backends ÷ workers. 0 when the
    /// limit is below the worker count: connections then rotate to the workers that starve.
    share: usize,
}

/// What a KILL from another session needs of a session: the server thread running its
/// command now (0: none), and whether it was killed.
#[derive(Debug, Default)]
pub struct KillTarget {
    thread: AtomicU32,
    killed: AtomicBool,
}

impl PooledShared {
    pub fn new(config: &crate::config::Config, users: Arc<Users>) -> PooledShared {
        let share = config.max_backend_connections * config.backends.len() / config.workers.max(1);
        if share == 0 {
            log::warn!(
                "max_backend_connections {} over {} backend(s) is below the {} workers: a worker \
                 gives its connection up whenever another worker's sessions starve, so \
                 connections rotate (raise max_backend_connections to at least the worker count)",
                config.max_backend_connections,
                config.backends.len(),
                config.workers
            );
        }
        let ms = Duration::from_millis;
        let opt = |v: u64| (v > 0).then(|| ms(v));
        PooledShared {
            users,
            limits: Limits::new(
                config.backends.len() + config.read_only_backends.len(),
                config.max_backend_connections,
            ),
            idle_timeout: opt(config.pool_idle_timeout_ms),
            min_idle: config.pool_min_idle,
            max_age: opt(config.pool_max_age_ms),
            ping_after: ms(config.pool_ping_after_ms),
            wait_timeout: ms(config.pool_wait_timeout_ms),
            failure_delay: ms(config.auth_failure_delay_ms),
            autocommit_off_pins: config.autocommit_off_pins,
            pipeline_depth: config.pipeline_depth,
            first_listener: config.listen.len(),
            failures: Mutex::new(HashMap::new()),
            next_conn_id: AtomicU32::new(1),
            registry: Mutex::new(HashMap::new()),
            hungry: AtomicUsize::new(0),
            share,
        }
    }

    /// How long to wait before answering a login from `ip`, after its failures.
    fn answer_delay(&self, ip: Option<IpAddr>) -> Duration {
        let Some(ip) = ip else { return Duration::ZERO };
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((n, _)) if *n > 0 => self.failure_delay * (1u32 << (n - 1).min(3)),
            _ => Duration::ZERO,
        }
    }

    fn register(&self, id: u32) -> Arc<KillTarget> {
        let target = Arc::new(KillTarget::default());
        let mut map = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(id, Arc::clone(&target));
        target
    }

    fn unregister(&self, id: u32) {
        let mut map = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&id);
    }

    fn target(&self, id: u32) -> Option<Arc<KillTarget>> {
        let map = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id).cloned()
    }

    /// Records a login's result for its address.
    fn login_result(&self, ip: Option<IpAddr>, ok: bool, now: Instant) {
        let Some(ip) = ip else { return };
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            map.remove(&ip);
            return;
        }
        let e = map.entry(ip).or_insert((0, now));
        *e = (e.0.saturating_add(1), now);
        if map.len() > 100_000 {
            // Bounded: forget addresses whose last failure is old.
            map.retain(|_, (_, t)| now.saturating_duration_since(*t) < Duration::from_secs(600));
        }
    }
}

/// What keeps a session on its connection for good (until the condition ends).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Pins {
    /// LOCK TABLES / FLUSH ... WITH READ LOCK, until UNLOCK TABLES.
    locks: bool,
    /// A user lock whose name the proxy cannot tell (not a string literal, or taken through a
    /// prepared statement): held until the session ends or RELEASE_ALL_LOCKS.
    get_lock: bool,
    /// A temporary table was created or dropped.
    temp_table: bool,
    /// Text PREPARE.
    text_prepare: bool,
    /// The server reported a state change the proxy cannot replay.
    untracked: bool,
    /// COM_SET_OPTION, a connection that does not track state, or a failed replay.
    other: bool,
}

impl Session {
    /// Whether something keeps the session on its connection for good (until its condition
    /// ends): a pin, a user lock or a temporary table.
    fn pinned(&self) -> bool {
        self.pins.any() || !self.user_locks.is_empty() || !self.temp_tables.is_empty()
    }
}

impl Pins {
    fn any(&self) -> bool {
        self.locks
            || self.get_lock
            || self.temp_table
            || self.text_prepare
            || self.untracked
            || self.other
    }
}

/// Why a session keeps its connection after a command (the first that holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Transaction,
    Autocommit,
    Locks,
    TempTable,
    TextPrepare,
    Cursor,
    LongData,
    Warnings,
    FoundRows,
    Untracked,
    Other,
}

/// The command a session runs now.
#[derive(Debug, Default)]
struct Running {
    code: u8,
    /// The client's sequence id of the command (responses the proxy makes follow it).
    seq: u8,
    payload: Vec<u8>,
    /// The connection is being set up for it (login, ping, replay); the command is not sent.
    sent: bool,
    /// The session's state was replayed on the connection for it (once is enough).
    replayed: bool,
    /// User variables it assigns (read back after it).
    vars: Vec<Vec<u8>>,
    /// Session system variables it sets (read back after it).
    sysvars: Vec<Vec<u8>>,
    stmt: Statement,
    /// A prepare: the client-visible id it gets, and the statement key.
    prepare: Option<(u32, u64)>,
    outcome: Option<Outcome>,
    /// It is the login's check of the backend side (no client command).
    login: bool,
    /// Its GET_LOCK / RELEASE_LOCK / RELEASE_ALL_LOCKS calls.
    lock_calls: Vec<sql::LockCall>,
    /// The temporary table it creates or the tables it drops.
    temp: Option<sql::TempTables>,
    /// Its shape, when it is a statement that may be pipelined (see [`pipeline`]).
    shape: Option<u64>,
    /// When it was sent.
    sent_at: Option<Instant>,
    /// It was pipelined behind other sessions' commands.
    rode: bool,
}

/// What the proxy read of a COM_QUERY.
#[derive(Debug, Default, Clone, Copy)]
struct Statement {
    lock: bool,
    unlock: bool,
    get_lock: bool,
    temp_table: bool,
    text_prepare: bool,
    calc_found_rows: bool,
    last_insert_id: bool,
    user_var_write: bool,
    /// A SET of something the proxy cannot read back (SET TRANSACTION, SET ROLE...).
    opaque_set: bool,
}

impl Statement {
    fn of(sql: &[u8]) -> Statement {
        let s = sql::classify(sql);
        Statement {
            lock: s.lock_tables || s.flush_with_read_lock,
            unlock: s.unlock_tables,
            get_lock: s.get_lock,
            temp_table: s.temporary_table,
            text_prepare: s.text_prepare,
            calc_found_rows: s.calc_found_rows,
            last_insert_id: s.last_insert_id,
            user_var_write: s.user_var_write,
            opaque_set: false,
        }
    }
}

/// One pooled session.
struct Session {
    sock: SockId,
    /// The connection id its greeting gave, and what KILLs of it use.
    id: u32,
    kill: Arc<KillTarget>,
    client: PooledClient,
    key: Option<PoolKey>,
    /// What backend logins for the session use; shared by the worker's sessions that log in
    /// the same way (see [`Pooled::creds`]).
    cred: Option<Arc<Credentials>>,
    /// The user counted against its max_connections.
    counted: Option<String>,
    state: SessionState,
    conn: Option<BackendId>,
    last_conn: Option<BackendId>,
    /// The connection its command is pipelined on, until its response begins (then `conn`).
    riding: Option<BackendId>,
    pins: Pins,
    /// User locks (GET_LOCK) the session holds by literal name, with how often taken.
    user_locks: Vec<(Vec<u8>, u32)>,
    /// Temporary tables the session created (schema as resolved then, name).
    temp_tables: Vec<(Vec<u8>, Vec<u8>)>,
    /// One-command holds from the last command: warnings, SQL_CALC_FOUND_ROWS, transaction
    /// characteristics.
    held: Option<Held>,
    queue: VecDeque<(u8, Vec<u8>)>,
    /// Boxed: an idle session (most of them) then pays one pointer for it.
    running: Option<Box<Running>>,
    stmts: HashMap<u32, SessionStmt>,
    next_stmt: u32,
    waiting_since: Option<Instant>,
    comp_seq: u8,
    closed: bool,
    last_active: Instant,
    /// The login's answer waits until then (earlier failed logins from the address).
    answer_at: Option<Instant>,
    /// The login was delayed already.
    delayed: bool,
    /// The login waits for the users to be reloaded past this generation, until the deadline.
    lookup: Option<(u64, Instant)>,
    /// A reload was waited for already (the next lookup answers whatever it finds).
    reloaded: bool,
    /// The state of the connection the login ran on, right after that connection's own login
    /// (shared with it): with the login's schema, what COM_RESET_CONNECTION goes back to.
    baseline: Arc<SessionState>,
    /// The Lua script's view of the session (with a script).
    script: Option<Box<SessionScript>>,
    /// The backend (index into `Shared::backends`) the script routes the session's commands to
    /// (`proxy.connection.backend_ndx`); a connection the session holds keeps serving it.
    route: Option<usize>,
}

/// A client handed to pass-through: its account uses an auth plugin the proxy cannot log in
/// with (the backend authenticates it, and the session gets a backend connection of its own).
pub struct Handoff {
    pub sock: SockId,
    pub peer: Option<SocketAddr>,
    pub accepted_at: Instant,
    /// Its handshake response, rewritten ([`PooledClient::passthrough_response`]).
    pub response: Vec<u8>,
}

/// The pooled part of one worker.
pub struct Pooled {
    shared: Arc<Shared>,
    ps: Arc<PooledShared>,
    /// Boxed: the table then grows by a pointer per session, not by a whole session's size.
    sessions: Slab<Box<Session>>,
    conns: Slab<PooledBackend>,
    pool: Pool<PooledId>,
    stmts: Statements,
    sha2: Sha2Cache,
    server_version: Vec<u8>,
    warnings: RateLimit,
    draining: bool,
    handoffs: Vec<Handoff>,
    /// Lua hook calls queued this turn (see [`script`]).
    calls: Vec<Call>,
    /// A script runs on pooled listeners too.
    scripting: bool,
    /// This worker is counted in [`PooledShared::hungry`].
    hungry: bool,
    /// Connections in `conns` that said COM_QUIT and wait for the server to close.
    quitting: usize,
    /// One copy of each set of credentials logged-in sessions use (a thousand sessions of one
    /// user share one), pruned each tick of those no session uses any more.
    creds: HashSet<Arc<Credentials>>,
    /// One copy of each user name the sessions' pool keys hold, pruned the same way.
    names: HashSet<Arc<str>>,
    /// Busy connections whose command others may be pipelined behind (checked when used).
    pipelines: Vec<BackendId>,
    /// Per statement shape, the moving average of its time on a connection of its own, in µs
    /// (see [`pipeline`]).
    shapes: HashMap<u64, u32>,
}

impl Pooled {
    pub fn new(shared: Arc<Shared>, ps: Arc<PooledShared>) -> Pooled {
        let shared_script = shared.script.is_some();
        let server_version = ps
            .users
            .server_version()
            .unwrap_or_else(|| "8.0.0-ringproxy".into())
            .into_bytes();
        Pooled {
            shared,
            ps,
            sessions: Slab::new(),
            conns: Slab::new(),
            pool: Pool::new(),
            stmts: Statements::default(),
            sha2: Sha2Cache::new(),
            server_version,
            warnings: RateLimit::new(Duration::from_secs(5)),
            draining: false,
            handoffs: Vec::new(),
            hungry: false,
            quitting: 0,
            creds: HashSet::new(),
            names: HashSet::new(),
            pipelines: Vec::new(),
            shapes: HashMap::new(),
            calls: Vec::new(),
            scripting: shared_script,
        }
    }

    pub fn is_pooled_listener(&self, listener: usize) -> bool {
        listener >= self.ps.first_listener
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.conns.is_empty()
    }

    pub fn counts(&self) -> (usize, usize) {
        (self.sessions.len(), self.conns.len())
    }

    // ---- accepting and logging in ----

    pub fn accept(&mut self, io: &mut Io, sock: SockId, peer: Option<SocketAddr>) {
        let now = io.now();
        let mut nonce = [0u8; 20];
        let mut random = [0u8; 160];
        if getrandom::fill(&mut random).is_err() {
            io.close(sock);
            return;
        }
        let mut words = random
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        nonce.copy_from_slice(&crate::protocol::auth::new_scramble(|| {
            words.next().unwrap_or(0)
        }));
        let conn_id = self.ps.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let client = PooledClient::new(
            peer,
            nonce,
            conn_id,
            self.shared.max_packet_size as usize,
            now,
        );
        let greeting = client.greeting(&self.server_version);
        let kill = self.ps.register(conn_id);
        let sid = PooledId(self.sessions.insert(Box::new(Session {
            sock,
            id: conn_id,
            kill,
            client,
            key: None,
            cred: None,
            counted: None,
            state: SessionState::default(),
            conn: None,
            last_conn: None,
            riding: None,
            pins: Pins::default(),
            user_locks: Vec::new(),
            temp_tables: Vec::new(),
            held: None,
            queue: VecDeque::new(),
            running: None,
            stmts: HashMap::new(),
            next_stmt: 1,
            waiting_since: None,
            comp_seq: 0,
            closed: false,
            last_active: now,
            answer_at: None,
            delayed: false,
            lookup: None,
            reloaded: false,
            baseline: Arc::default(),
            script: None,
            route: None,
        })));
        io.set_owner(sock, Owner::Pooled(sid).token());
        io.stats.active += 1;
        io.stats.pooled_sessions += 1;
        io.send_owned(sock, greeting);
        io.set_timer(
            now + self.shared.handshake_timeout,
            Owner::Pooled(sid).token(),
        );
    }

    pub fn on_client_data(&mut self, io: &mut Io, sid: PooledId, data: &[u8]) {
        let mut events = Vec::new();
        let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
            return;
        };
        s.last_active = io.now();
        s.client.on_bytes(data, &mut events);
        for e in events {
            self.on_event(io, sid, e);
        }
        self.drive(io, sid);
        self.pause_if_full(io, sid);
    }

    fn on_event(&mut self, io: &mut Io, sid: PooledId, e: Event) {
        match e {
            Event::Send(bytes) => {
                // An auth packet answers the client's last one (compressed ids follow it).
                if let Some(s) = self.sessions.get_mut(sid.0) {
                    s.comp_seq = s.client.response_comp_seq();
                }
                self.send_client(io, sid, bytes, None)
            }
            Event::Login => self.lookup(io, sid),
            Event::Verified(learned) => self.verified(io, sid, learned),
            Event::Denied => self.denied(io, sid),
            Event::Packet { seq, payload } => self.client_packet(io, sid, seq, payload),
            Event::End(err) => self.end_session(io, sid, err),
        }
    }

    /// Looks the login's user up; an unknown user waits for a reload of the backends' users
    /// (if one may happen) before it is refused.
    fn lookup(&mut self, io: &mut Io, sid: PooledId) {
        let now = io.now();
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        let delay = self.ps.answer_delay(s.client.peer.map(|p| p.ip()));
        if delay > Duration::ZERO && !s.delayed {
            s.delayed = true;
            s.answer_at = Some(now + delay);
            io.set_timer(now + delay, Owner::Pooled(sid).token());
            return;
        }
        let Some(login) = s.client.login.clone() else {
            return;
        };
        let ip = s.client.peer.map(|p| p.ip());
        let entry = self.ps.users.lookup(&login.user, ip);
        if entry.is_none() && !s.reloaded && self.ps.users.request_refresh() {
            s.reloaded = true;
            let wait = self.ps.users.refresh_delay() + LOOKUP_WAIT;
            s.lookup = Some((self.ps.users.generation(), now + wait));
            io.set_timer(now + LOOKUP_POLL, Owner::Pooled(sid).token());
            return;
        }
        s.lookup = None;
        let entry = entry.filter(|e| e.active);
        // An account the proxy cannot log in as (pam, gssapi, ed25519 without its password):
        // the server authenticates it, in a pass-through session.
        let unusable = |e: &UserEntry| match &e.stored {
            None => true,
            Some(Stored::Ed25519(_)) => !e.from_config,
            Some(_) => false,
        };
        if entry.as_ref().is_some_and(unusable) {
            if let Some(response) = s.client.passthrough_response() {
                return self.hand_off(sid, response);
            }
        }
        let stored = entry.as_ref().and_then(|e| e.stored.clone());
        let cached = stored
            .as_ref()
            .and_then(|st| self.sha2.lookup(&login.user, st));
        let mut fresh = [0u8; 32];
        let _ = getrandom::fill(&mut fresh);
        let mut events = Vec::new();
        s.client.check(stored, cached, &fresh, &mut events);
        if let Some(e) = entry {
            // Some clients name an empty database when they mean none.
            let named = login.database.clone().filter(|d| !d.is_empty());
            let db = named.or(e.default_schema.clone());
            s.cred = Some(Arc::new(Credentials {
                user: login.user.clone(),
                password: String::new(),
                stage1: None,
                db,
            }));
            s.key = Some(PoolKey {
                user: intern(&mut self.names, login.user.as_str().into()),
                caps: login.caps & SHAPING,
                charset: login.charset,
            });
            if e.max_connections > 0 && !self.ps.users.connect(&login.user, e.max_connections) {
                s.key = None; // refused below, after the password check
            } else if e.max_connections > 0 {
                s.counted = Some(login.user.clone());
            }
        }
        for e in events {
            self.on_event(io, sid, e);
        }
    }

    /// Hands session `sid`'s client to pass-through (see [`Handoff`]).
    fn hand_off(&mut self, sid: PooledId, response: Vec<u8>) {
        let Some(s) = self.sessions.remove(sid.0) else {
            return;
        };
        self.ps.unregister(s.id);
        if let Some(user) = s.counted {
            self.ps.users.disconnect(&user);
        }
        self.handoffs.push(Handoff {
            sock: s.sock,
            peer: s.client.peer,
            accepted_at: s.client.accepted_at,
            response,
        });
    }

    /// The clients handed to pass-through since the last call.
    pub fn take_handoffs(&mut self) -> Vec<Handoff> {
        std::mem::take(&mut self.handoffs)
    }

    /// The password is right: log in to a backend as the user (through the pool) and select
    /// the schema; the client gets its OK when that worked.
    fn verified(&mut self, io: &mut Io, sid: PooledId, learned: Option<Learned>) {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        let user = s
            .client
            .login
            .as_ref()
            .map(|l| l.user.clone())
            .unwrap_or_default();
        let (Some(cred), Some(_key)) = (s.cred.as_mut().map(Arc::make_mut), s.key.as_ref()) else {
            let msg = format!("User '{user}' has exceeded the 'max_user_connections' resource");
            let out = s.client.login_error(1226, b"42000", &msg);
            return self.fail_login(io, sid, out);
        };
        // A caching_sha2 fast-path login: the full one before it left the password here.
        let remembered = match &learned {
            Some(Learned::Sha2Stage1(_)) => self
                .ps
                .users
                .lookup(&user, s.client.peer.map(|p| p.ip()))
                .and_then(|e| e.stored.clone())
                .and_then(|st| self.sha2.password(&user, &st).map(<[u8]>::to_vec)),
            _ => None,
        };
        let learned = match (learned, remembered) {
            (Some(Learned::Sha2Stage1(_)), Some(pw)) => Some(Learned::Password(pw)),
            (learned, _) => learned,
        };
        match learned {
            Some(Learned::Password(pw)) => {
                if let Some(entry) = self.ps.users.lookup(&user, s.client.peer.map(|p| p.ip())) {
                    if let Some(st) = entry.stored.as_ref() {
                        self.sha2.remember(&user, st, &pw);
                    }
                }
                cred.password = String::from_utf8_lossy(&pw).into_owned();
            }
            Some(Learned::NativeStage1(stage1)) => cred.stage1 = Some(stage1),
            Some(Learned::Sha2Stage1(_)) | None => {
                let msg = format!(
                    "ringproxy cannot log in to the backends as '{user}': its password is checked with a plugin that does not reveal enough to log in for it (ed25519, or caching_sha2 without the password); configure the user's cleartext password in [[users]]"
                );
                let out = s.client.login_error(1045, b"28000", &msg);
                return self.fail_login(io, sid, out);
            }
        }
        let db = cred.db.clone().map(String::into_bytes);
        log::trace!("session {sid:?}: {user} logs in, schema {:?}", cred.db);
        s.state.schema = db;
        s.cred = s.cred.take().map(|c| intern(&mut self.creds, c));
        s.running = Some(Box::new(Running {
            login: true,
            ..Running::default()
        }));
        self.acquire(io, sid);
    }

    /// The login fails with the server's ERR packet `errpkt` (its text and code).
    fn login_refused(&mut self, io: &mut Io, sid: PooledId, errpkt: &[u8]) {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        let payload = errpkt.get(HEADER_LEN..).unwrap_or(&[]);
        let out = match crate::protocol::packets::parse_err(payload, CLIENT_PROTOCOL_41) {
            Ok(e) => {
                let state = e.sql_state.unwrap_or(*b"HY000");
                s.client
                    .login_error(e.code, &state, &String::from_utf8_lossy(e.message))
            }
            Err(_) => {
                s.client
                    .login_error(1045, b"28000", "ringproxy: the backend refused the login")
            }
        };
        // Give the connection back (the session never ran anything on it).
        if let Some(bid) = s.conn.take() {
            if let Some(b) = self.conns.get_mut(bid.0) {
                b.session = None;
            }
            self.give_back(io, bid, true);
        }
        self.fail_login(io, sid, out);
    }

    fn fail_login(&mut self, io: &mut Io, sid: PooledId, out: Vec<u8>) {
        io.stats.pooled_login_failures += 1;
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        let ip = s.client.peer.map(|p| p.ip());
        self.ps.login_result(ip, false, io.now());
        self.send_client(io, sid, out, None);
        self.close_session(io, sid, true);
    }

    fn denied(&mut self, io: &mut Io, sid: PooledId) {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        // A wrong password may be a password changed on the server since the last reload.
        self.ps.users.request_refresh();
        let out = s.client.deny();
        self.fail_login(io, sid, out);
    }

    /// The backend side of the login worked: the client is in.
    fn login_confirmed(&mut self, io: &mut Io, sid: PooledId) {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        s.running = None;
        // The OK of the first login is never compressed (compression starts after it); that
        // of a COM_CHANGE_USER is, when the connection is.
        let first = !s.client.compressed();
        let ok = s.client.accept_login();
        self.ps
            .login_result(s.client.peer.map(|p| p.ip()), true, io.now());
        io.stats.pooled_logins += 1;
        match first {
            true => io.send_owned(s.sock, ok),
            false => self.send_client(io, sid, ok, None),
        }
        if first {
            self.script_open(sid);
        }
        self.arm_idle_timer(io, sid);
    }

    // ---- commands ----

    fn client_packet(&mut self, io: &mut Io, sid: PooledId, seq: u8, payload: Vec<u8>) {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        // LOAD DATA LOCAL contents go straight to the connection that asked for them.
        if let Some(bid) = s
            .conn
            .filter(|_| s.running.as_ref().is_some_and(|r| r.sent))
        {
            if let Some(b) = self.conns.get_mut(bid.0).filter(|b| b.awaits_client_data()) {
                let mut acts = Vec::new();
                let r = b.client_data(seq, &payload, &mut acts);
                self.conn_actions(io, bid, None, &[], acts);
                if let Err(e) = r {
                    self.end_session(io, sid, Some(Error::client_protocol(e)));
                }
                return;
            }
        }
        s.queue.push_back((seq, payload));
    }

    fn pause_if_full(&mut self, io: &mut Io, sid: PooledId) {
        if let Some(s) = self
            .sessions
            .get(sid.0)
            .filter(|s| s.queue.len() >= MAX_QUEUED)
        {
            io.pause_read(s.sock);
        }
    }

    /// Starts the session's next command if it runs none.
    fn drive(&mut self, io: &mut Io, sid: PooledId) {
        loop {
            let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
                return;
            };
            if s.running.is_some() || !s.client.authenticated() {
                return;
            }
            if s.kill.killed.load(Ordering::Relaxed) {
                let e = Error::connection_killed();
                return self.end_session(io, sid, Some(e));
            }
            let (seq, payload) = match s.next_command(sid, &mut self.calls) {
                Next::Run(seq, payload) => (seq, payload),
                Next::Wait => return,
                Next::Idle => {
                    if io.is_paused(s.sock) {
                        io.resume_read(s.sock);
                    }
                    return;
                }
            };
            s.comp_seq = s.client.response_comp_seq();
            if self.answer_locally(io, sid, seq, &payload) {
                continue;
            }
            if let Some(payload) = self.translate_kill(io, sid, seq, payload) {
                self.start_command(io, sid, seq, payload);
            }
        }
    }

    /// A KILL names the ids the proxy's greetings gave: the session it names is marked killed
    /// (it ends at its next command, or when its current one ends), and a command it runs is
    /// stopped on its server thread (`KILL QUERY thread`, sent on this session's connection).
    /// Returns the command to run: `payload` itself when it is not a KILL of a proxy id.
    fn translate_kill(
        &mut self,
        io: &mut Io,
        sid: PooledId,
        seq: u8,
        payload: Vec<u8>,
    ) -> Option<Vec<u8>> {
        let target = match payload.first() {
            Some(&COM_QUERY) => sql::kill_target(&payload[1..]),
            Some(&COM_PROCESS_KILL) => stmt_id(&payload).map(|id| (false, u64::from(id))),
            _ => None,
        };
        let Some((query_only, id)) = target else {
            return Some(payload);
        };
        let found = u32::try_from(id).ok().and_then(|id| self.ps.target(id));
        let Some(t) = found else {
            let msg = format!("Unknown thread id: {id}");
            self.reply_err(io, sid, seq, 1094, b"HY000", &msg);
            return None;
        };
        if !query_only {
            t.killed.store(true, Ordering::Relaxed);
        }
        match t.thread.load(Ordering::Relaxed) {
            0 => {
                self.reply_ok(io, sid, seq);
                None
            }
            thread => Some(format!("\x03KILL QUERY {thread}").into_bytes()),
        }
    }

    /// Commands the proxy answers itself; true when `payload` was one.
    fn answer_locally(&mut self, io: &mut Io, sid: PooledId, seq: u8, payload: &[u8]) -> bool {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return true;
        };
        let code = payload.first().copied().unwrap_or(0);
        match code {
            COM_QUIT => {
                self.end_session(io, sid, None);
                true
            }
            COM_PING => {
                self.reply_ok(io, sid, seq);
                true
            }
            COM_RESET_CONNECTION => {
                self.reset_session(io, sid);
                self.reply_ok(io, sid, seq);
                true
            }
            COM_STMT_CLOSE => {
                let gone = stmt_id(payload).and_then(|id| s.stmts.remove(&id));
                if let Some(st) = gone {
                    self.stmts.release(st.key);
                }
                true
            }
            COM_CHANGE_USER => {
                self.change_user(io, sid, payload);
                true
            }
            COM_STMT_EXECUTE | COM_STMT_FETCH | COM_STMT_RESET | COM_STMT_SEND_LONG_DATA => {
                let known = stmt_id(payload).is_some_and(|id| s.stmts.contains_key(&id));
                if !known {
                    let msg = format!(
                        "Unknown prepared statement handler ({}) given to {}",
                        stmt_id(payload).unwrap_or(0),
                        crate::protocol::command::command_name(code)
                    );
                    if code != COM_STMT_SEND_LONG_DATA {
                        self.reply_err(io, sid, seq, ER_UNKNOWN_STMT_HANDLER, b"HY000", &msg);
                    }
                    return true;
                }
                let held = s.conn.is_some();
                if code == COM_STMT_RESET && !held {
                    // Nothing of the statement lives on a connection the session holds.
                    let id = stmt_id(payload).unwrap_or(0);
                    if let Some(st) = s.stmts.get_mut(&id) {
                        st.long_data = false;
                        st.cursor = false;
                    }
                    self.reply_ok(io, sid, seq);
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    /// COM_CHANGE_USER: the session is reset and logs in again, checked by the proxy.
    fn change_user(&mut self, io: &mut Io, sid: PooledId, payload: &[u8]) {
        self.reset_session(io, sid);
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        if let Some(user) = s.counted.take() {
            self.ps.users.disconnect(&user);
        }
        (s.key, s.cred, s.last_conn) = (None, None, None);
        (s.delayed, s.reloaded) = (false, false);
        let mut events = Vec::new();
        s.client.change_user(payload, &mut events);
        for e in events {
            self.on_event(io, sid, e);
        }
    }

    /// Forgets the session's state, statements and pins; a connection it held is reset and
    /// pooled.
    fn reset_session(&mut self, io: &mut Io, sid: PooledId) {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        s.state = s.baseline.as_ref().clone();
        s.state.schema = s
            .cred
            .as_ref()
            .and_then(|c| c.db.clone())
            .map(String::into_bytes);
        for (_, st) in s.stmts.drain() {
            self.stmts.release(st.key);
        }
        s.held = None;
        let pinned = s.pinned();
        s.pins = Pins::default();
        s.user_locks.clear();
        s.temp_tables.clear();
        if let Some(bid) = s.conn.take() {
            if let Some(b) = self.conns.get_mut(bid.0) {
                b.session = None;
            }
            self.give_back(io, bid, pinned);
        }
    }

    fn start_command(&mut self, io: &mut Io, sid: PooledId, seq: u8, payload: Vec<u8>) {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        let code = payload.first().copied().unwrap_or(0);
        let mut run = Running {
            code,
            seq,
            ..Running::default()
        };
        if code == COM_QUERY {
            let sql = &payload[1..];
            run.stmt = Statement::of(sql);
            if sql::classify(sql).sets_system_vars {
                let set = sql::system_vars_set(sql);
                run.sysvars = set.names;
                run.stmt.opaque_set = set.opaque;
            }
            if run.stmt.get_lock {
                run.lock_calls = sql::user_lock_calls(sql, true);
            }
            if run.stmt.temp_table || !s.temp_tables.is_empty() {
                run.temp = sql::temp_tables(sql, true);
            }
            if run.stmt.user_var_write {
                run.vars = sql::user_vars_written(sql)
                    .map(|v| v.into_owned())
                    .collect();
                run.vars.sort();
                run.vars.dedup();
            }
        }
        if code == COM_STMT_PREPARE {
            let charset = s.key.as_ref().map_or(0, |k| k.charset);
            let key = self.stmts.acquire(&payload[1..], &s.state, charset);
            let client_id = s.next_stmt;
            s.next_stmt = s.next_stmt.wrapping_add(1).max(1);
            let eof = s.client.caps & CLIENT_DEPRECATE_EOF != 0;
            if let Some(c) = self.stmts.cached(key, eof) {
                // Answered from the cache: prepared on a connection when first executed there.
                let mut response = c.response.clone();
                response[HEADER_LEN + 1..HEADER_LEN + 5].copy_from_slice(&client_id.to_le_bytes());
                let st = SessionStmt {
                    key,
                    params: c.params,
                    types: None,
                    cursor: false,
                    long_data: false,
                };
                s.stmts.insert(client_id, st);
                io.stats.prepare_cache_hits += 1;
                return self.send_client(io, sid, response, None);
            }
            run.prepare = Some((client_id, key));
        }
        run.shape = pipeline::shape_of(&self.stmts, self.ps.pipeline_depth, s, &payload);
        run.payload = payload;
        s.running = Some(Box::new(run));
        self.acquire(io, sid);
    }

    /// Gets the session a connection: the one it holds, an idle one (its own last one first,
    /// then one in its state), a new one, or a place among the waiters.
    fn acquire(&mut self, io: &mut Io, sid: PooledId) {
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        if let Some(bid) = s.conn {
            return self.run_on(io, sid, bid);
        }
        let Some(key) = s.key.clone() else { return };
        let (last, fp, route) = (s.last_conn, s.state.fingerprint(), s.route);
        let conns = &self.conns;
        let schemaless = s.state.schema.is_none();
        let prefer = |b: BackendId| {
            let c = conns.get(b.0);
            Some(b) == last
                || c.is_some_and(|c| c.state.fingerprint() == fp)
                || c.is_some_and(|c| schemaless && c.state.schema.is_none())
        };
        let fits = |b: BackendId| on_route(conns, route, b);
        if let Some(bid) = self.pool.take(&key, fits, prefer) {
            let same = self
                .conns
                .get(bid.0)
                .is_some_and(|c| c.state.fingerprint() == fp);
            if same {
                io.stats.pool_hits += 1;
            } else {
                io.stats.pool_replays += 1;
            }
            return self.attach(io, sid, bid);
        }
        io.stats.pool_misses += 1;
        let opened = match self.may_open() {
            true => self.open_conn(io, &key, Some(sid)),
            false => None,
        };
        if let Some(bid) = opened {
            return self.hold_new(io, sid, bid);
        }
        if self.try_ride(io, sid) {
            return;
        }
        // Full: an idle connection of another user is logged in again as this one (or, with
        // other capabilities, makes room once the server has closed it: the session waits).
        let conns = &self.conns;
        if let Some((other_key, other)) = self.pool.take_any(|b| on_route(conns, route, b)) {
            if other_key.caps == key.caps {
                return self.hand_over(io, other, sid, key);
            }
            self.close_conn(io, other);
        }
        self.wait_for_conn(io, sid, key);
    }

    /// Idle connection `bid` of another user goes to session `sid` (pool `key`): COM_CHANGE_USER
    /// logs it in as the session's user; the session's command runs once it is set up.
    fn hand_over(&mut self, io: &mut Io, bid: BackendId, sid: PooledId, key: PoolKey) {
        let session = self.sessions.get(sid.0).filter(|s| !s.closed);
        let Some(cred) = session.and_then(|s| s.cred.as_deref().cloned()) else {
            return self.conn_free(io, bid);
        };
        let Some(b) = self.conns.get_mut(bid.0) else {
            return;
        };
        let now = io.now();
        let mut acts = Vec::new();
        b.change_user(key, Credentials { db: None, ..cred }, now, &mut acts);
        b.session = Some(sid);
        self.hold_new(io, sid, bid);
        io.stats.pool_user_changes += 1;
        io.set_timer(
            now + self.shared.backend_handshake_timeout,
            Owner::PooledConn(bid).token(),
        );
        self.conn_actions(io, bid, None, &[], acts);
    }

    /// Session `sid` holds `bid`, a connection opened or logging in again for it (its command
    /// runs once the connection is set up).
    fn hold_new(&mut self, io: &mut Io, sid: PooledId, bid: BackendId) {
        if let Some(s) = self.sessions.get_mut(sid.0) {
            s.conn = Some(bid);
            s.waiting_since = None;
            io.stats.pooled_conns_held += 1;
        }
    }

    /// Session `sid` waits for a connection of `key` (at most pool_wait_timeout_ms).
    fn wait_for_conn(&mut self, io: &mut Io, sid: PooledId, key: PoolKey) {
        let now = io.now();
        log::trace!("session {sid:?} waits for a connection");
        io.stats.pool_waits += 1;
        if let Some(s) = self.sessions.get_mut(sid.0) {
            s.waiting_since = Some(now);
        }
        self.pool.wait(Waiter {
            session: sid,
            key,
            since: now,
        });
        self.update_hungry(now);
        io.set_timer(now + self.ps.wait_timeout, Owner::Pooled(sid).token());
    }

    /// Opens a pooled connection for `key` (to the backend the session's script routes it to,
    /// else to the next read-write backend with room), for `session`.
    fn open_conn(
        &mut self,
        io: &mut Io,
        key: &PoolKey,
        session: Option<PooledId>,
    ) -> Option<BackendId> {
        let route = session
            .and_then(|s| self.sessions.get(s.0))
            .and_then(|s| s.route);
        let server = match route {
            Some(r) => Some(r).filter(|&r| self.ps.limits.acquire(r))?,
            None => {
                let n = self.shared.rw_backends;
                let start = self.shared.pick_index();
                (0..n)
                    .map(|i| (start + i) % n)
                    .find(|&i| self.ps.limits.acquire(i))?
            }
        };
        let addr = self.shared.backends[server];
        let source = self.shared.source_for(&addr);
        let cred = session
            .and_then(|s| self.sessions.get(s.0))
            .and_then(|s| s.cred.as_deref().cloned())?;
        let cred = Credentials { db: None, ..cred };
        let now = io.now();
        let bid = BackendId(self.conns.insert_with(|k| {
            let sock = io.connect_from(&addr, source, Owner::PooledConn(BackendId(k)).token());
            let mut b = PooledBackend::new(sock, addr, server, key.clone(), cred, now);
            b.session = session;
            b
        }));
        io.stats.pooled_conns += 1;
        io.set_timer(
            now + self.shared.backend_handshake_timeout,
            Owner::PooledConn(bid).token(),
        );
        Some(bid)
    }

    /// `bid` (idle, from the pool) serves session `sid` now.
    fn attach(&mut self, io: &mut Io, sid: PooledId, bid: BackendId) {
        log::trace!("session {sid:?} gets {bid:?}");
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return self.give_back(io, bid, false);
        };
        s.conn = Some(bid);
        s.waiting_since = None;
        io.stats.pooled_conns_held += 1;
        let Some(b) = self.conns.get_mut(bid.0) else {
            return;
        };
        b.session = Some(sid);
        b.client_caps = s.client.caps;
        let stale = io.now().saturating_duration_since(b.last_used) >= self.ps.ping_after;
        if stale {
            let mut acts = Vec::new();
            send_job(b, Job::Ping, &[COM_PING], &mut acts);
            return self.conn_actions(io, bid, None, &[], acts);
        }
        self.run_on(io, sid, bid)
    }

    /// Sends the session's running command on its connection, after what the connection needs
    /// to be in the session's state (replay, a prepare).
    fn run_on(&mut self, io: &mut Io, sid: PooledId, bid: BackendId) {
        let (Some(s), Some(b)) = (self.sessions.get_mut(sid.0), self.conns.get_mut(bid.0)) else {
            return;
        };
        if !b.is_idle() {
            return; // it logs in, pings or replays: run_on comes again when it is idle
        }
        let Some(run) = s.running.as_mut().filter(|r| !r.sent) else {
            return;
        };
        b.client_caps = s.client.caps;
        if run.login {
            // A new session starts in the state of a fresh connection, in its own schema.
            let schema = s.state.schema.take();
            s.state = b.baseline.as_ref().clone();
            s.state.schema = schema;
        }
        if s.state.schema.is_none() && b.state.schema.is_some() {
            return self.swap_for_schemaless(io, sid, bid);
        }
        let mut acts = Vec::new();
        let replay = s.state.replay_from(&b.state, run.stmt.last_insert_id);
        if !replay.is_empty() && !run.replayed {
            run.replayed = true;
            replay_jobs(b, &replay, &mut acts);
            // What the server reports as the replay runs confirms it; a failure pins.
            // LAST_INSERT_ID() was only replayed when the command reads it.
            let last_insert_id = match run.stmt.last_insert_id {
                true => s.state.last_insert_id,
                false => b.state.last_insert_id,
            };
            b.state = s.state.clone();
            b.state.last_insert_id = last_insert_id;
            return self.conn_actions(io, bid, None, &[], acts);
        }
        if run.login {
            s.running = None;
            s.baseline = Arc::clone(&b.baseline);
            self.login_confirmed(io, sid);
            return self.command_done(io, sid, bid);
        }
        let packet = match command_packet(run, &mut s.stmts, b) {
            Ok(packet) => packet,
            Err(Some(key)) => return self.reprepare(io, sid, bid, key),
            Err(None) => return,
        };
        run.sent = true;
        run.sent_at = Some(io.now());
        s.kill.thread.store(b.thread_id, Ordering::Relaxed);
        let job = Job::Client {
            prepare: run.prepare,
        };
        send_job(b, job, &packet, &mut acts);
        io.stats.user_var_reads += u64::from(!run.vars.is_empty());
        read_back_jobs(b, run, &mut acts);
        let no_response = run.code == COM_STMT_SEND_LONG_DATA;
        if no_response {
            run.outcome = Some(Outcome::default());
        }
        self.offer_pipeline(sid, bid);
        self.conn_actions(io, bid, None, &[], acts);
        if no_response {
            self.maybe_done(io, bid);
        }
    }

    /// A session without a default schema cannot run on a connection that has one (no
    /// statement unsets it): that connection is closed and a new one opened in its place.
    fn swap_for_schemaless(&mut self, io: &mut Io, sid: PooledId, bid: BackendId) {
        self.close_conn(io, bid);
        io.stats.pooled_schema_swaps += 1;
        io.stats.pooled_conns_held = io.stats.pooled_conns_held.saturating_sub(1);
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        s.conn = None;
        let Some(key) = s.key.clone() else {
            return;
        };
        match self.open_conn(io, &key, Some(sid)) {
            Some(opened) => self.hold_new(io, sid, opened),
            None => self.wait_for_conn(io, sid, key),
        }
    }

    /// Prepares statement `key` on `bid` (in the schema it was prepared in) before the
    /// session's command that needs it.
    fn reprepare(&mut self, io: &mut Io, sid: PooledId, bid: BackendId, key: u64) {
        let Some(sqlinfo) = self.stmts.get(key).cloned() else {
            return;
        };
        let Some(b) = self.conns.get_mut(bid.0) else {
            return;
        };
        let _ = sid;
        let mut acts = Vec::new();
        // In the statement's schema and parse state, then back in the connection's.
        let here = b.state.schema.clone();
        let detour = (sqlinfo.schema != here)
            .then(|| sqlinfo.schema.as_ref().zip(here.as_ref()))
            .flatten();
        let (mut before, mut after) = (Vec::new(), Vec::new());
        if let Some((there, back)) = detour {
            before.push([&[COM_INIT_DB][..], there].concat());
            after.push([&[COM_INIT_DB][..], back].concat());
        }
        if let Some((there, back)) = b.state.parse_detour(&sqlinfo.parse_vars) {
            before.push([&[COM_QUERY][..], &there].concat());
            after.insert(0, [&[COM_QUERY][..], &back].concat());
        }
        for payload in &before {
            send_job(b, Job::Replay, payload, &mut acts);
        }
        let prepare = [&[COM_STMT_PREPARE][..], &sqlinfo.sql].concat();
        send_job(b, Job::Prepare(key), &prepare, &mut acts);
        for payload in &after {
            send_job(b, Job::Replay, payload, &mut acts);
        }
        io.stats.reprepares += 1;
        self.conn_actions(io, bid, None, &[], acts);
    }

    // ---- what the connections say ----

    pub fn on_conn_connected(&mut self, io: &mut Io, bid: BackendId, result: std::io::Result<()>) {
        let Some(b) = self.conns.get_mut(bid.0) else {
            return;
        };
        match result {
            Ok(()) => b.on_connected(),
            Err(e) => {
                io.stats.backend_connect_errors += 1;
                let why = format!("can't connect to backend {}: {e}", b.addr);
                self.conn_failed(io, bid, why);
            }
        }
    }

    pub fn on_conn_data(&mut self, io: &mut Io, bid: BackendId, data: &[u8], buf: BufRef) {
        let mut acts = Vec::new();
        let mut done = Vec::new();
        let Some(b) = self.conns.get_mut(bid.0) else {
            return;
        };
        // The bytes are the response of the session holding it now, or, with pipelined
        // commands, also of the sessions after it (announced among the actions).
        let first = b.session;
        let r = b.on_bytes(data, &mut acts, &mut done);
        self.response_actions(io, bid, first, Some(buf), data, acts);
        if let Err(why) = r {
            let why = format!(
                "backend {}: {why}",
                self.conns
                    .get(bid.0)
                    .map_or_else(String::new, |b| b.addr.to_string())
            );
            return self.conn_failed(io, bid, why);
        }
        for d in done {
            self.on_done(io, bid, d);
        }
        self.maybe_done(io, bid);
    }

    /// Carries out a connection's actions: its own sends, and pieces of responses for its
    /// session's client.
    fn conn_actions(
        &mut self,
        io: &mut Io,
        bid: BackendId,
        buf: Option<BufRef>,
        data: &[u8],
        acts: Vec<Action>,
    ) {
        let session = self.conns.get(bid.0).and_then(|b| b.session);
        self.response_actions(io, bid, session, buf, data, acts);
    }

    /// [`Self::conn_actions`], with the pieces of responses going to `session`'s client until
    /// an [`Action::Responder`] names the next session.
    fn response_actions(
        &mut self,
        io: &mut Io,
        bid: BackendId,
        mut session: Option<PooledId>,
        buf: Option<BufRef>,
        data: &[u8],
        acts: Vec<Action>,
    ) {
        let Some(b) = self.conns.get(bid.0) else {
            return;
        };
        let bsock = b.sock;
        for a in acts {
            match a {
                Action::Responder(next) => {
                    session = next;
                    if let Some(sid) = next {
                        self.rider_starts(io, sid, bid);
                    }
                }
                Action::SendBackend(v) => io.send_owned(bsock, v),
                Action::SendPeer(v) => {
                    if let Some(sid) = session {
                        if !self.captured(sid, &v, io.now()) {
                            self.send_client(io, sid, v, Some(bsock));
                        }
                    }
                }
                Action::Forward { from, to } => {
                    let Some(sid) = session else { continue };
                    if self.captured(sid, &data[from..to], io.now()) {
                        continue;
                    }
                    let Some(s) = self.sessions.get(sid.0).filter(|s| !s.closed) else {
                        continue;
                    };
                    match buf {
                        Some(buf) if !s.client.compressed() => {
                            io.send_buf(s.sock, buf.slice(from, to));
                            self.backpressure(io, s.sock, bsock);
                        }
                        _ => {
                            let v = data[from..to].to_vec();
                            self.send_client(io, sid, v, Some(bsock));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn on_done(&mut self, io: &mut Io, bid: BackendId, d: Done) {
        let session = self.conns.get(bid.0).and_then(|b| b.session);
        match d {
            Done::Ready { tracking: true } => {}
            Done::Ready { tracking: false } => {
                let why = "the server refused session-state tracking (session_track_*), which pooled sessions need".to_string();
                self.conn_failed(io, bid, why);
            }
            Done::Replayed(Err(errpkt)) => {
                let Some(sid) = session else { return };
                let login = self
                    .sessions
                    .get(sid.0)
                    .and_then(|s| s.running.as_ref())
                    .is_some_and(|r| r.login);
                if login {
                    // The login's schema (or the session's state) was refused: the login fails
                    // with the server's error.
                    return self.login_refused(io, sid, &errpkt);
                }
                if let Some(left) = self.warnings.allow(io.now()) {
                    let e = err_text(&errpkt);
                    log::warn!(
                        "pooled session state replay failed: {e} ({left} similar not logged)"
                    );
                }
                // The session cannot move off this connection's state safely any more.
                if let Some(s) = session.and_then(|s| self.sessions.get_mut(s.0)) {
                    s.pins.other = true;
                }
            }
            Done::Replayed(Ok(())) | Done::Vars(_) | Done::SysVars(true) => {}
            Done::SysVars(false) => {
                // The SET worked but its variables cannot be read: keep the connection.
                let s = session.and_then(|s| self.sessions.get_mut(s.0));
                let set_ok = s
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .and_then(|r| r.outcome.as_ref())
                    .is_some_and(|o| o.error.is_none());
                if let (Some(s), true) = (s, set_ok) {
                    s.pins.other = true;
                }
            }
            Done::Prepared(Ok(_)) => {}
            Done::Prepared(Err(errpkt)) => {
                // The EXECUTE's answer is the prepare's error.
                if let Some(sid) = session {
                    if let Some(r) = self
                        .sessions
                        .get_mut(sid.0)
                        .and_then(|s| s.running.as_mut())
                    {
                        r.sent = true;
                        r.outcome = Some(Outcome::default());
                    }
                    let mut pkt = errpkt;
                    if pkt.len() > 3 {
                        pkt[3] = 1;
                    }
                    self.send_client(io, sid, pkt, None);
                }
            }
            Done::Pinged(ok) => {
                if !ok {
                    self.conn_failed(io, bid, "ping before reuse failed".into());
                }
            }
            Done::Client {
                session: Some(sid),
                outcome,
            } => self.client_response_done(io, bid, sid, outcome),
            // The response of a client that left.
            Done::Client { session: None, .. } => {}
        }
    }

    /// Session `sid`'s command's response ended on `bid`: the session finishes it once the
    /// connection is idle ([`Self::maybe_done`]), or now when pipelined commands follow there.
    fn client_response_done(
        &mut self,
        io: &mut Io,
        bid: BackendId,
        sid: PooledId,
        outcome: Outcome,
    ) {
        let b = self.conns.get(bid.0);
        if !b.is_some_and(|b| b.session == Some(sid) && !b.has_riders()) {
            return self.pipelined_done(io, sid, bid, outcome);
        }
        if let Some(r) = self
            .sessions
            .get_mut(sid.0)
            .and_then(|s| s.running.as_mut())
        {
            r.outcome = Some(outcome);
        }
    }

    /// When the connection has nothing more in flight: the session's command is done, or the
    /// connection (just logged in, pinged, replayed) can run it now.
    fn maybe_done(&mut self, io: &mut Io, bid: BackendId) {
        let Some(b) = self.conns.get(bid.0) else {
            return;
        };
        if !b.is_idle() {
            return;
        }
        let Some(sid) = b.session else {
            return self.orphan_done(io, bid);
        };
        let running = self.sessions.get(sid.0).and_then(|s| s.running.as_ref());
        match running {
            Some(r) if r.sent && r.outcome.is_some() => self.command_done(io, sid, bid),
            Some(r) if !r.sent => self.run_on(io, sid, bid),
            Some(_) => {}
            None => self.command_done(io, sid, bid),
        }
    }

    /// An idle connection without a session: one that finished a left client's command is
    /// reset first, then it is free.
    fn orphan_done(&mut self, io: &mut Io, bid: BackendId) {
        let Some(b) = self.conns.get_mut(bid.0) else {
            return;
        };
        if b.orphaned.take().is_none() {
            return self.conn_free(io, bid);
        }
        io.stats.pool_resets += 1;
        let mut acts = Vec::new();
        send_job(b, Job::Reset, &[COM_RESET_CONNECTION], &mut acts);
        self.conn_actions(io, bid, None, &[], acts);
    }

    /// The session's command ended: its state is the connection's now; the connection goes
    /// back unless something holds it; the next command starts.
    fn command_done(&mut self, io: &mut Io, sid: PooledId, bid: BackendId) {
        let (Some(s), Some(b)) = (self.sessions.get_mut(sid.0), self.conns.get_mut(bid.0)) else {
            return;
        };
        let run = s.running.take().unwrap_or_default();
        let outcome = run.outcome.clone().unwrap_or_default();
        let now = io.now();
        // The session's LAST_INSERT_ID() changes only with an id its own command generated;
        // the connection's may be another session's.
        let last_insert_id = match outcome.last_insert_id {
            0 => s.state.last_insert_id,
            id => id,
        };
        // A pipelined command ran in a connection whose user variables may be another
        // session's (it reads none): the session keeps its own state unless the server says
        // the command changed it.
        if !run.rode {
            s.state = b.state.clone();
            s.state.last_insert_id = last_insert_id;
        } else if outcome.changed || outcome.untracked_change {
            s.state.take_reads_from(&b.state);
        }
        b.last_used = io.now();
        if let Some((client_id, key)) = run.prepare {
            record_prepare(&mut self.stmts, s, client_id, key, &outcome);
        }
        update_pins(s, &run, &outcome);
        if run.code == COM_STMT_EXECUTE {
            if let Some(st) = stmt_id(&run.payload).and_then(|id| s.stmts.get_mut(&id)) {
                st.long_data = false;
                st.cursor &= outcome.status & SERVER_STATUS_CURSOR_EXISTS != 0;
            }
        }
        if run.code == COM_STMT_RESET {
            if let Some(st) = stmt_id(&run.payload).and_then(|id| s.stmts.get_mut(&id)) {
                st.long_data = false;
                st.cursor = false;
            }
        }
        s.kill.thread.store(0, Ordering::Relaxed);
        let hold = holds(s, &run, &outcome, self.ps.autocommit_off_pins);
        log::trace!(
            "session {sid:?} command {:#x} done on {bid:?}: hold {hold:?} outcome {outcome:?}",
            run.code
        );
        if let Some(reason) = hold {
            count_hold(io, reason);
        } else {
            s.conn = None;
            s.last_conn = Some(bid);
            b.session = None;
            self.give_back(io, bid, false);
        }
        self.learn(&run, now);
        self.script_result(io, sid);
        self.unpause(io, sid);
        self.drive(io, sid);
    }

    fn unpause(&mut self, io: &mut Io, sid: PooledId) {
        if let Some(s) = self.sessions.get(sid.0) {
            if io.is_paused(s.sock)
                && s.queue.len() < MAX_QUEUED
                && io.queued(s.sock) <= self.shared.send_high_water
            {
                io.resume_read(s.sock);
            }
        }
    }

    /// A connection a session let go: to a waiter, the pool, or closed. `dirty`: it may hold
    /// state no session can take over (it is reset first).
    fn give_back(&mut self, io: &mut Io, bid: BackendId, dirty: bool) {
        io.stats.pooled_conns_held = io.stats.pooled_conns_held.saturating_sub(1);
        let Some(b) = self.conns.get_mut(bid.0) else {
            return;
        };
        b.session = None;
        // Paused for the client's sake (backpressure): nothing of it goes there any more.
        if io.is_paused(b.sock) {
            io.resume_read(b.sock);
        }
        if b.has_riders() {
            // The client left mid-response: the rest of it is dropped, the pipelined
            // responses behind it go to their sessions.
            return;
        }
        if !b.is_idle() {
            // Mid-response (the client left): the response is read to its end and dropped,
            // then the connection is reset; it stays counted against the limit meanwhile.
            b.orphaned = Some(io.now());
            io.set_timer(io.now() + ORPHAN_GRACE, Owner::PooledConn(bid).token());
            return;
        }
        if dirty {
            io.stats.pool_resets += 1;
            let mut acts = Vec::new();
            send_job(b, Job::Reset, &[COM_RESET_CONNECTION], &mut acts);
            return self.conn_actions(io, bid, None, &[], acts);
        }
        self.conn_free(io, bid);
    }

    /// An idle connection without a session: the first waiter for its key gets it, else it
    /// is pooled (or closed when old, draining, or another key's waiter needs the room).
    fn conn_free(&mut self, io: &mut Io, bid: BackendId) {
        log::trace!("{bid:?} free; waiters {}", self.pool.waiting());
        let now = io.now();
        let Some(b) = self.conns.get(bid.0) else {
            return;
        };
        let key = b.key.clone();
        let old = self
            .ps
            .max_age
            .is_some_and(|m| now.saturating_duration_since(b.opened_at) >= m);
        // owes_room: another worker's sessions starve and this worker holds more than its
        // share (or has no waiter): the room is theirs.
        if self.draining || old || self.owes_room() {
            io.stats.pool_closes += 1;
            return self.close_conn(io, bid);
        }
        let (sessions, server) = (&self.sessions, self.conns.get(bid.0).map(|b| b.server));
        let fits = |w: &Waiter<PooledId>| {
            let route = sessions.get(w.session.0).and_then(|s| s.route);
            route.is_none_or(|r| Some(r) == server)
        };
        while let Some(w) = self.pool.next_waiter(&key, fits) {
            if self
                .sessions
                .get(w.session.0)
                .is_some_and(|s| !s.closed && s.waiting_since.is_some())
            {
                io.stats.pool_hits += 1;
                return self.attach(io, w.session, bid);
            }
        }
        if let Some(w) = self.pool.first_waiter() {
            if !fits(&w) {
                // It waits for another backend's connection: this one's room does not help it.
                self.pool.wait_first(w);
            } else if w.key.caps == key.caps {
                // Another user's session waits: this connection is logged in again as its user
                // (same capabilities), or its room goes to it once the server has closed it
                // (the session stays first in line).
                return self.hand_over(io, bid, w.session, w.key);
            } else {
                io.stats.pool_closes += 1;
                self.close_conn(io, bid);
                return self.pool.wait_first(w);
            }
        }
        self.pool.put(key, bid);
        if let Some(t) = self.ps.idle_timeout {
            io.set_timer(now + t, Owner::PooledConn(bid).token());
        }
    }

    // ---- the shared limit between workers ----

    /// Publishes whether this worker's sessions starve: one has waited [`HUNGRY_AFTER`] or more.
    fn update_hungry(&mut self, now: Instant) {
        let hungry = self
            .pool
            .oldest_wait()
            .is_some_and(|since| now.saturating_duration_since(since) >= HUNGRY_AFTER);
        if hungry != self.hungry {
            self.hungry = hungry;
            match hungry {
                true => self.ps.hungry.fetch_add(1, Ordering::Relaxed),
                false => self.ps.hungry.fetch_sub(1, Ordering::Relaxed),
            };
        }
    }

    /// Whether another worker's sessions wait for a connection.
    fn others_hungry(&self) -> bool {
        self.ps.hungry.load(Ordering::Relaxed) > usize::from(self.hungry)
    }

    /// Whether this worker may open a connection: not at or past its share while another
    /// worker's sessions wait (the room the limit has then is theirs).
    fn may_open(&self) -> bool {
        // With fewer connections allowed than workers the share is 0: a worker still opens
        // its first one when the limit has room (and gives it up once another worker starves).
        !self.others_hungry() || self.live_conns() < self.ps.share.max(1)
    }

    /// Connections that serve or will serve sessions (not those closing): what the share
    /// compares with, so a connection given up for another worker is not given up twice.
    fn live_conns(&self) -> usize {
        self.conns.len() - self.quitting
    }

    /// Whether this worker's free connections are another's: that one's sessions starve (see
    /// [`Pooled::update_hungry`]) while this worker holds more than its share, or has no
    /// session waiting. Both starving at their shares keep what they hold.
    fn owes_room(&self) -> bool {
        self.others_hungry() && (self.live_conns() > self.ps.share || self.pool.waiting() == 0)
    }

    /// Every worker tick: waiters get the room the limit has again, and an idle connection
    /// another worker's sessions are owed (see [`Pooled::owes_room`]) is closed to make room.
    pub fn tick(&mut self, io: &mut Io) {
        self.creds.retain(|c| Arc::strong_count(c) > 1);
        self.names.retain(|n| Arc::strong_count(n) > 1);
        self.serve_waiters(io);
        self.update_hungry(io.now());
        if self.owes_room() {
            if let Some((_, bid)) = self.pool.take_any(|_| true) {
                io.stats.pool_closes += 1;
                self.close_conn(io, bid);
            }
        }
    }

    /// Opens connections for the waiters, in order, while the limit has room.
    fn serve_waiters(&mut self, io: &mut Io) {
        while self.may_open() {
            let Some(w) = self.pool.first_waiter() else {
                return;
            };
            let waits = self
                .sessions
                .get(w.session.0)
                .is_some_and(|s| !s.closed && s.waiting_since.is_some());
            if !waits {
                continue;
            }
            let Some(bid) = self.open_conn(io, &w.key, Some(w.session)) else {
                return self.pool.wait_first(w);
            };
            self.hold_new(io, w.session, bid);
        }
    }

    /// A connection failed (connect, login, protocol, the server left): its session's command
    /// is retried elsewhere when it was not sent yet; else the client gets an error.
    fn conn_failed(&mut self, io: &mut Io, bid: BackendId, why: String) {
        let Some(b) = self.conns.get(bid.0) else {
            return;
        };
        let (session, phase, login_error) = (b.session, b.phase(), b.last_error.clone());
        if let Some(left) = self.warnings.allow(io.now()) {
            log::warn!("pooled backend connection: {why} ({left} similar not logged)");
        }
        io.stats.backend_errors += 1;
        self.drop_conn(io, bid);
        let Some(sid) = session else { return };
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        s.conn = None;
        io.stats.pooled_conns_held = io.stats.pooled_conns_held.saturating_sub(1);
        let Some(run) = s.running.as_mut() else {
            return;
        };
        if run.login {
            // The login fails the way the server refused it.
            let (code, msg) = login_error.unwrap_or((2013, format!("ringproxy: {why}")));
            let code = if (2000..3000).contains(&code) {
                1045
            } else {
                code
            };
            let out = s.client.login_error(code, b"28000", &msg);
            return self.fail_login(io, sid, out);
        }
        let in_trans = s.pins.any() || s.held.is_some();
        if !run.sent && !in_trans && phase != ConnPhase::Ended {
            // Nothing of the command left: try another connection.
            return self.acquire(io, sid);
        }
        if run.sent && run.outcome.is_none() && !in_trans {
            let seq = run.seq;
            s.running = None;
            let msg = format!("ringproxy: the backend connection running this command failed ({why}); it may or may not have run");
            self.reply_err(io, sid, seq, 2013, b"HY000", &msg);
            return self.drive(io, sid);
        }
        let e = Error::backend_failed(crate::error::Retry::Unsafe, why);
        self.end_session(io, sid, Some(e));
    }

    /// Closes a pooled connection. An idle one says COM_QUIT and keeps its place under the
    /// limit until the server closes its side (or [`QUIT_GRACE`] passes), so the server never
    /// counts more connections than the limit; any other one is closed at once.
    fn close_conn(&mut self, io: &mut Io, bid: BackendId) {
        let Some(b) = self.conns.get_mut(bid.0).filter(|b| b.quitting.is_none()) else {
            return;
        };
        if !b.is_idle() {
            return self.drop_conn(io, bid);
        }
        let key = b.key.clone();
        b.end();
        b.session = None;
        b.quitting = Some(io.now());
        self.quitting += 1;
        let mut quit = Vec::with_capacity(HEADER_LEN + 1);
        write_packet(&mut quit, 0, &[COM_QUIT]);
        io.send_owned(b.sock, quit);
        self.pool.remove(&key, bid);
        io.set_timer(io.now() + QUIT_GRACE, Owner::PooledConn(bid).token());
    }

    /// Forgets a pooled connection and closes its socket: its place under the limit is free.
    fn drop_conn(&mut self, io: &mut Io, bid: BackendId) {
        let Some(mut b) = self.conns.remove(bid.0) else {
            return;
        };
        if b.quitting.is_some() {
            self.quitting -= 1;
        }
        self.pool.remove(&b.key.clone(), bid);
        self.ps.limits.release(b.server);
        io.stats.pooled_conns = io.stats.pooled_conns.saturating_sub(1);
        io.stats.stmt_evictions += b.evicted;
        b.end();
        io.close(b.sock);
        let riders = b.take_riders();
        // Its place under the limit is free: the first waiter may have it.
        self.serve_waiters(io);
        self.resend_riders(io, riders);
    }

    pub fn on_conn_eof(&mut self, io: &mut Io, bid: BackendId, error: Option<std::io::Error>) {
        if self.conns.get(bid.0).is_some_and(|b| b.quitting.is_some()) {
            return self.drop_conn(io, bid);
        }
        let why = error.map_or_else(
            || "the server closed the connection".to_string(),
            |e| e.to_string(),
        );
        self.conn_failed(io, bid, why);
    }

    // ---- sending to clients ----

    /// Packets to the session's client (compressed if it asked), with backpressure on the
    /// connection that produced them.
    fn send_client(
        &mut self,
        io: &mut Io,
        sid: PooledId,
        bytes: Vec<u8>,
        producer: Option<SockId>,
    ) {
        let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
            return;
        };
        let framed = s.client.frame(bytes, &mut s.comp_seq);
        let sock = s.sock;
        if !framed.is_empty() {
            io.send_owned(sock, framed);
        }
        if let Some(p) = producer {
            self.backpressure(io, sock, p);
        }
    }

    fn backpressure(&mut self, io: &mut Io, dst: SockId, producer: SockId) {
        if io.queued(dst) > self.shared.send_high_water {
            io.pause_read(producer);
        }
    }

    fn reply_ok(&mut self, io: &mut Io, sid: PooledId, seq: u8) {
        let status = self
            .sessions
            .get(sid.0)
            .map_or(SERVER_STATUS_AUTOCOMMIT, |s| status_of(s));
        let mut out = Vec::with_capacity(11);
        write_ok_packet(&mut out, seq.wrapping_add(1), 0, 0, status, 0);
        self.send_client(io, sid, out, None);
    }

    fn reply_err(
        &mut self,
        io: &mut Io,
        sid: PooledId,
        seq: u8,
        code: u16,
        state: &[u8; 5],
        msg: &str,
    ) {
        let mut out = Vec::with_capacity(msg.len() + 16);
        write_err_packet(&mut out, seq.wrapping_add(1), code, state, msg.as_bytes());
        self.send_client(io, sid, out, None);
    }

    /// Room again on a socket: resume what produces for it.
    pub fn on_sent(&mut self, io: &mut Io, owner: Owner, queued: usize) {
        if queued > self.shared.send_high_water / 2 {
            return;
        }
        match owner {
            Owner::Pooled(sid) => {
                let Some(s) = self.sessions.get(sid.0) else {
                    return;
                };
                if let Some(b) = s.conn.and_then(|b| self.conns.get(b.0)) {
                    if io.is_paused(b.sock) {
                        io.resume_read(b.sock);
                    }
                }
            }
            Owner::PooledConn(bid) => {
                let Some(sid) = self.conns.get(bid.0).and_then(|b| b.session) else {
                    return;
                };
                self.unpause(io, sid);
            }
            _ => {}
        }
    }

    // ---- ending ----

    /// Ends a session: an ERR first when given one (and the protocol allows it now).
    pub fn end_session(&mut self, io: &mut Io, sid: PooledId, err: Option<Error>) {
        let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
            return;
        };
        if let Some(e) = &err {
            log::debug!("pooled session of {:?}: {e}", s.client.peer);
            if e.side == crate::error::Side::Client {
                io.stats.protocol_errors += 1;
            }
            let busy = s
                .running
                .as_ref()
                .is_some_and(|r| r.sent && r.outcome.is_none());
            if !busy {
                let mut out = Vec::new();
                let seq = if s.client.authenticated() { 1 } else { 2 };
                e.write_err_packet(seq, &mut out);
                let framed = s.client.frame(out, &mut s.comp_seq);
                io.send_owned(s.sock, framed);
            }
        }
        self.close_session(io, sid, err.is_some());
    }

    fn close_session(&mut self, io: &mut Io, sid: PooledId, flush: bool) {
        if self.sessions.get(sid.0).is_some_and(|s| !s.closed) {
            self.script_close(sid);
        }
        let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
            return;
        };
        s.closed = true;
        s.client.end();
        self.ps.unregister(s.id);

        for (_, st) in s.stmts.drain() {
            self.stmts.release(st.key);
        }
        let dirty = s.pinned() || s.held.is_some();
        let (sock, conn, riding) = (s.sock, s.conn.take(), s.riding.take());
        if let Some(b) = riding.and_then(|bid| self.conns.get_mut(bid.0)) {
            b.drop_rider(sid);
        }
        if let Some(user) = s.counted.take() {
            self.ps.users.disconnect(&user);
        }
        self.pool.cancel_wait(sid);
        if let Some(bid) = conn {
            if let Some(b) = self.conns.get(bid.0) {
                // A connection still logging in for this session goes to the pool when ready.
                if b.phase() != ConnPhase::Idle && b.phase() != ConnPhase::Busy {
                    io.stats.pooled_conns_held = io.stats.pooled_conns_held.saturating_sub(1);
                    if let Some(b) = self.conns.get_mut(bid.0) {
                        b.session = None;
                    }
                } else {
                    self.give_back(io, bid, dirty);
                }
            }
        }
        if flush {
            io.close_after_flush(sock);
        } else {
            io.close(sock);
        }
    }

    /// The client's socket is gone for good.
    pub fn on_released(&mut self, io: &mut Io, sid: PooledId) {
        if let Some(s) = self.sessions.remove(sid.0) {
            io.stats.active = io.stats.active.saturating_sub(1);
            io.stats.pooled_sessions = io.stats.pooled_sessions.saturating_sub(1);
            self.shared.release(s.client.peer.map(|p| p.ip()));
        }
    }

    pub fn on_client_eof(&mut self, io: &mut Io, sid: PooledId) {
        self.close_session(io, sid, false);
    }

    // ---- timers ----

    fn arm_idle_timer(&mut self, io: &mut Io, sid: PooledId) {
        if let (Some(idle), Some(s)) = (self.shared.idle_timeout, self.sessions.get(sid.0)) {
            io.set_timer(s.last_active + idle, Owner::Pooled(sid).token());
        }
    }

    /// A session's timer: the handshake deadline, a delayed login answer, a users reload, a
    /// wait for a connection, the idle timeout.
    pub fn session_timer(&mut self, io: &mut Io, sid: PooledId) {
        let now = io.now();
        let Some(s) = self.sessions.get_mut(sid.0).filter(|s| !s.closed) else {
            return;
        };
        // Once the password is checked the client has done its part: a login that waits for
        // a connection is bound by pool_wait_timeout_ms, like any command.
        let confirming = s.client.phase() == ClientPhase::Confirm;
        if !s.client.authenticated() && !confirming {
            if now >= s.client.accepted_at + self.shared.handshake_timeout {
                io.stats.handshake_timeouts += 1;
                return self.end_session(io, sid, Some(Error::handshake_timeout()));
            }
            if s.client.phase() == ClientPhase::Lookup {
                if s.answer_at.is_some_and(|t| now >= t) {
                    s.answer_at = None;
                    return self.lookup(io, sid);
                }
                if let Some((generation, deadline)) = s.lookup {
                    if self.ps.users.generation() != generation || now >= deadline {
                        s.lookup = None;
                        return self.lookup(io, sid);
                    }
                    io.set_timer(now + LOOKUP_POLL, Owner::Pooled(sid).token());
                }
            }
            return;
        }
        if let Some(since) = s.waiting_since {
            if now >= since + self.ps.wait_timeout {
                return self.wait_timed_out(io, sid);
            }
        }
        if let Some(idle) = self.shared.idle_timeout {
            let busy = s.running.is_some();
            if !busy && now >= s.last_active + idle {
                io.stats.idle_timeouts += 1;
                return self.close_session(io, sid, false);
            }
            io.set_timer(now.max(s.last_active) + idle, Owner::Pooled(sid).token());
        }
    }

    /// No connection became free in time: the command gets an error; the session goes on.
    fn wait_timed_out(&mut self, io: &mut Io, sid: PooledId) {
        io.stats.pool_wait_timeouts += 1;
        self.pool.cancel_wait(sid);
        let ms = self.ps.wait_timeout.as_millis();
        let Some(s) = self.sessions.get_mut(sid.0) else {
            return;
        };
        s.waiting_since = None;
        let run = s.running.take().unwrap_or_default();
        if run.login {
            let msg = format!("ringproxy: no backend connection became free within pool_wait_timeout_ms ({ms} ms) to log in; retry is safe");
            let out = s.client.login_error(ER_POOL_TIMEOUT, b"HY000", &msg);
            return self.fail_login(io, sid, out);
        }
        let msg = format!("ringproxy: no backend connection became free within pool_wait_timeout_ms ({ms} ms); the command did not run, retry is safe");
        self.reply_err(io, sid, run.seq, ER_POOL_TIMEOUT, b"HY000", &msg);
        self.drive(io, sid);
    }

    /// A pooled connection's timer: its login deadline, idle timeout or age.
    pub fn conn_timer(&mut self, io: &mut Io, bid: BackendId) {
        let now = io.now();
        let Some(b) = self.conns.get(bid.0) else {
            return;
        };
        if let Some(since) = b.quitting {
            if now >= since + QUIT_GRACE {
                self.drop_conn(io, bid);
            }
            return;
        }
        let logging_in = matches!(
            b.phase(),
            ConnPhase::Connecting | ConnPhase::Login | ConnPhase::Setup
        );
        if logging_in {
            if now >= b.login_since + self.shared.backend_handshake_timeout {
                return self.conn_failed(io, bid, "login timed out".into());
            }
            return;
        }
        if b.orphaned.is_some_and(|t| now >= t + ORPHAN_GRACE) {
            // A left client's command that does not end (it may wait for the client).
            io.stats.pool_closes += 1;
            return self.close_conn(io, bid);
        }
        if b.session.is_some() || !b.is_idle() {
            return;
        }
        let idle_out = self
            .ps
            .idle_timeout
            .is_some_and(|t| now.saturating_duration_since(b.last_used) >= t)
            && self.pool.idle_of(&b.key) > self.ps.min_idle;
        let old = self
            .ps
            .max_age
            .is_some_and(|m| now.saturating_duration_since(b.opened_at) >= m);
        if idle_out || old {
            io.stats.pool_closes += 1;
            return self.close_conn(io, bid);
        }
        if let Some(t) = self.ps.idle_timeout {
            // One spared by pool_min_idle is looked at again a whole timeout later.
            let at = (b.last_used + t).max(now + t.min(Duration::from_secs(1)));
            io.set_timer(at, Owner::PooledConn(bid).token());
        }
    }

    /// Shutdown: idle sessions end, busy ones end after their command; idle connections close.
    pub fn shutdown(&mut self, io: &mut Io) {
        self.draining = true;
        let idle: Vec<BackendId> = self.pool.idle().map(|(_, b)| b).collect();
        for bid in idle {
            self.close_conn(io, bid);
        }
        for key in self.sessions.keys() {
            let sid = PooledId(key);
            let busy = self.sessions.get(key).is_some_and(|s| s.running.is_some());
            if !busy {
                self.close_session(io, sid, true);
            }
        }
    }

    pub fn abort_all(&mut self, io: &mut Io) {
        for key in self.sessions.keys() {
            self.close_session(io, PooledId(key), false);
        }
        for key in self.conns.keys() {
            self.drop_conn(io, BackendId(key));
        }
    }

    /// Checks that sessions and connections point at each other and the pool holds only free,
    /// idle connections.
    pub fn invariants(&self) -> Result<(), String> {
        for (k, s) in self.sessions.iter().filter(|(_, s)| !s.closed) {
            if let Some(bid) = s.riding {
                if !self
                    .conns
                    .get(bid.0)
                    .is_some_and(|b| b.carries(PooledId(k)))
                {
                    return Err(format!(
                        "session {k:?} rides {bid:?}, which does not carry it"
                    ));
                }
            }
            if let Some(bid) = s.conn {
                let back = self.conns.get(bid.0).and_then(|b| b.session);
                if back != Some(PooledId(k)) {
                    return Err(format!("session {k:?} -> conn {bid:?} -> {back:?}"));
                }
            }
        }
        for (_, bid) in self.pool.idle() {
            let ok = self
                .conns
                .get(bid.0)
                .is_some_and(|b| b.session.is_none() && b.is_idle());
            if !ok {
                return Err(format!("pooled conn {bid:?} is not free and idle"));
            }
        }
        Ok(())
    }
}

/// A client's prepare ended: the session's statement `client_id` names `key` (and the
/// response is cached for the next prepare of it), or, when it failed, the key is let go.
fn record_prepare(
    stmts: &mut Statements,
    s: &mut Session,
    client_id: u32,
    key: u64,
    outcome: &Outcome,
) {
    let (Some((_, params)), None) = (outcome.prepared, outcome.error) else {
        return stmts.release(key);
    };
    let st = SessionStmt {
        key,
        params,
        types: None,
        cursor: false,
        long_data: false,
    };
    s.stmts.insert(client_id, st);
    let eof = s.client.caps & CLIENT_DEPRECATE_EOF != 0;
    let response = outcome.prepare_response.clone();
    if response.len() <= PREPARE_CACHE_MAX {
        stmts.cache(key, eof, Cached { response, params });
    }
}

/// The copy of `value` in `set` (added when there is none).
fn intern<T: std::hash::Hash + Eq + ?Sized>(set: &mut HashSet<Arc<T>>, value: Arc<T>) -> Arc<T> {
    if let Some(same) = set.get(&value) {
        return Arc::clone(same);
    }
    set.insert(Arc::clone(&value));
    value
}

/// Whether connection `b` may serve a session its script routes to backend `route` (any
/// connection when there is no route).
fn on_route(conns: &Slab<PooledBackend>, route: Option<usize>, b: BackendId) -> bool {
    route.is_none_or(|r| conns.get(b.0).is_some_and(|c| c.server == r))
}

fn send_job(b: &mut PooledBackend, job: Job, payload: &[u8], acts: &mut Vec<Action>) {
    let mut pkt = Vec::with_capacity(payload.len() + HEADER_LEN);
    write_packet(&mut pkt, 0, payload);
    b.run(job, pkt, acts);
}

/// The statements that give `b` a session's state.
fn replay_jobs(b: &mut PooledBackend, replay: &Replay, acts: &mut Vec<Action>) {
    if let Some(schema) = &replay.schema {
        send_job(b, Job::Replay, &[&[COM_INIT_DB][..], schema].concat(), acts);
    }
    for q in &replay.queries {
        send_job(b, Job::Replay, &[&[COM_QUERY][..], q].concat(), acts);
    }
}

/// The running command as `b` must get it: a statement command names `b`'s own statement id
/// (and an EXECUTE carries parameter types). `Err(Some(key))`: statement `key` must be prepared
/// on `b` first; `Err(None)`: the statement is gone.
fn command_packet(
    run: &mut Running,
    stmts: &mut HashMap<u32, SessionStmt>,
    b: &PooledBackend,
) -> Result<Vec<u8>, Option<u64>> {
    let code = run.code;
    let names_stmt = matches!(
        code,
        COM_STMT_EXECUTE | COM_STMT_FETCH | COM_STMT_RESET | COM_STMT_SEND_LONG_DATA
    );
    if !names_stmt {
        return Ok(std::mem::take(&mut run.payload));
    }
    let id = stmt_id(&run.payload).unwrap_or(0);
    let st = stmts.get_mut(&id).ok_or(None)?;
    let server_id = *b.prepared.get(&st.key).ok_or(Some(st.key))?;
    Ok(match code {
        COM_STMT_EXECUTE => {
            st.cursor |= opens_cursor(&run.payload);
            rewrite_execute(&run.payload, server_id, st)
        }
        COM_STMT_SEND_LONG_DATA => {
            st.long_data = true;
            with_stmt_id(&run.payload, server_id)
        }
        _ => with_stmt_id(&run.payload, server_id),
    })
}

/// After a command that assigns user variables or sets system variables: their values, read
/// back on the same connection before it can go to anyone else.
fn read_back_jobs(b: &mut PooledBackend, run: &Running, acts: &mut Vec<Action>) {
    if !run.vars.is_empty() {
        let list: Vec<Vec<u8>> = run
            .vars
            .iter()
            .map(|n| user_var_columns(&backquote(n)))
            .collect();
        let q = [&[COM_QUERY][..], b"SELECT ", &list.join(&b", "[..])].concat();
        send_job(b, Job::ReadVars(run.vars.clone()), &q, acts);
    }
    if !run.sysvars.is_empty() {
        let list: Vec<Vec<u8>> = run
            .sysvars
            .iter()
            .map(|n| [&b"@@session."[..], n].concat())
            .collect();
        let q = [&[COM_QUERY][..], b"SELECT ", &list.join(&b", "[..])].concat();
        send_job(b, Job::ReadSysVars(run.sysvars.clone()), &q, acts);
    }
}

/// `name` as a backquoted identifier.
fn backquote(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    out.push(b'`');
    for &c in name {
        out.push(c);
        if c == b'`' {
            out.push(c);
        }
    }
    out.push(b'`');
    out
}

/// `code message` of an ERR packet (for logs).
fn err_text(pkt: &[u8]) -> String {
    let payload = pkt.get(HEADER_LEN..).unwrap_or(&[]);
    match crate::protocol::packets::parse_err(payload, CLIENT_PROTOCOL_41) {
        Ok(e) => format!("{} {}", e.code, String::from_utf8_lossy(e.message)),
        Err(_) => "an unreadable error".into(),
    }
}

/// The status flags a session's own answers carry.
fn status_of(s: &Session) -> u16 {
    let mut status = 0;
    if !s.state.autocommit_off() {
        status |= SERVER_STATUS_AUTOCOMMIT;
    }
    if s.held == Some(Held::Transaction) {
        status |= SERVER_STATUS_IN_TRANS;
    }
    status
}

/// Updates the session's lasting pins after a command.
fn update_pins(s: &mut Session, run: &Running, outcome: &Outcome) {
    let ok = outcome.error.is_none();
    let st = run.stmt;
    if ok {
        s.pins.locks = (s.pins.locks || st.lock) && !st.unlock;
        s.pins.temp_table |= st.temp_table && run.code != COM_QUERY;
        s.pins.text_prepare |= st.text_prepare;
    }
    if run.code == COM_QUERY && (st.temp_table || run.temp.is_some()) {
        count_temp_tables(s, run.temp.as_ref(), ok);
    }
    if st.get_lock && run.code == COM_QUERY {
        count_user_locks(s, &run.lock_calls, ok);
    } else if st.get_lock && ok {
        s.pins.get_lock = true;
    }
    if run.code == COM_SET_OPTION || (ok && st.opaque_set) {
        s.pins.other = true;
    }
    // A state change the tracked items do not explain: user variables are read back; a
    // prepare's own change is the proxy's business; anything else stays on this connection.
    let explained = st.user_var_write
        || st.temp_table
        || run.temp.is_some()
        || st.text_prepare
        || !run.sysvars.is_empty()
        || run.code == COM_STMT_PREPARE;
    if outcome.untracked_change && !explained {
        s.pins.untracked = true;
    }
}

/// Keeps the session's temporary tables by name: a CREATE counts even if it failed (the session
/// only stays longer), a DROP only when it succeeded; a form the proxy cannot read pins for the
/// rest of the session.
fn count_temp_tables(s: &mut Session, change: Option<&sql::TempTables>, ok: bool) {
    let here = s.state.schema.clone().unwrap_or_default();
    let key = |t: &sql::TableName| {
        (
            t.schema.clone().unwrap_or_else(|| here.clone()),
            t.name.clone(),
        )
    };
    match change {
        Some(sql::TempTables::Create(t)) => {
            let k = key(t);
            if !s.temp_tables.contains(&k) {
                s.temp_tables.push(k);
            }
        }
        Some(sql::TempTables::Drop(names)) if ok => {
            for t in names {
                let k = key(t);
                s.temp_tables.retain(|x| *x != k);
            }
        }
        Some(sql::TempTables::Drop(_)) => {}
        None => s.pins.temp_table |= ok,
    }
}

/// Counts the user locks a statement took and released, by literal name. Every GET_LOCK counts
/// (even one that failed or timed out: the session only stays longer), a release only when the
/// statement succeeded and that name was counted, so the count never says "none" while the
/// server still holds one; a lock of unknown name pins until RELEASE_ALL_LOCKS.
fn count_user_locks(s: &mut Session, calls: &[sql::LockCall], ok: bool) {
    for call in calls {
        match call {
            sql::LockCall::Get(Some(name)) => {
                match s.user_locks.iter_mut().find(|(n, _)| n == name) {
                    Some((_, k)) => *k += 1,
                    None => s.user_locks.push((name.clone(), 1)),
                }
            }
            sql::LockCall::Get(None) => s.pins.get_lock = true,
            sql::LockCall::Release(Some(name)) if ok => {
                if let Some(i) = s.user_locks.iter().position(|(n, _)| n == name) {
                    s.user_locks[i].1 -= 1;
                    if s.user_locks[i].1 == 0 {
                        s.user_locks.swap_remove(i);
                    }
                }
            }
            sql::LockCall::ReleaseAll if ok => {
                s.user_locks.clear();
                s.pins.get_lock = false;
            }
            _ => {}
        }
    }
}

/// Why the session keeps its connection now, if it does.
fn holds(s: &mut Session, run: &Running, outcome: &Outcome, autocommit_pins: bool) -> Option<Held> {
    let one_shot = if outcome.status & SERVER_STATUS_IN_TRANS != 0 {
        Some(Held::Transaction)
    } else if autocommit_pins && s.state.autocommit_off() {
        Some(Held::Autocommit)
    } else if outcome.trx_characteristics {
        Some(Held::Other)
    } else if run.stmt.calc_found_rows && outcome.error.is_none() {
        Some(Held::FoundRows)
    } else if outcome.warnings > 0 {
        Some(Held::Warnings)
    } else {
        None
    };
    s.held = one_shot;
    let p = s.pins;
    let stmt_hold = s.stmts.values().find_map(|st| {
        if st.cursor {
            Some(Held::Cursor)
        } else if st.long_data {
            Some(Held::LongData)
        } else {
            None
        }
    });
    one_shot
        .or_else(|| p.locks.then_some(Held::Locks))
        .or_else(|| (p.get_lock || !s.user_locks.is_empty()).then_some(Held::Other))
        .or_else(|| (p.temp_table || !s.temp_tables.is_empty()).then_some(Held::TempTable))
        .or_else(|| p.text_prepare.then_some(Held::TextPrepare))
        .or_else(|| p.untracked.then_some(Held::Untracked))
        .or_else(|| p.other.then_some(Held::Other))
        .or(stmt_hold)
}

fn count_hold(io: &mut Io, reason: Held) {
    let c = &mut io.stats;
    *match reason {
        Held::Transaction => &mut c.pin_transaction,
        Held::Autocommit => &mut c.pin_autocommit,
        Held::Locks => &mut c.pin_locks,
        Held::TempTable => &mut c.pin_temp_table,
        Held::TextPrepare => &mut c.pin_text_prepare,
        Held::Cursor => &mut c.pin_cursor,
        Held::LongData => &mut c.pin_long_data,
        Held::Warnings => &mut c.pin_warnings,
        Held::FoundRows => &mut c.pin_found_rows,
        Held::Untracked => &mut c.pin_untracked,
        Held::Other => &mut c.pin_other,
    } += 1;
}
