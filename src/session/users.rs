//! The users of pooled listeners, where the proxy authenticates clients itself: who may log in
//! and with which credential ([`UserEntry`]), looked up by name and client address ([`Users`]).
//!
//! Owns:
//! - the snapshot of users: the configuration's `[[users]]` (any client address, and they take
//!   precedence over a backend account of the same name) and the accounts loaded from the
//!   backends, kept per `user@host` and matched against the client's IP address as MySQL does
//!   (most specific host first: exact hosts, then patterns with more literal characters before
//!   the first wildcard, `%` last);
//! - the loader: one thread (`rp-users`) that logs in to the first reachable backend with the
//!   monitor account over a blocking socket, driven by the I/O-free [`Login`], and reads
//!   MariaDB's `mysql.global_priv` (10.4+) or else MySQL's `mysql.user` (5.7+, whose
//!   `account_locked` column it needs); it loads at start and then on request
//!   ([`Users::request_refresh`]), at most once per `monitor.users_refresh_ms` (a request made
//!   sooner waits for the interval's end); a failed load
//!   keeps the previous accounts;
//! - the per-user count of client connections that `max_connections` is checked against.
//!
//! Host names other than `localhost` are never matched: the proxy resolves no names (as a server
//! with `skip_name_resolve`). Locked accounts and MariaDB roles are not loaded. An account whose
//! plugin the proxy cannot check (pam, unix_socket, gssapi...) is loaded without a credential:
//! its clients go to pass-through sessions, where the backend authenticates them.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, UserConfig};
use crate::protocol::auth_server::{parse_global_priv, Stored};
use crate::protocol::constants::*;
use crate::protocol::cursor::Cursor;
use crate::protocol::framing::{parse_header, write_packet};
use crate::protocol::handshake::parse_handshake_v10;
use crate::protocol::packets::{is_eof_packet, parse_err};
use crate::session::login::{Credentials, Login};

/// Connect, read and write timeout of the monitor connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the idle loader looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);
/// What the monitor login asks for: no CLIENT_DEPRECATE_EOF, so text results end with EOF.
const MONITOR_CAPABILITIES: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_LONG_FLAG
    | CLIENT_TRANSACTIONS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA;
/// utf8mb4_general_ci, known to MySQL 5.5+ and every MariaDB.
const UTF8MB4_GENERAL_CI: u8 = 45;
/// MariaDB 10.4+: every account with its credentials as JSON.
const GLOBAL_PRIV_QUERY: &str = "SELECT User, Host, Priv FROM mysql.global_priv";
/// MySQL 5.7+ (when `mysql.global_priv` does not exist).
const MYSQL_USER_QUERY: &str =
    "SELECT user, host, plugin, authentication_string, account_locked FROM mysql.user";
/// Most bytes of result the loader reads for one query.
const MAX_RESULT_BYTES: usize = 256 << 20;
/// Most columns a result of the loader's queries may announce.
const MAX_COLUMNS: u64 = 64;

/// What logging in as a user takes, and what the user may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    /// None: an account whose plugin the proxy cannot verify (pam, unix_socket, gssapi...):
    /// such users fall back to pass-through sessions.
    pub stored: Option<Stored>,
    /// The account's plugin (`mysql_native_password`, ...); "" for config users.
    pub plugin: String,
    pub default_schema: Option<String>,
    /// Client connections of this user at once; 0 = unlimited.
    pub max_connections: usize,
    pub active: bool,
    pub from_config: bool,
}

impl UserEntry {
    fn from_config(user: &UserConfig) -> UserEntry {
        UserEntry {
            name: user.name.clone(),
            stored: Some(user.secret.to_stored()),
            plugin: String::new(),
            default_schema: user.default_schema.clone(),
            max_connections: user.max_connections,
            active: user.active,
            from_config: true,
        }
    }

    fn loaded(name: &str, plugin: &str, authentication_string: &[u8]) -> UserEntry {
        UserEntry {
            name: name.to_owned(),
            stored: Stored::from_mysql_user(plugin, authentication_string),
            plugin: plugin.to_owned(),
            default_schema: None,
            max_connections: 0,
            active: true,
            from_config: false,
        }
    }
}

// ---- Host patterns ---------------------------------------------------------------------------

/// What the host part of an account matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// `%`, or the empty host.
    Any,
    /// `localhost`: 127.0.0.1 and ::1.
    Localhost,
    Ip(IpAddr),
    /// `10.0.0.0/255.0.0.0` (or `/8`), IPv4 only.
    Netmask {
        net: u32,
        mask: u32,
    },
    /// A LIKE pattern (`%`, `_`, `\` escapes) matched against the address as text.
    Like(String),
    /// A host name: never matched, the proxy resolves no names.
    Name,
}

/// The host part of an account: its text and what it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    text: String,
    kind: HostMatch,
}

impl HostPattern {
    fn parse(text: &str) -> HostPattern {
        let kind = if text.is_empty() || text == "%" {
            HostMatch::Any
        } else if text.eq_ignore_ascii_case("localhost") {
            HostMatch::Localhost
        } else if let Ok(ip) = text.parse::<IpAddr>() {
            HostMatch::Ip(ip.to_canonical())
        } else if let Some(netmask) = parse_netmask(text) {
            netmask
        } else if wildcard_rank(text) < EXACT_HOST {
            HostMatch::Like(text.to_owned())
        } else {
            HostMatch::Name
        };
        HostPattern {
            text: text.to_owned(),
            kind,
        }
    }

    /// Does a client from `ip` match? Without an address only `%` (and the empty host) does.
    fn matches(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip.map(|ip| ip.to_canonical()) else {
            return self.kind == HostMatch::Any;
        };
        match &self.kind {
            HostMatch::Any => true,
            HostMatch::Localhost => {
                ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
            }
            HostMatch::Ip(host) => *host == ip,
            HostMatch::Netmask { net, mask } => {
                matches!(ip, IpAddr::V4(v4) if u32::from(v4) & mask == *net)
            }
            HostMatch::Like(pattern) => like(pattern.as_bytes(), ip.to_string().as_bytes()),
            HostMatch::Name => false,
        }
    }

    /// MySQL's order of hosts, greater first: exact hosts, then patterns by the position of their
    /// first wildcard (more literal characters before it first), `%`, the empty host last. Among
    /// exact hosts, addresses and names go before netmasks (longer masks first); remaining ties
    /// go to more literal characters.
    fn specificity(&self) -> (u8, u32, usize) {
        let mask_bits = match self.kind {
            HostMatch::Netmask { mask, .. } => mask.count_ones(),
            _ => u32::MAX,
        };
        (
            wildcard_rank(&self.text),
            mask_bits,
            literal_chars(&self.text),
        )
    }
}

/// [`wildcard_rank`] of a host without wildcards.
const EXACT_HOST: u8 = 128;

/// MySQL's `get_sort` of one host: 128 without wildcards, else the 1-based position of the
/// first wildcard (at most 127); 0 for the empty host.
fn wildcard_rank(host: &str) -> u8 {
    let mut tokens = LikeTokens::new(host.as_bytes());
    if let Some(at) = tokens.position(|token| !matches!(token, Like::Literal(_))) {
        return (at + 1).min(127) as u8;
    }
    if host.is_empty() {
        0
    } else {
        EXACT_HOST
    }
}

fn literal_chars(host: &str) -> usize {
    (LikeTokens::new(host.as_bytes()))
        .filter(|t| matches!(t, Like::Literal(_)))
        .count()
}

/// `a.b.c.d/m.m.m.m` or `a.b.c.d/prefix`.
fn parse_netmask(text: &str) -> Option<HostMatch> {
    let (net, mask) = text.split_once('/')?;
    let net = u32::from(net.parse::<Ipv4Addr>().ok()?);
    let mask = match mask.parse::<Ipv4Addr>() {
        Ok(mask) => u32::from(mask),
        Err(_) => match mask.parse::<u32>().ok()? {
            0 => 0,
            bits @ 1..=32 => u32::MAX << (32 - bits),
            _ => return None,
        },
    };
    Some(HostMatch::Netmask {
        net: net & mask,
        mask,
    })
}

/// One element of a LIKE pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Like {
    /// `%`: any run of characters.
    Many,
    /// `_`: one character.
    One,
    Literal(u8),
}

/// A LIKE pattern's elements; `\` makes the next byte literal.
struct LikeTokens<'a> {
    pattern: &'a [u8],
}

impl<'a> LikeTokens<'a> {
    fn new(pattern: &'a [u8]) -> LikeTokens<'a> {
        LikeTokens { pattern }
    }
}

impl Iterator for LikeTokens<'_> {
    type Item = Like;

    fn next(&mut self) -> Option<Like> {
        let (token, used) = match self.pattern {
            [] => return None,
            [b'%', ..] => (Like::Many, 1),
            [b'_', ..] => (Like::One, 1),
            [b'\\', escaped, ..] => (Like::Literal(*escaped), 2),
            [c, ..] => (Like::Literal(*c), 1),
        };
        self.pattern = &self.pattern[used..];
        Some(token)
    }
}

/// Does `text` match the LIKE `pattern` (ASCII case-insensitive)?
fn like(pattern: &[u8], text: &[u8]) -> bool {
    let tokens: Vec<Like> = LikeTokens::new(pattern).collect();
    let (mut p, mut t) = (0, 0);
    // After the last `%` seen: where the pattern goes on, and the text position it is tried at.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(Like::Many) => {
                backtrack = Some((p + 1, t));
                p += 1;
            }
            Some(Like::One) => (p, t) = (p + 1, t + 1),
            Some(Like::Literal(c)) if c.eq_ignore_ascii_case(&text[t]) => (p, t) = (p + 1, t + 1),
            _ => match backtrack {
                Some((after, tried)) => {
                    (p, t) = (after, tried + 1);
                    backtrack = Some((after, tried + 1));
                }
                None => return false,
            },
        }
    }
    tokens[p..].iter().all(|token| *token == Like::Many)
}

// ---- The snapshot --------------------------------------------------------------------------

/// One loaded account: `user@host` and what logging in as it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    host: HostPattern,
    entry: UserEntry,
}

/// The users at one point in time; replaced whole by each load.
#[derive(Debug, Default)]
struct Snapshot {
    /// The configuration's users by name.
    config: Arc<HashMap<String, UserEntry>>,
    /// Loaded accounts by user name, most specific host first.
    loaded: HashMap<String, Vec<Account>>,
}

impl Snapshot {
    fn lookup(&self, user: &str, client_ip: Option<IpAddr>) -> Option<UserEntry> {
        if let Some(entry) = self.config.get(user) {
            return Some(entry.clone());
        }
        let accounts = self.loaded.get(user)?;
        let account = accounts.iter().find(|a| a.host.matches(client_ip))?;
        Some(account.entry.clone())
    }
}

/// Accounts by user name, each user's hosts in MySQL's order.
fn index_accounts(accounts: Vec<Account>) -> HashMap<String, Vec<Account>> {
    let mut by_user: HashMap<String, Vec<Account>> = HashMap::new();
    for account in accounts {
        by_user
            .entry(account.entry.name.clone())
            .or_default()
            .push(account);
    }
    for hosts in by_user.values_mut() {
        hosts.sort_by(|a, b| {
            (b.host.specificity().cmp(&a.host.specificity()))
                .then_with(|| a.host.text.cmp(&b.host.text))
        });
    }
    by_user
}

// ---- Users ---------------------------------------------------------------------------------

/// The loader's side of refreshes.
#[derive(Debug, Default)]
struct Refresh {
    /// A loader runs (there is a monitor account).
    loader: bool,
    /// A reload was asked for and has not started.
    pending: bool,
    /// When the last load started.
    last_load: Option<Instant>,
}

/// The users of pooled listeners, shared by every worker and the loader thread.
#[derive(Debug)]
pub struct Users {
    snapshot: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    refresh: Mutex<Refresh>,
    /// Wakes the loader when a refresh is asked for.
    wake: Condvar,
    /// Least time between two loads.
    interval: Duration,
    /// Client connections per user name.
    connections: Mutex<HashMap<String, usize>>,
    server_version: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Users {
    /// The configuration's `[[users]]`; no account loaded yet.
    pub fn new(config: &Config) -> Arc<Users> {
        let by_name = (config.users.iter())
            .map(|user| (user.name.clone(), UserEntry::from_config(user)))
            .collect();
        let snapshot = Snapshot {
            config: Arc::new(by_name),
            loaded: HashMap::new(),
        };
        Arc::new(Users {
            snapshot: RwLock::new(Arc::new(snapshot)),
            generation: AtomicU64::new(0),
            refresh: Mutex::new(Refresh::default()),
            wake: Condvar::new(),
            interval: Duration::from_millis(config.users_refresh_ms),
            connections: Mutex::new(HashMap::new()),
            server_version: Mutex::new(None),
        })
    }

    /// The user a client logs in as: the configuration's user of that name, else the loaded
    /// account of that name whose host matches `client_ip` best.
    pub fn lookup(&self, user: &str, client_ip: Option<IpAddr>) -> Option<UserEntry> {
        self.current().lookup(user, client_ip)
    }

    fn current(&self) -> Arc<Snapshot> {
        let snapshot = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&snapshot)
    }

    /// Counts completed loads (failed ones too): after asking for a refresh, a caller waits for
    /// it to change, then looks the user up again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Asks the loader for a reload. False when none will happen now: no monitor account (no
    /// loader), or the last load started less than `monitor.users_refresh_ms` ago. True when one
    /// is pending (asked for by this call or an earlier one).
    pub fn request_refresh(&self) -> bool {
        let mut refresh = lock(&self.refresh);
        if !refresh.loader {
            return false;
        }
        if !refresh.pending {
            refresh.pending = true;
            self.wake.notify_one();
        }
        true
    }

    /// The longest a reload asked for now can take to start (the rate limit's remainder).
    pub fn refresh_delay(&self) -> Duration {
        let refresh = lock(&self.refresh);
        let since = refresh.last_load.map_or(self.interval, |at| at.elapsed());
        self.interval.saturating_sub(since)
    }

    /// Starts the loader thread (`rp-users`), which loads at once and then on each refresh until
    /// `shutdown` is set. None without a monitor account (or when the thread cannot start).
    pub fn start_loader(
        self: &Arc<Self>,
        config: &Config,
        shutdown: Arc<AtomicBool>,
    ) -> Option<JoinHandle<()>> {
        let monitor = Monitor::from_config(config)?;
        lock(&self.refresh).loader = true;
        let users = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("rp-users".into())
            .spawn(move || users.run_loader(&monitor, &shutdown));
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                log::error!("users: cannot start the loader thread: {e}");
                lock(&self.refresh).loader = false;
                None
            }
        }
    }

    /// Counts a client of `user` in; false (nothing counted) when `max` (0 = unlimited) of them
    /// are connected already.
    pub fn connect(&self, user: &str, max: usize) -> bool {
        let mut counts = lock(&self.connections);
        let count = counts.get(user).copied().unwrap_or(0);
        if max != 0 && count >= max {
            return false;
        }
        counts.insert(user.to_owned(), count + 1);
        true
    }

    /// Counts a client of `user` out.
    pub fn disconnect(&self, user: &str) {
        let mut counts = lock(&self.connections);
        if let Some(count) = counts.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                counts.remove(user);
            }
        }
    }

    /// Client connections of `user` counted in now.
    pub fn connections(&self, user: &str) -> usize {
        lock(&self.connections).get(user).copied().unwrap_or(0)
    }

    /// The server version of the last backend greeting the loader saw (as the server sent it,
    /// e.g. `5.5.5-10.11.6-MariaDB-0+deb12u1`).
    /// The version the backends' greeting gives, for the greeting of pooled listeners: read
    /// once at start with a login the server refuses (a refused login, unlike an abandoned
    /// handshake, is not counted against the proxy's host by `max_connect_errors`).
    pub fn probe_server_version(&self, config: &Config) {
        let probe = Credentials {
            user: "ringproxy-version-probe".into(),
            password: String::new(),
            stage1: None,
            db: None,
        };
        for &addr in &config.backends {
            let Ok(stream) = connect_tcp(addr, config.backend_source) else {
                continue;
            };
            let Ok(mut conn) = MonitorConn::new(stream) else {
                continue;
            };
            let _ = conn.login(&probe);
            if !conn.version.is_empty() {
                *lock(&self.server_version) = Some(conn.version);
                return;
            }
        }
    }

    pub fn server_version(&self) -> Option<String> {
        lock(&self.server_version).clone()
    }

    fn run_loader(&self, monitor: &Monitor, shutdown: &AtomicBool) {
        while self.next_load(shutdown) {
            let mut version = None;
            let fetched = monitor.fetch(&mut version);
            self.finish_load(version, fetched);
        }
    }

    /// Waits until a load is due (the first one at once); false once `shutdown` is set.
    fn next_load(&self, shutdown: &AtomicBool) -> bool {
        let mut refresh = lock(&self.refresh);
        loop {
            if shutdown.load(Ordering::Relaxed) {
                refresh.loader = false;
                return false;
            }
            let since = refresh.last_load.map(|at| at.elapsed());
            let due = since.is_none_or(|t| t >= self.interval);
            if (refresh.pending && due) || refresh.last_load.is_none() {
                refresh.pending = false;
                refresh.last_load = Some(Instant::now());
                return true;
            }
            // A request made too soon waits for the interval's end.
            let wait = match (refresh.pending, since) {
                (true, Some(t)) => SHUTDOWN_POLL.min(self.interval - t),
                _ => SHUTDOWN_POLL,
            };
            refresh = (self.wake.wait_timeout(refresh, wait))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Installs what a load fetched (a failure keeps the previous accounts) and the version of
    /// the last greeting it saw, then counts the load.
    fn finish_load(&self, version: Option<String>, fetched: Result<Fetched, String>) {
        if version.is_some() {
            *lock(&self.server_version) = version;
        }
        match fetched {
            Ok(fetched) => {
                log::info!(
                    "users: {} accounts loaded from {}",
                    fetched.accounts.len(),
                    fetched.from
                );
                self.install(fetched.accounts);
            }
            Err(e) => log::warn!(
                "users: could not load the backends' accounts ({e}); keeping the previous ones"
            ),
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn install(&self, accounts: Vec<Account>) {
        let mut snapshot = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *snapshot = Arc::new(Snapshot {
            config: Arc::clone(&snapshot.config),
            loaded: index_accounts(accounts),
        });
    }
}

// ---- Loading -------------------------------------------------------------------------------

/// Where and as whom the loader logs in.
#[derive(Debug, Clone)]
struct Monitor {
    backends: Vec<SocketAddr>,
    source: Option<IpAddr>,
    credentials: Credentials,
}

/// What one load brought.
#[derive(Debug)]
struct Fetched {
    from: SocketAddr,
    accounts: Vec<Account>,
}

impl Monitor {
    fn from_config(config: &Config) -> Option<Monitor> {
        let credentials = Credentials {
            user: config.monitor_user.clone()?,
            password: config.monitor_password.clone().unwrap_or_default(),
            stage1: None,
            db: None,
        };
        Some(Monitor {
            backends: config.backends.clone(),
            source: config.backend_source,
            credentials,
        })
    }

    /// The accounts of the first backend that gives them; the errors of all otherwise. `version`
    /// gets the server version of the last greeting seen.
    fn fetch(&self, version: &mut Option<String>) -> Result<Fetched, String> {
        let mut errors = Vec::new();
        for &addr in &self.backends {
            match self.fetch_from(addr, version) {
                Ok(fetched) => return Ok(fetched),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        if errors.is_empty() {
            errors.push("no backend configured".into());
        }
        Err(errors.join("; "))
    }

    fn fetch_from(
        &self,
        addr: SocketAddr,
        version: &mut Option<String>,
    ) -> Result<Fetched, String> {
        let stream = connect_tcp(addr, self.source).map_err(|e| format!("connect: {e}"))?;
        let mut conn = MonitorConn::new(stream).map_err(|e| e.to_string())?;
        let login = conn.login(&self.credentials);
        if !conn.version.is_empty() {
            *version = Some(conn.version.clone());
        }
        login?;
        let accounts = conn.accounts()?;
        Ok(Fetched {
            from: addr,
            accounts,
        })
    }
}

/// A TCP connection to `addr`, from `source` when it is of the same address family.
fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) else {
        return TcpStream::connect_timeout(&addr, IO_TIMEOUT);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    Ok(socket.into())
}

/// Why a query of the loader failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum QueryError {
    /// The server answered with an ERR packet.
    Server { code: u16, message: String },
    /// The connection broke, or its bytes are not what a query's answer is.
    Broken(String),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Server { code, message } => write!(f, "ERROR {code}: {message}"),
            QueryError::Broken(why) => f.write_str(why),
        }
    }
}

fn broken(why: impl fmt::Display) -> QueryError {
    QueryError::Broken(why.to_string())
}

fn server_error(payload: &[u8]) -> QueryError {
    match parse_err(payload, CLIENT_PROTOCOL_41) {
        Ok(err) => QueryError::Server {
            code: err.code,
            message: String::from_utf8_lossy(err.message).into_owned(),
        },
        Err(e) => broken(format!("bad ERR packet: {e}")),
    }
}

/// The monitor's blocking connection to one backend.
struct MonitorConn {
    stream: TcpStream,
    /// The server version of its greeting.
    version: String,
}

/// One packet as read: its sequence id and payload (under 16 MiB).
struct Packet {
    seq: u8,
    payload: Vec<u8>,
}

impl MonitorConn {
    fn new(stream: TcpStream) -> io::Result<MonitorConn> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(MonitorConn {
            stream,
            version: String::new(),
        })
    }

    fn read_packet(&mut self) -> Result<Packet, QueryError> {
        let mut header = [0u8; HEADER_LEN];
        (self.stream.read_exact(&mut header)).map_err(|e| broken(format!("read: {e}")))?;
        let header = parse_header(header);
        let len = header.len as usize;
        if len >= MAX_PAYLOAD_LEN {
            return Err(broken("a packet of 16 MiB or more"));
        }
        let mut payload = vec![0u8; len];
        (self.stream.read_exact(&mut payload)).map_err(|e| broken(format!("read: {e}")))?;
        Ok(Packet {
            seq: header.seq,
            payload,
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), QueryError> {
        (self.stream.write_all(bytes)).map_err(|e| broken(format!("write: {e}")))
    }

    /// The login exchange, from the greeting to the server's OK.
    fn login(&mut self, credentials: &Credentials) -> Result<(), String> {
        let mut login = Login::with_capabilities(MONITOR_CAPABILITIES, UTF8MB4_GENERAL_CI);
        let mut packet = self.read_packet().map_err(|e| e.to_string())?;
        if let Ok(greeting) = parse_handshake_v10(&packet.payload) {
            self.version = String::from_utf8_lossy(greeting.server_version).into_owned();
        }
        loop {
            let (mut framed, mut out) = (Vec::new(), Vec::new());
            write_packet(&mut framed, packet.seq, &packet.payload);
            let done = (login.feed(&framed, credentials, &mut out)).map_err(|e| e.to_string())?;
            self.send(&out).map_err(|e| e.to_string())?;
            if done.is_some() {
                return Ok(());
            }
            packet = self.read_packet().map_err(|e| e.to_string())?;
        }
    }

    /// Runs `sql` and reads its text result set.
    fn query(&mut self, sql: &str) -> Result<Vec<Row>, QueryError> {
        let mut command = vec![COM_QUERY];
        command.extend_from_slice(sql.as_bytes());
        let mut out = Vec::new();
        write_packet(&mut out, 0, &command);
        self.send(&out)?;
        let (mut result, mut read) = (TextResult::default(), 0usize);
        loop {
            let packet = self.read_packet()?;
            read += packet.payload.len();
            if read > MAX_RESULT_BYTES {
                return Err(broken(format!("a result over {MAX_RESULT_BYTES} bytes")));
            }
            if result.packet(&packet.payload)? {
                return Ok(result.rows);
            }
        }
    }

    /// The accounts, from `mysql.global_priv`, or `mysql.user` where that table does not exist.
    fn accounts(&mut self) -> Result<Vec<Account>, String> {
        let first = match self.query(GLOBAL_PRIV_QUERY) {
            Ok(rows) => return Ok(accounts_from_global_priv(rows)),
            Err(e @ QueryError::Server { .. }) => e,
            Err(e) => return Err(format!("{GLOBAL_PRIV_QUERY}: {e}")),
        };
        match self.query(MYSQL_USER_QUERY) {
            Ok(rows) => Ok(accounts_from_mysql_user(rows)),
            Err(e) => Err(format!(
                "{GLOBAL_PRIV_QUERY}: {first}; {MYSQL_USER_QUERY}: {e}"
            )),
        }
    }
}

// ---- Text result sets ----------------------------------------------------------------------

/// A row of a text result set: each column's value, `None` for NULL.
type Row = Vec<Option<Vec<u8>>>;

/// Where a text result set is.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Stage {
    #[default]
    ColumnCount,
    /// Column definitions still to come, then their EOF.
    ColumnDefs(u64),
    Rows,
    Done,
}

/// A text result set read packet by packet, without CLIENT_DEPRECATE_EOF: column count, column
/// definitions, EOF, rows, then EOF (or ERR).
#[derive(Debug, Default)]
struct TextResult {
    stage: Stage,
    columns: usize,
    rows: Vec<Row>,
}

impl TextResult {
    /// Takes the next packet's payload; true once the result set is complete.
    fn packet(&mut self, payload: &[u8]) -> Result<bool, QueryError> {
        if payload.first() == Some(&ERR_HEADER) {
            return Err(server_error(payload));
        }
        match self.stage {
            Stage::ColumnCount => self.column_count(payload),
            Stage::ColumnDefs(left) => self.column_def(payload, left),
            Stage::Rows => self.row(payload),
            Stage::Done => Err(broken("a packet after the end of the result set")),
        }
    }

    fn column_count(&mut self, payload: &[u8]) -> Result<bool, QueryError> {
        if payload.first() == Some(&OK_HEADER) {
            return Err(broken("an OK packet where a result set was expected"));
        }
        let count = (Cursor::new(payload).lenenc_int()).map_err(|e| broken(format!("{e}")))?;
        if count == 0 || count > MAX_COLUMNS {
            return Err(broken(format!("a result set of {count} columns")));
        }
        self.columns = count as usize;
        self.stage = Stage::ColumnDefs(count);
        Ok(false)
    }

    fn column_def(&mut self, payload: &[u8], left: u64) -> Result<bool, QueryError> {
        if left > 0 {
            self.stage = Stage::ColumnDefs(left - 1);
        } else if is_eof(payload) {
            self.stage = Stage::Rows;
        } else {
            return Err(broken("no EOF packet after the column definitions"));
        }
        Ok(false)
    }

    fn row(&mut self, payload: &[u8]) -> Result<bool, QueryError> {
        if is_eof(payload) {
            self.stage = Stage::Done;
            return Ok(true);
        }
        let mut cursor = Cursor::new(payload);
        let row = (0..self.columns)
            .map(|_| field(&mut cursor))
            .collect::<Result<Row, _>>()?;
        if !cursor.is_empty() {
            return Err(broken("a row longer than its columns"));
        }
        self.rows.push(row);
        Ok(false)
    }
}

fn is_eof(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|&first| is_eof_packet(payload.len() as u32, first))
}

/// One value of a text row: a length-encoded string, or 0xFB for NULL.
fn field(cursor: &mut Cursor<'_>) -> Result<Option<Vec<u8>>, QueryError> {
    let len = (cursor.lenenc_int_or_null()).map_err(|e| broken(format!("row: {e}")))?;
    let Some(len) = len else { return Ok(None) };
    let len = usize::try_from(len).map_err(|_| broken("row: a value too long"))?;
    let value = cursor.bytes(len).map_err(|e| broken(format!("row: {e}")))?;
    Ok(Some(value.to_vec()))
}

// ---- Rows to accounts ----------------------------------------------------------------------

/// A text value of a row (lossy UTF-8); None for NULL or a missing column.
fn text(row: &Row, column: usize) -> Option<String> {
    let value = row.get(column)?.as_deref()?;
    Some(String::from_utf8_lossy(value).into_owned())
}

fn account(user: String, host: &str, plugin: &str, authentication_string: &[u8]) -> Account {
    Account {
        host: HostPattern::parse(host),
        entry: UserEntry::loaded(&user, plugin, authentication_string),
    }
}

/// `User, Host, Priv` rows of `mysql.global_priv`; roles and locked accounts are left out.
fn accounts_from_global_priv(rows: Vec<Row>) -> Vec<Account> {
    let usable = |row: &Row| -> Option<Account> {
        let (user, host) = (text(row, 0)?, text(row, 1)?);
        let json = row.get(2)?.as_deref()?;
        if is_role(json) {
            return None;
        }
        let (plugin, string) = parse_global_priv(json)?;
        Some(account(user, &host, &plugin, &string))
    };
    rows.iter().filter_map(usable).collect()
}

/// MariaDB marks roles in `mysql.global_priv` with `"is_role":true`.
fn is_role(priv_json: &[u8]) -> bool {
    let value: Option<serde_json::Value> = serde_json::from_slice(priv_json).ok();
    value.and_then(|v| v.get("is_role")?.as_bool()) == Some(true)
}

/// `user, host, plugin, authentication_string, account_locked` rows of MySQL's `mysql.user`;
/// locked accounts (MySQL's roles are) are left out.
fn accounts_from_mysql_user(rows: Vec<Row>) -> Vec<Account> {
    let usable = |row: &Row| -> Option<Account> {
        let (user, host, plugin) = (text(row, 0)?, text(row, 1)?, text(row, 2)?);
        let string = row.get(3)?.as_deref().unwrap_or_default();
        if text(row, 4)?.eq_ignore_ascii_case("Y") {
            return None;
        }
        Some(account(user, &host, &plugin, string))
    };
    rows.iter().filter_map(usable).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::framing::split_packet;

    const NATIVE_APP: &str = "*5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3";

    fn config(text: &str) -> Config {
        let base = "[proxy]\nbackends = [\"127.0.0.1:1\"]\n[monitor]\nusers_refresh_ms = 100\n";
        Config::from_toml_str(&format!("{base}{text}")).expect("valid test configuration")
    }

    fn users(text: &str) -> Arc<Users> {
        Users::new(&config(text))
    }

    /// An account whose credential is its host's text, to tell which one a lookup found.
    fn marked(user: &str, host: &str) -> Account {
        Account {
            host: HostPattern::parse(host),
            entry: UserEntry {
                stored: Some(Stored::Cleartext(host.as_bytes().to_vec())),
                ..UserEntry::loaded(user, "mysql_native_password", b"")
            },
        }
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    /// The host of the account `user` from `client` finds (by its mark).
    fn found(users: &Users, user: &str, client: Option<IpAddr>) -> Option<String> {
        let entry = users.lookup(user, client)?;
        match entry.stored {
            Some(Stored::Cleartext(host)) => Some(String::from_utf8(host).unwrap()),
            other => panic!("not a marked account: {other:?}"),
        }
    }

    const HOSTS: [&str; 9] = [
        "%",
        "10.0.0.%",
        "",
        "10.0.0.5",
        "10.%",
        "localhost",
        "10.0.0.0/255.255.255.0",
        "db.example.com",
        "10.0.0.1_",
    ];

    #[test]
    fn hosts_are_tried_most_specific_first() {
        let u = users("");
        u.install(HOSTS.iter().map(|h| marked("app", h)).collect());
        let snapshot = u.current();
        let order: Vec<&str> = snapshot.loaded["app"]
            .iter()
            .map(|a| a.host.text.as_str())
            .collect();
        assert_eq!(
            order,
            [
                "db.example.com",
                "localhost",
                "10.0.0.5",
                "10.0.0.0/255.255.255.0",
                "10.0.0.1_",
                "10.0.0.%",
                "10.%",
                "%",
                "",
            ]
        );
        for (client, host) in [
            ("10.0.0.5", "10.0.0.5"),
            ("10.0.0.6", "10.0.0.0/255.255.255.0"),
            ("10.0.1.5", "10.%"),
            ("10.9.9.9", "10.%"),
            ("192.168.1.1", "%"),
            ("127.0.0.1", "localhost"),
            ("::1", "localhost"),
            ("::ffff:10.0.1.7", "10.%"),
            ("fe80::1", "%"),
        ] {
            assert_eq!(
                found(&u, "app", ip(client)).as_deref(),
                Some(host),
                "{client}"
            );
        }
        // Without an address only `%` matches.
        assert_eq!(found(&u, "app", None).as_deref(), Some("%"));
    }

    #[test]
    fn exact_hosts_beat_patterns_and_patterns_beat_percent() {
        let u = users("");
        let hosts = ["%", "10.0.0.%", "10.0.0.1_", "10.0.0.5", "127.0.0.2"];
        u.install(hosts.iter().map(|h| marked("app", h)).collect());
        for (client, host) in [
            ("10.0.0.5", "10.0.0.5"),
            ("::ffff:10.0.0.5", "10.0.0.5"),
            ("10.0.0.15", "10.0.0.1_"),
            ("10.0.0.150", "10.0.0.%"),
            ("10.0.0.1", "10.0.0.%"),
            ("127.0.0.1", "%"),
            ("127.0.0.2", "127.0.0.2"),
        ] {
            assert_eq!(
                found(&u, "app", ip(client)).as_deref(),
                Some(host),
                "{client}"
            );
        }
    }

    #[test]
    fn an_account_without_percent_needs_a_matching_address() {
        let u = users("");
        u.install(vec![
            marked("app", "10.0.0.0/8"),
            marked("app", "10.1.0.0/16"),
            marked("local", "localhost"),
            marked("named", "db.example.com"),
            marked("any", ""),
        ]);
        assert_eq!(
            found(&u, "app", ip("10.200.1.1")).as_deref(),
            Some("10.0.0.0/8")
        );
        assert_eq!(
            found(&u, "app", ip("10.1.1.1")).as_deref(),
            Some("10.1.0.0/16"),
            "the longer mask first"
        );
        assert_eq!(found(&u, "app", ip("11.0.0.1")), None);
        assert_eq!(found(&u, "app", None), None);
        assert_eq!(found(&u, "local", ip("127.0.0.2")), None);
        assert_eq!(found(&u, "local", None), None);
        // Host names are never resolved.
        assert_eq!(found(&u, "named", ip("10.0.0.1")), None);
        // The empty host is `%`, ranked last.
        assert_eq!(found(&u, "any", None).as_deref(), Some(""));
        assert_eq!(found(&u, "any", ip("10.0.0.1")).as_deref(), Some(""));
        assert_eq!(found(&u, "nobody", ip("10.0.0.1")), None);
    }

    #[test]
    fn the_anonymous_user_is_not_matched_to_named_users() {
        let u = users("");
        u.install(vec![marked("", "%"), marked("app", "10.0.0.1")]);
        assert_eq!(found(&u, "bob", ip("10.0.0.1")), None);
        assert_eq!(found(&u, "app", ip("10.0.0.2")), None);
        assert_eq!(found(&u, "", ip("10.0.0.2")).as_deref(), Some("%"));
    }

    #[test]
    fn like_patterns_and_netmasks() {
        for (pattern, text, matches) in [
            ("10.0.0.%", "10.0.0.55", true),
            ("10.0.0._", "10.0.0.5", true),
            ("10.0.0._", "10.0.0.55", false),
            ("%.5", "10.0.0.5", true),
            ("%.5", "10.0.0.55", false),
            ("1%0%5", "10.0.0.5", true),
            ("1%0%5", "10.0.0.6", false),
            ("%%", "", true),
            ("_", "", false),
            ("10\\_0", "10_0", true),
            ("10\\_0", "1000", false),
            ("FE80::%", "fe80::1", true),
            ("10.0.0.5", "10.0.0.5", true),
        ] {
            assert_eq!(
                like(pattern.as_bytes(), text.as_bytes()),
                matches,
                "{pattern} {text}"
            );
        }
        let cases = [
            ("10.0.0.0/255.0.0.0", "10.1.2.3", true),
            ("10.0.0.0/255.0.0.0", "11.1.2.3", false),
            ("10.1.2.0/24", "10.1.2.200", true),
            ("10.1.2.0/24", "10.1.3.1", false),
            ("0.0.0.0/0", "1.2.3.4", true),
            ("10.1.2.0/33", "10.1.2.0", false),
            ("10.1.2.0/255.255.255.0", "::1", false),
        ];
        for (host, client, matches) in cases {
            let pattern = HostPattern::parse(host);
            assert_eq!(pattern.matches(ip(client)), matches, "{host} {client}");
        }
        assert_eq!(wildcard_rank("10.0.0.5"), EXACT_HOST);
        assert_eq!(wildcard_rank("10.0.%"), 6);
        assert_eq!(wildcard_rank("%"), 1);
        assert_eq!(wildcard_rank(""), 0);
        assert_eq!(wildcard_rank("a\\%"), EXACT_HOST, "an escaped % is literal");
    }

    #[test]
    fn config_users_take_precedence_over_loaded_accounts() {
        let u = users(&format!(
            "[[users]]\nname = \"app\"\npassword = \"{NATIVE_APP}\"\ndefault_schema = \"s\"\n\
             max_connections = 3\n[[users]]\nname = \"off\"\npassword = \"x\"\nactive = false\n"
        ));
        let config_app = UserEntry {
            name: "app".into(),
            stored: Some(Stored::NativeHash([
                0x5B, 0xCB, 0x3E, 0x6A, 0xC3, 0x45, 0xB4, 0x35, 0xC7, 0xC2, 0xE6, 0xB7, 0x94, 0x9A,
                0x04, 0xCE, 0x6F, 0x65, 0x63, 0xD3,
            ])),
            plugin: String::new(),
            default_schema: Some("s".into()),
            max_connections: 3,
            active: true,
            from_config: true,
        };
        assert_eq!(u.lookup("app", None), Some(config_app.clone()));
        u.install(vec![marked("app", "%"), marked("other", "%")]);
        assert_eq!(u.lookup("app", ip("10.0.0.1")), Some(config_app.clone()));
        assert_eq!(u.lookup("app", None), Some(config_app));
        assert_eq!(found(&u, "other", None).as_deref(), Some("%"));
        let off = u.lookup("off", None).unwrap();
        assert!(!off.active && off.from_config);
        assert_eq!(off.stored, Some(Stored::Cleartext(b"x".to_vec())));
        // A reload keeps the configuration's users.
        u.install(Vec::new());
        assert!(u.lookup("app", None).unwrap().from_config);
        assert_eq!(u.lookup("other", None), None);
    }

    /// Every packet of `bytes` through a [`TextResult`]: the rows once complete, None before.
    fn parse(bytes: &[u8]) -> Result<Option<Vec<Row>>, QueryError> {
        let (mut result, mut at) = (TextResult::default(), 0);
        while let Some((_, payload, used)) = split_packet(&bytes[at..]) {
            at += used;
            if result.packet(payload)? {
                assert_eq!(at, bytes.len(), "bytes after the result set");
                return Ok(Some(result.rows));
            }
        }
        Ok(None)
    }

    fn packets(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, payload) in payloads.iter().enumerate() {
            write_packet(&mut out, seq as u8 + 1, payload);
        }
        out
    }

    const EOF: &[u8] = b"\xfe\x00\x00\x02\x00";
    const COLUMN_DEF: &[u8] = b"\x03def\x05mysql\x04user\x04user\x04User\x04User\x0c";

    #[test]
    fn text_results_are_parsed_with_nulls_and_long_values() {
        let long = vec![b'x'; 300];
        let mut long_row = vec![0xfc, 0x2c, 0x01];
        long_row.extend_from_slice(&long);
        long_row.push(0xfb);
        let bytes = packets(&[
            b"\x02",
            COLUMN_DEF,
            COLUMN_DEF,
            EOF,
            b"\x03abc\xfb",
            b"\x00\x01x",
            &long_row,
            EOF,
        ]);
        let rows = parse(&bytes).unwrap().expect("complete");
        assert_eq!(
            rows,
            vec![
                vec![Some(b"abc".to_vec()), None],
                vec![Some(Vec::new()), Some(b"x".to_vec())],
                vec![Some(long), None],
            ]
        );
        // Incomplete until the last EOF.
        assert_eq!(parse(&bytes[..bytes.len() - 1]), Ok(None));
        // An empty result set.
        let bytes = packets(&[b"\x01", COLUMN_DEF, EOF, EOF]);
        assert_eq!(parse(&bytes), Ok(Some(Vec::new())));
    }

    #[test]
    fn text_result_errors_are_told_apart() {
        let err = b"\xff\x7a\x04#42S02Table 'mysql.global_priv' doesn't exist";
        assert_eq!(
            parse(&packets(&[err])),
            Err(QueryError::Server {
                code: 1146,
                message: "Table 'mysql.global_priv' doesn't exist".into()
            })
        );
        // An ERR after some rows (the query was killed).
        let killed = b"\xff\x25\x05#70100Query execution was interrupted";
        let bytes = packets(&[b"\x01", COLUMN_DEF, EOF, b"\x01a", killed]);
        assert!(matches!(
            parse(&bytes),
            Err(QueryError::Server { code: 1317, .. })
        ));
        for (what, bytes) in [
            (
                "OK instead of a result",
                packets(&[b"\x00\x00\x00\x02\x00\x00\x00"]),
            ),
            ("no columns", packets(&[b"\x00\x00"])),
            ("too many columns", packets(&[b"\xfc\x00\x10"])),
            (
                "no EOF after definitions",
                packets(&[b"\x01", COLUMN_DEF, b"\x01a"]),
            ),
            (
                "row too short",
                packets(&[b"\x02", COLUMN_DEF, COLUMN_DEF, EOF, b"\x01a"]),
            ),
            (
                "row too long",
                packets(&[b"\x01", COLUMN_DEF, EOF, b"\x01a\x01b"]),
            ),
            (
                "value truncated",
                packets(&[b"\x01", COLUMN_DEF, EOF, b"\x05ab"]),
            ),
            ("bad length", packets(&[b"\x01", COLUMN_DEF, EOF, b"\xff"])),
        ] {
            assert!(
                matches!(parse(&bytes), Err(QueryError::Broken(_))),
                "{what}"
            );
        }
        let mut result = TextResult::default();
        for payload in [b"\x01".as_slice(), COLUMN_DEF, EOF, EOF] {
            result.packet(payload).unwrap();
        }
        assert!(matches!(result.packet(EOF), Err(QueryError::Broken(_))));
    }

    fn row(values: &[Option<&str>]) -> Row {
        values
            .iter()
            .map(|v| v.map(|s| s.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn global_priv_rows_become_accounts() {
        let native = r#"{"access":0,"plugin":"mysql_native_password","authentication_string":"*5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3"}"#;
        let rows = vec![
            row(&[Some("app"), Some("%"), Some(native)]),
            row(&[Some("nopw"), Some("10.%"), Some(r#"{"access":0}"#)]),
            row(&[
                Some("pam"),
                Some("%"),
                Some(r#"{"plugin":"pam","authentication_string":"mariadb"}"#),
            ]),
            row(&[
                Some("locked"),
                Some("%"),
                Some(r#"{"account_locked":true}"#),
            ]),
            row(&[
                Some("role"),
                Some(""),
                Some(r#"{"access":0,"is_role":true}"#),
            ]),
            row(&[Some("bad"), Some("%"), Some("not json")]),
            row(&[Some("null"), None, Some(native)]),
        ];
        let accounts = accounts_from_global_priv(rows);
        let summary: Vec<(&str, &str, &str, Option<&Stored>)> = (accounts.iter())
            .map(|a| {
                let e = &a.entry;
                (
                    e.name.as_str(),
                    a.host.text.as_str(),
                    e.plugin.as_str(),
                    e.stored.as_ref(),
                )
            })
            .collect();
        let hash = Stored::from_mysql_user("mysql_native_password", NATIVE_APP.as_bytes());
        let empty = Stored::Cleartext(Vec::new());
        assert_eq!(
            summary,
            vec![
                ("app", "%", "mysql_native_password", hash.as_ref()),
                ("nopw", "10.%", "mysql_native_password", Some(&empty)),
                ("pam", "%", "pam", None),
            ]
        );
        assert!(accounts
            .iter()
            .all(|a| a.entry.active && !a.entry.from_config));
    }

    #[test]
    fn mysql_user_rows_become_accounts_without_locked_ones() {
        let rows = vec![
            row(&[
                Some("app"),
                Some("%"),
                Some("mysql_native_password"),
                Some(NATIVE_APP),
                Some("N"),
            ]),
            row(&[
                Some("role"),
                Some("%"),
                Some("caching_sha2_password"),
                Some(""),
                Some("Y"),
            ]),
            row(&[
                Some("sock"),
                Some("localhost"),
                Some("auth_socket"),
                None,
                Some("N"),
            ]),
            row(&[
                Some("old"),
                Some("%"),
                Some("mysql_native_password"),
                Some(NATIVE_APP),
                None,
            ]),
        ];
        let accounts = accounts_from_mysql_user(rows);
        let names: Vec<(&str, bool)> = (accounts.iter())
            .map(|a| (a.entry.name.as_str(), a.entry.stored.is_some()))
            .collect();
        assert_eq!(names, vec![("app", true), ("sock", false)]);
    }

    #[test]
    fn generation_counts_every_completed_load() {
        let u = users("[[users]]\nname = \"cfg\"\npassword = \"x\"\n");
        assert_eq!(u.generation(), 0);
        assert_eq!(u.server_version(), None);
        let from: SocketAddr = "127.0.0.1:3306".parse().unwrap();
        let version = Some("5.5.5-10.11.6-MariaDB".to_owned());
        u.finish_load(
            version,
            Ok(Fetched {
                from,
                accounts: vec![marked("app", "%")],
            }),
        );
        assert_eq!(u.generation(), 1);
        assert_eq!(u.server_version().as_deref(), Some("5.5.5-10.11.6-MariaDB"));
        assert!(u.lookup("app", None).is_some());
        // A failed load keeps what was loaded, and still counts.
        u.finish_load(None, Err("connect: refused".into()));
        assert_eq!(u.generation(), 2);
        assert!(u.lookup("app", None).is_some());
        assert!(u.lookup("cfg", None).is_some());
        // A login that failed after the greeting still tells the version.
        u.finish_load(Some("8.0.36".into()), Err("access denied".into()));
        assert_eq!(u.generation(), 3);
        assert_eq!(u.server_version().as_deref(), Some("8.0.36"));
        u.finish_load(
            None,
            Ok(Fetched {
                from,
                accounts: Vec::new(),
            }),
        );
        assert_eq!(u.generation(), 4);
        assert_eq!(u.lookup("app", None), None);
        assert_eq!(u.server_version().as_deref(), Some("8.0.36"));
    }

    #[test]
    fn connections_are_counted_per_user_against_their_limit() {
        let u = users("");
        assert!(u.connect("a", 2));
        assert!(u.connect("a", 2));
        assert!(!u.connect("a", 2), "the limit is reached");
        assert_eq!(u.connections("a"), 2);
        assert!(u.connect("b", 1), "users are counted apart");
        u.disconnect("a");
        assert_eq!(u.connections("a"), 1);
        assert!(u.connect("a", 2));
        for _ in 0..100 {
            assert!(u.connect("c", 0), "0 is unlimited");
        }
        assert_eq!(u.connections("c"), 100);
        u.disconnect("b");
        u.disconnect("b");
        u.disconnect("nobody");
        assert_eq!(u.connections("b"), 0);
        assert!(
            !lock(&u.connections).contains_key("b"),
            "no entry left at 0"
        );
    }

    #[test]
    fn refreshes_are_rate_limited() {
        let u = users("");
        assert!(!u.request_refresh(), "no loader without a monitor account");
        lock(&u.refresh).loader = true;
        let running = AtomicBool::new(false);
        // The first load is due at once.
        assert!(u.next_load(&running));
        // A request too soon after a load is kept, and served when the interval has passed.
        assert!(u.request_refresh());
        assert!(u.refresh_delay() > Duration::ZERO);
        let asked = Instant::now();
        assert!(u.next_load(&running));
        assert!(
            asked.elapsed() >= Duration::from_millis(80),
            "{:?}",
            asked.elapsed()
        );
        assert!(u.request_refresh());
        assert!(u.request_refresh(), "still pending");
        let stopped = AtomicBool::new(true);
        assert!(!u.next_load(&stopped));
        assert!(!u.request_refresh(), "the loader is gone");
    }

    #[test]
    fn the_loader_needs_a_monitor_account_and_stops_on_shutdown() {
        let shutdown = Arc::new(AtomicBool::new(false));
        let u = users("");
        assert!(u.start_loader(&config(""), Arc::clone(&shutdown)).is_none());
        // A backend that refuses: the load fails, counts, and the loader waits for requests.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let c = Config::from_toml_str(&format!(
            "[proxy]\nbackends = [\"127.0.0.1:{port}\"]\n[monitor]\nuser = \"m\"\n\
             password = \"p\"\nusers_refresh_ms = 100\n"
        ))
        .unwrap();
        let u = Users::new(&c);
        let loader = u.start_loader(&c, Arc::clone(&shutdown)).expect("a loader");
        let deadline = Instant::now() + Duration::from_secs(10);
        while u.generation() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(u.generation(), 1);
        assert_eq!(u.server_version(), None);
        std::thread::sleep(Duration::from_millis(110));
        assert!(u.request_refresh());
        while u.generation() == 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(u.generation(), 2);
        let stopping = Instant::now();
        shutdown.store(true, Ordering::Relaxed);
        loader.join().unwrap();
        assert!(stopping.elapsed() < Duration::from_millis(500));
        assert!(!u.request_refresh());
    }
}
