//! Typed configuration, the proxy's "chassis": the TOML file named by `--config` (MySQL Proxy's
//! `--defaults-file`) is read first, then command-line options override it key by key, then the
//! merged values are validated into a [`Config`]. Every limit of the proxy lives here, together with
//! the arithmetic that decides how many connections the io_uring fixed-file tables can hold.
//!
//! Every key is declared once, in the `config_keys!` table below: its [`Config`] field and type,
//! its TOML section and name, its flag (and MySQL Proxy alias), its [`Kind`] of value, its default
//! and its help text (the doc comment). From that one entry come the [`Config`] field, the [`Cli`]
//! option, the [`FileConfig`] slot, the layering (file, then command line) and the line of
//! [`Config::summary`]. Checks that involve more than one key or the host (the fixed-file ceiling,
//! `send_high_water >= buffer_size`, ...) are code in `Merged::validate`.
//!
//! Keys marked `mode: pooled` belong to pooled mode (the proxy authenticates clients itself and
//! multiplexes their queries over pooled backend connections): the summary shows them only while
//! `proxy.pooled_listen` is set or when they differ from their default, so a configuration without
//! pooled listeners summarises as it did before pooled mode existed.
//!
//! The users of pooled listeners are not keys but a list of records, the `[[users]]` array of
//! tables (file only, no flags): [`UserConfig`], read by `parse_users`, shown by the summary as
//! `[[users]]` tables after every key. A user's `password` ([`Secret`]) is the cleartext, a
//! mysql_native_password hash (`*` and 40 hex digits) or a caching_sha2_password hash (`$A$…`,
//! as MySQL 8's `mysql.user.authentication_string` holds it); `default_hostgroup` accepts only
//! 0 (all backends) until hostgroups exist.
//!
//! Errors ([`ConfigError`]) always name the offending key: its TOML path (`proxy.listen`,
//! `users[2].password`) when the value came from the file or a default, its flag (`--listen`) when
//! it came from the command line.

use std::fmt::{self, Debug};
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{
    value_parser, Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches, Parser,
};
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::protocol::auth_server::Stored;

/// Fixed-file slots each worker keeps back from client connections: for the listener and for
/// accepting a connection only to refuse it (over `max_connections`) with a proper error packet.
pub const RESERVED_SLOTS_PER_WORKER: u32 = 16;

/// Fixed-file slots one pass-through client occupies: its own socket and its backend socket.
pub const SLOTS_PER_CLIENT: u32 = 2;

/// Fixed-file slots one pooled client occupies: its own socket (backend connections are shared and
/// counted once per worker, see [`Room`]).
pub const SLOTS_PER_POOLED_CLIENT: u32 = 1;

/// Share of each worker's client room that `workers = 0` leaves free when it adds workers for a
/// large `max_connections`: SO_REUSEPORT spreads connections by a hash, not evenly, so one worker
/// gets more than the average (at 18,000 per worker the spread is about ±1%; 5% is ample).
const SPREAD_HEADROOM_PERCENT: u64 = 5;

/// Upper bound on the fixed-file table we ever ask for, whatever RLIMIT_NOFILE says.
const MAX_FIXED_FILE_SLOTS: u64 = 1 << 20;

/// Used only if `getrlimit(RLIMIT_NOFILE)` itself fails: the usual Linux default soft limit.
const FALLBACK_NOFILE: u64 = 1024;

/// Fewest receive buffers a worker gets when the per-core default is shared among more workers
/// than cores: enough for a few hundred connections receiving at once (a recv that finds none
/// waits and is re-armed, it does not fail).
const MIN_SHARED_BUFFERS: u64 = 128;

/// `proxy.max_connections` when not set (lowered to what the host can hold).
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Largest worker count accepted (after resolving 0 to the number of cores).
pub const MAX_WORKERS: u64 = 1024;
/// Longest timeout accepted: one day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// "No upper bound", as the MAX of a kind.
pub const NO_MAX: u64 = u64::MAX;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// One configuration key's names and help, as declared in `config_keys!`.
#[derive(Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// TOML table the key lives in (`proxy`).
    pub section: &'static str,
    /// Name inside that table (`listen`).
    pub name: &'static str,
    /// `section.name`: how errors name the key when its value came from the file or a default.
    pub path: &'static str,
    /// Long option without dashes (`listen`), also its clap argument id.
    pub long: &'static str,
    /// `--long`: how errors name the key when its value came from the command line.
    pub flag: &'static str,
    /// `no-long`, the negating option of an on/off key (other kinds have none).
    pub negation: &'static str,
    /// MySQL Proxy's name for the option, accepted as a visible alias.
    pub alias: Option<&'static str>,
    /// The mode the key belongs to: the summary leaves a key of a mode that is off out while it
    /// holds its default.
    pub mode: Mode,
    /// What the key means: the doc comment of its declaration.
    pub help: &'static str,
}

/// Which part of the proxy a key configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every configuration.
    Any,
    /// Pooled listeners (`mode: pooled`).
    Pooled,
    /// A Lua script (`mode: script`).
    Script,
}

/// `Some(x)` for a given `x`, else `None` (for the optional parts of a declaration).
macro_rules! optional {
    () => {
        None
    };
    ($value:expr) => {
        Some($value)
    };
}

/// The [`Mode`] of a declaration (no `mode`: a key of every mode).
macro_rules! key_mode {
    () => {
        Mode::Any
    };
    (pooled) => {
        Mode::Pooled
    };
    (script) => {
        Mode::Script
    };
}

/// Generates, from the one declaration of every key: [`Config`], [`keys`] and [`KEYS`], [`Cli`]
/// with its clap parsing, [`FileConfig`] with its key lookup, and `Merged` (the layering and the
/// per-key checks).
macro_rules! config_keys {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty {
            key: $section:ident . $name:ident, flag: $long:literal $(| $alias:literal)?,
            kind: $kind:ty, default: $default:expr $(, mode: $mode:ident)? $(,)?
        }
    )+) => {
        /// The validated configuration the rest of the proxy reads. All sizes in bytes.
        #[derive(Clone, PartialEq)]
        pub struct Config {
            $($(#[doc = $doc])+ pub $field: $ty,)+
            /// Users of pooled listeners, as configured.
            pub users: Vec<UserConfig>,
        }

        /// Every field as its kind shows it: secrets are not printed.
        impl Debug for Config {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("Config")
                    $(.field(stringify!($field), &Shown::<$kind, $ty>(&self.$field, PhantomData)))+
                    .field("users", &self.users)
                    .finish()
            }
        }

        /// The declaration of every key, by [`Config`] field name.
        #[allow(non_upper_case_globals)]
        pub mod keys {
            use super::{KeySpec, Mode};
            $($(#[doc = $doc])+ pub static $field: KeySpec = KeySpec {
                section: stringify!($section),
                name: stringify!($name),
                path: concat!(stringify!($section), ".", stringify!($name)),
                long: $long,
                flag: concat!("--", $long),
                negation: concat!("no-", $long),
                alias: optional!($($alias)?),
                mode: key_mode!($($mode)?),
                help: concat!($($doc),+),
            };)+
        }

        /// Every key, in declaration order (the order of `--help` and of the summary).
        pub static KEYS: &[&KeySpec] = &[$(&keys::$field),+];

        /// Command line. Every option overrides the same key of the `--config` file; an option not
        /// given holds its empty value (`None`, an empty list).
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Cli {
            /// TOML configuration file, read before the command-line options are applied.
            pub config: Option<PathBuf>,
            $($(#[doc = $doc])+ pub $field: CliOf<$kind, $ty>,)+
            /// Validate the configuration, print the effective settings and exit.
            pub check_config: bool,
            /// How the process runs (MySQL Proxy's process options).
            pub launch: Launch,
        }

        impl FromArgMatches for Cli {
            fn from_arg_matches(matches: &ArgMatches) -> Result<Cli, clap::Error> {
                Ok(Cli {
                    config: matches.get_one::<PathBuf>(CONFIG_ARG).cloned(),
                    $($field: <RawOf<$kind, $ty>>::from_matches(matches, &keys::$field),)+
                    check_config: matches.get_flag(CHECK_CONFIG_ARG),
                    launch: Launch::from_matches(matches)?,
                })
            }

            fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
                *self = Cli::from_arg_matches(matches)?;
                Ok(())
            }
        }

        /// The options of every key, in declaration order.
        fn key_args() -> Vec<Arg> {
            [$(args_for::<$kind, $ty>(&keys::$field, $default)),+].concat()
        }

        /// The TOML file as written: each key's value if the file sets it.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct FileConfig {
            $(pub $field: Option<RawOf<$kind, $ty>>,)+
            /// The `[[users]]` tables, checked.
            pub users: Vec<UserConfig>,
        }

        impl FileConfig {
            /// Stores the file's value of `section.name`; unknown keys and wrong types are refused.
            fn set(
                &mut self,
                (section, name): (&str, &str),
                value: toml::Value,
                origin: &str,
            ) -> Result<(), ConfigError> {
                $(if (section, name) == (keys::$field.section, keys::$field.name) {
                    self.$field = Some(read_value(value, keys::$field.path, origin)?);
                    return Ok(());
                })+
                Err(unknown_key(section, name, origin))
            }
        }

        /// File values with command-line values laid over them, not yet validated.
        struct Merged {
            $($field: Layered<RawOf<$kind, $ty>>,)+
            users: Vec<UserConfig>,
        }

        impl Merged {
            fn new(file: FileConfig, cli: &Cli) -> Merged {
                Merged {
                    $($field: Layered::pick(
                        &keys::$field,
                        <$kind as Kind<$ty>>::raw_default($default),
                        file.$field,
                        <RawOf<$kind, $ty>>::from_cli(&cli.$field),
                    ),)+
                    users: file.users,
                }
            }

            /// Every key checked on its own, by its kind.
            fn check_each(&self) -> Result<Config, ConfigError> {
                Ok(Config {
                    $($field: self.$field.check::<$kind, $ty>()?,)+
                    users: self.users.clone(),
                })
            }
        }

        impl Config {
            /// Every key with its value as TOML and its kind's comment, in declaration order.
            fn rendered(&self) -> Vec<Rendered> {
                vec![$(Rendered {
                    key: &keys::$field,
                    value: <$kind as Kind<$ty>>::render(&self.$field),
                    comment: <$kind as Kind<$ty>>::comment(&self.$field),
                    default: <$kind as Kind<$ty>>::check(
                        &<$kind as Kind<$ty>>::raw_default($default),
                    )
                    .ok()
                    .and_then(|value| <$kind as Kind<$ty>>::render(&value)),
                }),+]
            }
        }
    };
}

config_keys! {
    /// Addresses (IP:PORT) to accept pass-through clients on; repeatable and/or comma-separated.
    /// None when pooled_listen is set and this is not.
    listen: Vec<SocketAddr> {
        key: proxy.listen, flag: "listen" | "proxy-address",
        kind: AddrsOrNone, default: &["127.0.0.1:6033"],
    }
    /// Addresses (IP:PORT) to accept clients on in pooled mode (the proxy authenticates them
    /// itself and multiplexes their queries over pooled backend connections); repeatable and/or
    /// comma-separated; none may also be in listen.
    pooled_listen: Vec<SocketAddr> {
        key: proxy.pooled_listen, flag: "pooled-listen",
        kind: AddrsOrNone, default: &[], mode: pooled,
    }
    /// Backend MySQL servers (IP:PORT), used round-robin; repeatable and/or comma-separated;
    /// required.
    backends: Vec<SocketAddr> {
        key: proxy.backends, flag: "backend" | "proxy-backend-addresses",
        kind: Addrs, default: &[],
    }
    /// Read-only backend servers (IP:PORT) scripts may route to (`proxy.global.backends` lists
    /// them after the backends, as BACKEND_TYPE_RO); repeatable and/or comma-separated.
    read_only_backends: Vec<SocketAddr> {
        key: proxy.read_only_backends,
        flag: "read-only-backends" | "proxy-read-only-backend-addresses",
        kind: AddrsOrNone, default: &[], mode: script,
    }
    /// Local address (an IP address, no port) backend connections of its address family are made
    /// from, e.g. 127.0.0.2 or one of the host's addresses; unset, the kernel chooses.
    backend_source: Option<IpAddr> {
        key: proxy.backend_source, flag: "backend-source",
        kind: Ip, default: None,
    }
    /// Client connections allowed at once, whole proxy; when not set, the default is lowered to
    /// what the host can hold; when set with workers = 0, the proxy runs enough workers for it.
    max_connections: usize {
        key: proxy.max_connections, flag: "max-connections",
        kind: Int<1, NO_MAX>, default: DEFAULT_MAX_CONNECTIONS,
    }
    /// Client connections from one IP address at once; 0 = unlimited.
    max_connections_per_source: usize {
        key: proxy.max_connections_per_source, flag: "max-connections-per-source",
        kind: Int<0, NO_MAX>, default: 0,
    }
    /// Largest logical packet a client may send; a larger one ends that client.
    max_packet_size: usize {
        key: proxy.max_packet_size, flag: "max-packet-size",
        kind: Size<KIB, GIB>, default: "1GiB",
    }
    /// Heap memory of queued output and buffers all workers together may hold; above it the proxy
    /// stops reading what would be copied and refuses new clients.
    max_memory: usize {
        key: proxy.max_memory, flag: "max-memory",
        kind: Limit<{ 16 * MIB }, TIB>, default: "1GiB",
    }
    /// Backend connect timeout, in milliseconds.
    connect_timeout_ms: u64 {
        key: proxy.connect_timeout_ms, flag: "connect-timeout-ms",
        kind: Int<1, MAX_TIMEOUT_MS>, default: 5_000,
    }
    /// Time a client has from accept to the end of its authentication, in milliseconds.
    handshake_timeout_ms: u64 {
        key: proxy.handshake_timeout_ms, flag: "handshake-timeout-ms",
        kind: Int<1, MAX_TIMEOUT_MS>, default: 10_000,
    }
    /// A client connection idle (no command in progress) this long is closed, in milliseconds;
    /// 0 = never.
    idle_timeout_ms: u64 {
        key: proxy.idle_timeout_ms, flag: "idle-timeout-ms",
        kind: Int<0, MAX_TIMEOUT_MS>, default: 0,
    }
    /// On SIGINT/SIGTERM, how long in-flight queries may finish, in milliseconds.
    drain_timeout_ms: u64 {
        key: proxy.drain_timeout_ms, flag: "drain-timeout-ms",
        kind: Int<0, MAX_TIMEOUT_MS>, default: 10_000,
    }
    /// How long a connection being closed may take to send what is queued for it before it is
    /// closed hard, in milliseconds.
    linger_timeout_ms: u64 {
        key: proxy.linger_timeout_ms, flag: "linger-timeout-ms",
        kind: Int<1, MAX_TIMEOUT_MS>, default: 5_000,
    }
    /// Backend connections per worker kept connected with their greeting received, handed to new
    /// clients (hides connect time; lets the proxy retire a connection cleanly when a client
    /// leaves mid-handshake).
    prewarm: usize {
        key: proxy.prewarm, flag: "prewarm",
        kind: Int<0, 1024>, default: 2,
    }
    /// How long a prewarmed backend connection may wait for a client, in milliseconds; older ones
    /// are retired cleanly. Must be below backend_handshake_timeout_ms.
    prewarm_max_age_ms: u64 {
        key: proxy.prewarm_max_age_ms, flag: "prewarm-max-age-ms",
        kind: Int<100, 60_000>, default: 2_000,
    }
    /// How long a backend connection may stay in its handshake (greeting to end of
    /// authentication) before the proxy ends it cleanly, in milliseconds. Keep it below the
    /// servers' connect_timeout (10 s by default in MySQL and MariaDB), which counts an unfinished
    /// handshake against the proxy's host (max_connect_errors).
    backend_handshake_timeout_ms: u64 {
        key: proxy.backend_handshake_timeout_ms, flag: "backend-handshake-timeout-ms",
        kind: Int<1_000, MAX_TIMEOUT_MS>, default: 8_000,
    }
    /// Backend connections per backend server that pooled sessions may hold at once, whole proxy.
    max_backend_connections: usize {
        key: proxy.max_backend_connections, flag: "max-backend-connections",
        kind: Int<1, 100_000>, default: 100, mode: pooled,
    }
    /// An idle pooled backend connection unused this long is closed, in milliseconds; 0 = never.
    pool_idle_timeout_ms: u64 {
        key: proxy.pool_idle_timeout_ms, flag: "pool-idle-timeout-ms",
        kind: Int<0, MAX_TIMEOUT_MS>, default: 60_000, mode: pooled,
    }
    /// Idle pooled backend connections per worker and pool (user, capabilities, charset) that
    /// the idle timeout spares: once a pool was used, this many stay logged in for it.
    pool_min_idle: usize {
        key: proxy.pool_min_idle, flag: "pool-min-idle",
        kind: Int<0, 100_000>, default: 0, mode: pooled,
    }
    /// A pooled backend connection this old is closed when it is next idle, in milliseconds;
    /// 0 = never.
    pool_max_age_ms: u64 {
        key: proxy.pool_max_age_ms, flag: "pool-max-age-ms",
        kind: Int<0, MAX_TIMEOUT_MS>, default: 3_600_000, mode: pooled,
    }
    /// An idle pooled backend connection unused this long is pinged (COM_PING) before it is
    /// reused, in milliseconds; 0 = before every reuse.
    pool_ping_after_ms: u64 {
        key: proxy.pool_ping_after_ms, flag: "pool-ping-after-ms",
        kind: Int<0, MAX_TIMEOUT_MS>, default: 10_000, mode: pooled,
    }
    /// Whether autocommit=0 alone keeps a pooled session on its backend connection, as if every
    /// statement ran in a transaction. Off (ProxySQL's default): such a session still moves
    /// between transactions (from its first statement that touches a transactional table to
    /// COMMIT or ROLLBACK the server reports a transaction, which pins), its autocommit setting
    /// replayed like any variable.
    autocommit_off_pins: bool {
        key: proxy.autocommit_off_pins, flag: "autocommit-off-pins",
        kind: Switch, default: true, mode: pooled,
    }
    /// Pooled sessions' plain SELECTs (no session state read or changed, not slow) that find no
    /// free backend connection are sent behind other sessions' SELECTs on a busy one instead of
    /// waiting, up to this many per connection; the responses come back in order, each to its
    /// client. 0 = never (such a query waits for a free connection).
    pipeline_depth: usize {
        key: proxy.pipeline_depth, flag: "pipeline-depth",
        kind: Int<0, 64>, default: 8, mode: pooled,
    }
    /// How long a pooled session's query may wait for a backend connection before it gets an
    /// error, in milliseconds.
    pool_wait_timeout_ms: u64 {
        key: proxy.pool_wait_timeout_ms, flag: "pool-wait-timeout-ms",
        kind: Int<1, MAX_TIMEOUT_MS>, default: 10_000, mode: pooled,
    }
    /// After a failed login on a pooled listener, further logins from the same client address are
    /// answered no sooner than this after their handshake response, in milliseconds; doubles with
    /// each failure up to 8 times this, reset by a successful login; 0 = no delay.
    auth_failure_delay_ms: u64 {
        key: proxy.auth_failure_delay_ms, flag: "auth-failure-delay-ms",
        kind: Int<0, 60_000>, default: 1_000, mode: pooled,
    }
    /// Worker threads, may exceed the core count; a validated configuration holds the resolved
    /// count, never 0.
    workers: usize {
        key: runtime.workers, flag: "workers" | "event-threads",
        kind: Workers<MAX_WORKERS>, default: 0,
    }
    /// Pin each worker to a CPU.
    pin_cpus: bool {
        key: runtime.pin_cpus, flag: "pin-cpus",
        kind: Switch, default: true,
    }
    /// Submission-queue entries per worker ring.
    ring_entries: u32 {
        key: runtime.ring_entries, flag: "ring-entries",
        kind: PowerOfTwo<64, 32_768>, default: 4096,
    }
    /// Size of each provided receive buffer.
    buffer_size: u32 {
        key: runtime.buffer_size, flag: "buffer-size",
        kind: Size<{ 4 * KIB }, MIB>, default: "16KiB",
    }
    /// Provided receive buffers per worker (not set and with more workers than cores, each gets
    /// its share of the cores' count, at least 128).
    buffer_count: u16 {
        key: runtime.buffer_count, flag: "buffer-count",
        kind: PowerOfTwo<16, 32_768>, default: 1024,
    }
    /// Unsent bytes queued for one connection above which the proxy stops reading its peer; at
    /// least buffer_size.
    send_high_water: usize {
        key: runtime.send_high_water, flag: "send-high-water",
        kind: Size<0, NO_MAX>, default: "1MiB",
    }
    /// Log level (RUST_LOG is not consulted).
    log_level: log::LevelFilter {
        key: log.level, flag: "log-level",
        kind: Level, default: log::LevelFilter::Info,
    }
    /// Where to write the summed per-worker counters as JSON, about once a second and at exit
    /// (for benchmarks).
    stats_file: Option<PathBuf> {
        key: log.stats_file, flag: "stats-file",
        kind: FilePath, default: None,
    }
    /// Account the proxy logs in to the backends with to load the users of pooled listeners and
    /// their password hashes; needs monitor.password.
    monitor_user: Option<String> {
        key: monitor.user, flag: "monitor-user",
        kind: Name, default: None, mode: pooled,
    }
    /// Password of the monitor account; needs monitor.user. Better in the file than on the
    /// command line, which other local users can see.
    monitor_password: Option<String> {
        key: monitor.password, flag: "monitor-password",
        kind: Password, default: None, mode: pooled,
    }
    /// Least time between two reloads of the backends' users, in milliseconds; a reload happens
    /// when an unknown user or a failed login appears.
    users_refresh_ms: u64 {
        key: monitor.users_refresh_ms, flag: "users-refresh-ms",
        kind: Int<100, MAX_TIMEOUT_MS>, default: 5_000, mode: pooled,
    }
    /// Lua script run on pass-through listeners with MySQL Proxy's hook API (connect_server,
    /// read_handshake, read_auth, read_auth_result, read_query, read_query_result,
    /// disconnect_client); reloaded when the file changes and on SIGHUP.
    lua_script: Option<PathBuf> {
        key: script.lua_script, flag: "lua-script" | "proxy-lua-script",
        kind: FilePath, default: None, mode: script,
    }
    /// Lua module search path (`package.path`) of scripts; unset: LUA_PATH, else LuaJIT's own,
    /// with the script's directory and ringproxy's scripts/ searched first.
    lua_path: Option<String> {
        key: script.lua_path, flag: "lua-path",
        kind: Name, default: None, mode: script,
    }
    /// Lua C module search path (`package.cpath`) of scripts; unset: LUA_CPATH, else LuaJIT's
    /// own.
    lua_cpath: Option<String> {
        key: script.lua_cpath, flag: "lua-cpath",
        kind: Name, default: None, mode: script,
    }
    /// Run each worker's scripts on a thread of its own (fed through a queue of lua_queue_depth
    /// hook calls) instead of inline at the end of the worker's loop turn.
    lua_executor_thread: bool {
        key: script.lua_executor_thread, flag: "lua-executor-thread",
        kind: Switch, default: false, mode: script,
    }
    /// Hook calls a worker may have queued for its executor; beyond it, sessions wait.
    lua_queue_depth: usize {
        key: script.lua_queue_depth, flag: "lua-queue-depth",
        kind: Int<1, 65_536>, default: 256, mode: script,
    }
    /// Lua VM instructions one hook call may run before it is stopped as runaway (the hook then
    /// fails as if it raised an error); 0 = no limit, which also lets LuaJIT compile scripts
    /// (its compiled code cannot be interrupted).
    lua_max_instructions: u64 {
        key: script.lua_max_instructions, flag: "lua-max-instructions",
        kind: Int<0, NO_MAX>, default: 10_000_000, mode: script,
    }
    /// Memory one worker's Lua VM may allocate; an allocation beyond it fails the hook call.
    lua_memory_limit: usize {
        key: script.lua_memory_limit, flag: "lua-memory-limit",
        kind: Size<{ MIB }, NO_MAX>, default: "256MiB", mode: script,
    }
}

/// Fixed-file table size one worker ring can have: the soft RLIMIT_NOFILE (the kernel refuses to
/// register more direct descriptors than that per ring), capped at 2^20.
pub fn fixed_file_slots_per_worker() -> u32 {
    let nofile = rlimit_nofile().unwrap_or(FALLBACK_NOFILE);
    // Lossless: the value is at most 2^20.
    nofile.min(MAX_FIXED_FILE_SLOTS) as u32
}

/// Soft RLIMIT_NOFILE of this process; `RLIM_INFINITY` is reported as `u64::MAX`.
fn rlimit_nofile() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` owned by this frame for the whole call;
    // getrlimit only writes into it and keeps no pointer after returning.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(u64::MAX);
    }
    Ok(limit.rlim_cur)
}

/// How a worker ring's fixed-file table is shared out: what is left for clients once the reserve
/// and the pooled backend connections are counted, and how many slots each client takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The table's size (the soft RLIMIT_NOFILE).
    pub slots_per_worker: u64,
    /// Slots kept for pooled backend connections: every worker may come to hold all of them
    /// (the pool's limits are whole-proxy), so each keeps room for them all.
    pub pool_slots: u64,
    /// [`SLOTS_PER_CLIENT`] when any pass-through listener exists, else [`SLOTS_PER_POOLED_CLIENT`].
    pub per_client: u64,
}

impl Room {
    /// The table of a worker with pass-through listeners only (the tests' arithmetic).
    #[cfg(test)]
    fn pass_through(slots_per_worker: u64) -> Room {
        Room {
            slots_per_worker,
            pool_slots: 0,
            per_client: u64::from(SLOTS_PER_CLIENT),
        }
    }

    /// Clients one worker can hold.
    pub fn per_worker(&self) -> u64 {
        self.slots_per_worker
            .saturating_sub(u64::from(RESERVED_SLOTS_PER_WORKER))
            .saturating_sub(self.pool_slots)
            / self.per_client
    }

    /// Clients `workers` workers can hold.
    pub fn clients(&self, workers: u64) -> u64 {
        workers.saturating_mul(self.per_worker())
    }

    /// Fewest workers (at least `cores`) that hold `clients` with [`SPREAD_HEADROOM_PERCENT`] of
    /// each worker's room to spare; None when even [`MAX_WORKERS`] cannot.
    fn workers_for(&self, clients: u64, cores: u64) -> Option<u64> {
        let usable = self.per_worker() * (100 - SPREAD_HEADROOM_PERCENT) / 100;
        if usable == 0 {
            return None;
        }
        let workers = clients.div_ceil(usable).max(cores);
        (workers <= MAX_WORKERS).then_some(workers)
    }

    /// The arithmetic behind [`Room::clients`], for messages.
    fn explain(&self, workers: u64) -> String {
        let pool = if self.pool_slots > 0 {
            format!(" - {} pooled backend connections", self.pool_slots)
        } else {
            String::new()
        };
        format!(
            "{workers} workers * (RLIMIT_NOFILE {} - {RESERVED_SLOTS_PER_WORKER} reserved{pool}) \
             / {} slot(s) per client = {}",
            self.slots_per_worker,
            self.per_client,
            self.clients(workers)
        )
    }
}

/// Why a configuration was refused. The Display text names the key and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("unknown key \"{key}\" in {origin} ({expected})")]
    UnknownKey {
        key: String,
        origin: String,
        expected: String,
    },
    #[error("{key}: {problem} (in {origin})")]
    WrongType {
        key: String,
        origin: String,
        problem: String,
    },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    /// The key (TOML path or command-line flag) the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::WrongType { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}

// ---- Kinds of value -------------------------------------------------------------------------

/// A kind of value: how it is written, checked and shown. `T` is the type of the [`Config`] field.
pub trait Kind<T> {
    /// The value as written in the file or given on the command line, before checking.
    type Raw: Written;
    /// What a key's declaration writes as its default.
    type Default;
    /// Placeholder of the value in `--help`.
    const VALUE_NAME: &'static str;
    fn raw_default(default: Self::Default) -> Self::Raw;
    /// The values allowed, as `--help` describes them (`None`: any value of the raw type).
    fn allowed() -> Option<String> {
        None
    }
    /// The checked value, or what is wrong with it (the caller names the key).
    fn check(raw: &Self::Raw) -> Result<T, String>;
    /// The value as TOML for the summary; `None` leaves an unset optional key out.
    fn render(value: &T) -> Option<String>;
    /// A comment for the value's summary line.
    fn comment(_value: &T) -> Option<String> {
        None
    }
    /// The value as `Config`'s `Debug` prints it.
    fn debug(value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result
    where
        T: Debug,
    {
        Debug::fmt(value, f)
    }
}

/// A [`Config`] field printed by its kind `K` (see [`Kind::debug`]).
struct Shown<'a, K, T>(&'a T, PhantomData<K>);

impl<K: Kind<T>, T: Debug> Debug for Shown<'_, K, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        K::debug(self.0, f)
    }
}

/// The raw value of kind `K` for a field of type `T`.
pub type RawOf<K, T> = <K as Kind<T>>::Raw;
/// The command-line value of kind `K` for a field of type `T`.
pub type CliOf<K, T> = <RawOf<K, T> as Written>::Cli;

/// The command-line side of a raw value: the options that set it and what their matches give.
pub trait Written: Clone + Debug + PartialEq + DeserializeOwned {
    /// The options' parsed value; its `Default` means "not given".
    type Cli: Clone + Debug + Default + PartialEq;
    /// The options of `key`, from `arg` (id, names and help already set).
    fn args(arg: Arg, key: &'static KeySpec, value_name: &'static str) -> Vec<Arg>;
    fn from_matches(matches: &ArgMatches, key: &KeySpec) -> Self::Cli;
    /// The raw value the command line gives, `None` if it gives none.
    fn from_cli(cli: &Self::Cli) -> Option<Self>;
    /// The value as `--help` shows a default (`None`: there is nothing to show).
    fn default_text(&self) -> Option<String>;
}

/// A list of `IP:PORT` socket addresses, at least one, none twice.
pub struct Addrs;
/// A list of `IP:PORT` socket addresses, possibly empty, none twice.
pub struct AddrsOrNone;
/// A name (a non-empty string), optional.
pub struct Name;
/// A password (any string, even empty), optional; `Config`'s `Debug` does not print it.
pub struct Password;
/// An IP address without a port, optional.
pub struct Ip;
/// A whole number in `MIN..=MAX`.
pub struct Int<const MIN: u64, const MAX: u64>;
/// A power of two in `MIN..=MAX`.
pub struct PowerOfTwo<const MIN: u64, const MAX: u64>;
/// A thread count up to `MAX`, where 0 means one per core (resolved by `Merged::validate`).
pub struct Workers<const MAX: u64>;
/// A size in bytes (see [`parse_size`]) in `MIN..=MAX`.
pub struct Size<const MIN: u64, const MAX: u64>;
/// A size limit: 0 (no limit) or a size in `MIN..=MAX`.
pub struct Limit<const MIN: u64, const MAX: u64>;
/// On or off: `--flag` / `--no-flag` on the command line.
pub struct Switch;
/// A log level name.
pub struct Level;
/// A file path, optional.
pub struct FilePath;

impl Kind<Vec<SocketAddr>> for Addrs {
    type Raw = AddrList;
    type Default = &'static [&'static str];
    const VALUE_NAME: &'static str = "ADDR";
    fn raw_default(default: Self::Default) -> AddrList {
        AddrList(default.iter().map(|a| a.to_string()).collect())
    }
    fn check(raw: &AddrList) -> Result<Vec<SocketAddr>, String> {
        if raw.0.is_empty() {
            return Err("at least one address is required (IP:PORT)".to_owned());
        }
        parse_addrs(&raw.0)
    }
    fn render(value: &Vec<SocketAddr>) -> Option<String> {
        Some(addrs_toml(value))
    }
}

impl Kind<Vec<SocketAddr>> for AddrsOrNone {
    type Raw = AddrList;
    type Default = &'static [&'static str];
    const VALUE_NAME: &'static str = "ADDR";
    fn raw_default(default: Self::Default) -> AddrList {
        AddrList(default.iter().map(|a| a.to_string()).collect())
    }
    fn check(raw: &AddrList) -> Result<Vec<SocketAddr>, String> {
        parse_addrs(&raw.0)
    }
    fn render(value: &Vec<SocketAddr>) -> Option<String> {
        Some(addrs_toml(value))
    }
}

impl Kind<Option<String>> for Name {
    type Raw = Option<String>;
    type Default = Option<&'static str>;
    const VALUE_NAME: &'static str = "NAME";
    fn raw_default(default: Option<&'static str>) -> Option<String> {
        default.map(str::to_owned)
    }
    fn check(raw: &Option<String>) -> Result<Option<String>, String> {
        if raw.as_deref() == Some("") {
            return Err("must not be empty".to_owned());
        }
        Ok(raw.clone())
    }
    fn render(value: &Option<String>) -> Option<String> {
        value.as_deref().map(toml_string)
    }
}

impl Kind<Option<String>> for Password {
    type Raw = Option<String>;
    type Default = Option<&'static str>;
    const VALUE_NAME: &'static str = "PASSWORD";
    fn raw_default(default: Option<&'static str>) -> Option<String> {
        default.map(str::to_owned)
    }
    fn check(raw: &Option<String>) -> Result<Option<String>, String> {
        Ok(raw.clone())
    }
    fn render(value: &Option<String>) -> Option<String> {
        value.as_deref().map(toml_string)
    }
    fn debug(value: &Option<String>, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match value {
            Some(_) => f.write_str("Some(***)"),
            None => f.write_str("None"),
        }
    }
}

impl Kind<Option<IpAddr>> for Ip {
    type Raw = Option<String>;
    type Default = Option<IpAddr>;
    const VALUE_NAME: &'static str = "IP";
    fn raw_default(default: Option<IpAddr>) -> Option<String> {
        default.map(|ip| ip.to_string())
    }
    fn check(raw: &Option<String>) -> Result<Option<IpAddr>, String> {
        let parse = |text: &String| {
            text.trim().parse().map_err(|_| {
                format!("{text:?} is not a valid IP address (expected an address, no port)")
            })
        };
        raw.as_ref().map(parse).transpose()
    }
    fn render(value: &Option<IpAddr>) -> Option<String> {
        value.map(|ip| toml_string(&ip.to_string()))
    }
}

impl<T: Num, const MIN: u64, const MAX: u64> Kind<T> for Int<MIN, MAX> {
    type Raw = u64;
    type Default = u64;
    const VALUE_NAME: &'static str = "N";
    fn raw_default(default: u64) -> u64 {
        default
    }
    fn allowed() -> Option<String> {
        range_text(MIN, MAX, number_text)
    }
    fn check(raw: &u64) -> Result<T, String> {
        if !(MIN..=MAX).contains(raw) {
            return Err(out_of_range(&raw.to_string(), MIN, MAX, number_text));
        }
        T::from_u64(*raw)
    }
    fn render(value: &T) -> Option<String> {
        Some(value.to_u64().to_string())
    }
}

impl<T: Num, const MIN: u64, const MAX: u64> Kind<T> for PowerOfTwo<MIN, MAX> {
    type Raw = u64;
    type Default = u64;
    const VALUE_NAME: &'static str = "N";
    fn raw_default(default: u64) -> u64 {
        default
    }
    fn allowed() -> Option<String> {
        Some(format!("a power of two in {MIN}..={MAX}"))
    }
    fn check(raw: &u64) -> Result<T, String> {
        if !raw.is_power_of_two() || !(MIN..=MAX).contains(raw) {
            return Err(format!(
                "{raw} is not allowed (must be a power of two in {MIN}..={MAX})"
            ));
        }
        T::from_u64(*raw)
    }
    fn render(value: &T) -> Option<String> {
        Some(value.to_u64().to_string())
    }
}

impl<T: Num, const MAX: u64> Kind<T> for Workers<MAX> {
    type Raw = u64;
    type Default = u64;
    const VALUE_NAME: &'static str = "N";
    fn raw_default(default: u64) -> u64 {
        default
    }
    fn allowed() -> Option<String> {
        Some(format!("allowed 0 = one per core, or 1..={MAX}"))
    }
    fn check(raw: &u64) -> Result<T, String> {
        if *raw > MAX {
            return Err(format!(
                "{raw} workers is too many (allowed 0 = one per core, or 1..={MAX})"
            ));
        }
        T::from_u64(*raw)
    }
    fn render(value: &T) -> Option<String> {
        Some(value.to_u64().to_string())
    }
}

impl<T: Num, const MIN: u64, const MAX: u64> Kind<T> for Size<MIN, MAX> {
    type Raw = SizeSpec;
    type Default = &'static str;
    const VALUE_NAME: &'static str = "SIZE";
    fn raw_default(default: &'static str) -> SizeSpec {
        SizeSpec::Text(default.to_owned())
    }
    fn allowed() -> Option<String> {
        range_text(MIN, MAX, format_size)
    }
    fn check(raw: &SizeSpec) -> Result<T, String> {
        let bytes = raw.resolve()?;
        if !(MIN..=MAX).contains(&bytes) {
            return Err(out_of_range(&raw.shown(), MIN, MAX, format_size));
        }
        T::from_u64(bytes)
    }
    fn render(value: &T) -> Option<String> {
        Some(size_toml(value.to_u64()))
    }
    fn comment(value: &T) -> Option<String> {
        Some(format!("{} bytes", value.to_u64()))
    }
}

impl<T: Num, const MIN: u64, const MAX: u64> Kind<T> for Limit<MIN, MAX> {
    type Raw = SizeSpec;
    type Default = &'static str;
    const VALUE_NAME: &'static str = "SIZE";
    fn raw_default(default: &'static str) -> SizeSpec {
        SizeSpec::Text(default.to_owned())
    }
    fn allowed() -> Option<String> {
        Some(format!(
            "allowed 0 = no limit, or {}..={}",
            format_size(MIN),
            format_size(MAX)
        ))
    }
    fn check(raw: &SizeSpec) -> Result<T, String> {
        let bytes = raw.resolve()?;
        if bytes != 0 && !(MIN..=MAX).contains(&bytes) {
            let allowed = <Self as Kind<T>>::allowed().unwrap_or_default();
            return Err(format!("{} is out of range ({allowed})", raw.shown()));
        }
        T::from_u64(bytes)
    }
    fn render(value: &T) -> Option<String> {
        Some(size_toml(value.to_u64()))
    }
    fn comment(value: &T) -> Option<String> {
        match value.to_u64() {
            0 => Some("no limit".to_owned()),
            bytes => Some(format!("{bytes} bytes")),
        }
    }
}

impl Kind<bool> for Switch {
    type Raw = bool;
    type Default = bool;
    const VALUE_NAME: &'static str = "";
    fn raw_default(default: bool) -> bool {
        default
    }
    fn check(raw: &bool) -> Result<bool, String> {
        Ok(*raw)
    }
    fn render(value: &bool) -> Option<String> {
        Some(value.to_string())
    }
}

impl Kind<log::LevelFilter> for Level {
    type Raw = String;
    type Default = log::LevelFilter;
    const VALUE_NAME: &'static str = "LEVEL";
    fn raw_default(default: log::LevelFilter) -> String {
        default.as_str().to_ascii_lowercase()
    }
    fn allowed() -> Option<String> {
        Some("one of error, warn, info, debug, trace, off".to_owned())
    }
    fn check(raw: &String) -> Result<log::LevelFilter, String> {
        // MySQL Proxy's names: critical, warning, message.
        let name = match raw.trim() {
            "critical" => "error",
            "warning" => "warn",
            "message" => "info",
            other => other,
        };
        name.parse().map_err(|_| {
            format!("{raw:?} is not a log level (expected error, warn, info, debug, trace or off)")
        })
    }
    fn render(value: &log::LevelFilter) -> Option<String> {
        Some(toml_string(&value.as_str().to_ascii_lowercase()))
    }
}

impl Kind<Option<PathBuf>> for FilePath {
    type Raw = Option<PathBuf>;
    type Default = Option<PathBuf>;
    const VALUE_NAME: &'static str = "FILE";
    fn raw_default(default: Option<PathBuf>) -> Option<PathBuf> {
        default
    }
    fn check(raw: &Option<PathBuf>) -> Result<Option<PathBuf>, String> {
        Ok(raw.clone())
    }
    fn render(value: &Option<PathBuf>) -> Option<String> {
        let path = value.as_ref()?;
        Some(toml_string(&path.display().to_string()))
    }
}

/// The range `MIN..=MAX` as `--help` describes it, `None` when it allows every value.
fn range_text(min: u64, max: u64, show: fn(u64) -> String) -> Option<String> {
    match (min, max) {
        (0, NO_MAX) => None,
        (_, NO_MAX) => Some(format!("at least {}", show(min))),
        _ => Some(format!("allowed {}..={}", show(min), show(max))),
    }
}

/// Why `shown` is not in `MIN..=MAX`.
fn out_of_range(shown: &str, min: u64, max: u64, show: fn(u64) -> String) -> String {
    if max == NO_MAX {
        return format!("{shown} is too small (must be at least {})", show(min));
    }
    format!(
        "{shown} is out of range (allowed {}..={})",
        show(min),
        show(max)
    )
}

fn number_text(n: u64) -> String {
    n.to_string()
}

/// A size as the summary writes it: `"64MiB"` when a binary unit divides it, else plain bytes.
fn size_toml(bytes: u64) -> String {
    let text = format_size(bytes);
    if text.ends_with("iB") {
        format!("\"{text}\"")
    } else {
        bytes.to_string()
    }
}

/// `text` as a TOML string literal.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Addresses as a TOML array of strings.
fn addrs_toml(addrs: &[SocketAddr]) -> String {
    let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn parse_addrs(list: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(list.len());
    for text in list {
        let addr: SocketAddr = text
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a valid address (expected IP:PORT)"))?;
        if out.contains(&addr) {
            return Err(format!("{addr} is listed twice"));
        }
        out.push(addr);
    }
    Ok(out)
}

/// The unsigned integer types of [`Config`] fields; values are checked as `u64` first.
pub trait Num: Copy {
    fn from_u64(n: u64) -> Result<Self, String>;
    fn to_u64(self) -> u64;
}

macro_rules! impl_num {
    ($($t:ty),+) => {$(
        impl Num for $t {
            fn from_u64(n: u64) -> Result<$t, String> {
                <$t>::try_from(n).map_err(|_| format!("{n} is too large"))
            }
            fn to_u64(self) -> u64 {
                u64::try_from(self).unwrap_or(u64::MAX)
            }
        }
    )+};
}
impl_num!(u16, u32, u64, usize);

// ---- Raw values: files and command line -----------------------------------------------------

/// A size as written: a plain integer number of bytes or a string with an optional unit suffix.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    Text(String),
}

impl SizeSpec {
    fn resolve(&self) -> Result<u64, String> {
        match self {
            SizeSpec::Bytes(n) => Ok(*n),
            SizeSpec::Text(s) => parse_size(s),
        }
    }

    fn shown(&self) -> String {
        match self {
            SizeSpec::Bytes(n) => n.to_string(),
            SizeSpec::Text(s) => format!("{s:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for SizeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"64MiB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeSpec, E> {
                Ok(SizeSpec::Bytes(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeSpec, E> {
                u64::try_from(v)
                    .map(SizeSpec::Bytes)
                    .map_err(|_| E::custom(format!("a size cannot be negative, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeSpec, E> {
                Ok(SizeSpec::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Parses `"64MiB"`, `"16 KiB"`, `"4096"`, `"4096B"`, `"64M"`, `"1g"`: an integer followed by an
/// optional unit. K/M/G mean KiB/MiB/GiB (as in MySQL's own option files); units are
/// case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    let bad = || {
        format!(
            "{text:?} is not a valid size (expected a number of bytes, optionally followed by \
             B, KiB, MiB, GiB, K, M or G)"
        )
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        _ => return Err(bad()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Renders a byte count in the largest binary unit that divides it exactly (`"64MiB"`, `"1000B"`).
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// One address or a list of addresses, as written in the file (parsed later, so errors name the key).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AddrList(pub Vec<String>);

impl<'de> Deserialize<'de> for AddrList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AddrVisitor;
        impl<'de> Visitor<'de> for AddrVisitor {
            type Value = AddrList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of \"IP:PORT\" strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AddrList, E> {
                Ok(AddrList(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AddrList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(AddrList(out))
            }
        }
        deserializer.deserialize_any(AddrVisitor)
    }
}

impl Written for AddrList {
    type Cli = Vec<String>;
    fn args(arg: Arg, _key: &'static KeySpec, value_name: &'static str) -> Vec<Arg> {
        vec![arg
            .value_name(value_name)
            .action(ArgAction::Append)
            .value_delimiter(',')]
    }
    fn from_matches(matches: &ArgMatches, key: &KeySpec) -> Vec<String> {
        let given = matches.get_many::<String>(key.long);
        given.map(|v| v.cloned().collect()).unwrap_or_default()
    }
    fn from_cli(cli: &Vec<String>) -> Option<AddrList> {
        (!cli.is_empty()).then(|| AddrList(cli.clone()))
    }
    fn default_text(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.0.join(", "))
    }
}

impl Written for u64 {
    type Cli = Option<u64>;
    fn args(arg: Arg, _key: &'static KeySpec, value_name: &'static str) -> Vec<Arg> {
        vec![arg.value_name(value_name).value_parser(value_parser!(u64))]
    }
    fn from_matches(matches: &ArgMatches, key: &KeySpec) -> Option<u64> {
        matches.get_one::<u64>(key.long).copied()
    }
    fn from_cli(cli: &Option<u64>) -> Option<u64> {
        *cli
    }
    fn default_text(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Written for SizeSpec {
    type Cli = Option<String>;
    fn args(arg: Arg, _key: &'static KeySpec, value_name: &'static str) -> Vec<Arg> {
        vec![arg.value_name(value_name)]
    }
    fn from_matches(matches: &ArgMatches, key: &KeySpec) -> Option<String> {
        matches.get_one::<String>(key.long).cloned()
    }
    fn from_cli(cli: &Option<String>) -> Option<SizeSpec> {
        cli.clone().map(SizeSpec::Text)
    }
    fn default_text(&self) -> Option<String> {
        match self {
            SizeSpec::Bytes(n) => Some(format_size(*n)),
            SizeSpec::Text(text) => Some(text.clone()),
        }
    }
}

/// On/off keys: `--long` sets true, `--no-long` false; the last one given wins.
impl Written for bool {
    type Cli = Option<bool>;
    fn args(arg: Arg, key: &'static KeySpec, _value_name: &'static str) -> Vec<Arg> {
        let negation = Arg::new(key.negation)
            .long(key.negation)
            .action(ArgAction::SetTrue)
            .overrides_with(key.long)
            .help(format!("Opposite of {}", key.flag));
        let arg = arg.action(ArgAction::SetTrue).overrides_with(key.negation);
        vec![arg, negation]
    }
    fn from_matches(matches: &ArgMatches, key: &KeySpec) -> Option<bool> {
        if matches.get_flag(key.long) {
            Some(true)
        } else if matches.get_flag(key.negation) {
            Some(false)
        } else {
            None
        }
    }
    fn from_cli(cli: &Option<bool>) -> Option<bool> {
        *cli
    }
    fn default_text(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Written for String {
    type Cli = Option<String>;
    fn args(arg: Arg, _key: &'static KeySpec, value_name: &'static str) -> Vec<Arg> {
        vec![arg.value_name(value_name)]
    }
    fn from_matches(matches: &ArgMatches, key: &KeySpec) -> Option<String> {
        matches.get_one::<String>(key.long).cloned()
    }
    fn from_cli(cli: &Option<String>) -> Option<String> {
        cli.clone()
    }
    fn default_text(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl Written for Option<String> {
    type Cli = Option<String>;
    fn args(arg: Arg, _key: &'static KeySpec, value_name: &'static str) -> Vec<Arg> {
        vec![arg.value_name(value_name)]
    }
    fn from_matches(matches: &ArgMatches, key: &KeySpec) -> Option<String> {
        matches.get_one::<String>(key.long).cloned()
    }
    fn from_cli(cli: &Option<String>) -> Option<Option<String>> {
        cli.clone().map(Some)
    }
    fn default_text(&self) -> Option<String> {
        self.clone()
    }
}

impl Written for Option<PathBuf> {
    type Cli = Option<PathBuf>;
    fn args(arg: Arg, _key: &'static KeySpec, value_name: &'static str) -> Vec<Arg> {
        vec![arg
            .value_name(value_name)
            .value_parser(value_parser!(PathBuf))]
    }
    fn from_matches(matches: &ArgMatches, key: &KeySpec) -> Option<PathBuf> {
        matches.get_one::<PathBuf>(key.long).cloned()
    }
    fn from_cli(cli: &Option<PathBuf>) -> Option<Option<PathBuf>> {
        cli.clone().map(Some)
    }
    fn default_text(&self) -> Option<String> {
        self.as_ref().map(|path| path.display().to_string())
    }
}

// ---- The command line -----------------------------------------------------------------------

const CONFIG_ARG: &str = "config";
const CHECK_CONFIG_ARG: &str = "check-config";

impl CommandFactory for Cli {
    fn command() -> Command {
        Command::new("ringproxy")
            .version(env!("CARGO_PKG_VERSION"))
            // A later option overrides an earlier one of the same key (wrappers add theirs last).
            .args_override_self(true)
            .about("A MySQL-protocol proxy for Linux on io_uring")
            .long_about(
                "A MySQL-protocol proxy for Linux on io_uring.\n\n\
                 Settings are read from the TOML file given by --config (alias --defaults-file) \
                 first; command-line options then override it key by key (and a later option an \
                 earlier one). Address lists accept the option repeated and/or comma-separated \
                 values. Sizes accept a number of \
                 bytes or a number with a B, KiB, MiB, GiB, K, M or G suffix (K = KiB, M = MiB, \
                 G = GiB).",
            )
            .arg(
                Arg::new(CONFIG_ARG)
                    .long(CONFIG_ARG)
                    .visible_alias("defaults-file")
                    .value_name("FILE")
                    .value_parser(value_parser!(PathBuf))
                    .help(
                        "TOML configuration file, read before the command-line options are applied",
                    ),
            )
            .args(key_args())
            .arg(
                Arg::new(CHECK_CONFIG_ARG)
                    .long(CHECK_CONFIG_ARG)
                    .action(ArgAction::SetTrue)
                    .help("Validate the configuration, print the effective settings and exit"),
            )
            .args(Launch::args())
    }

    fn command_for_update() -> Command {
        Cli::command()
    }
}

impl Parser for Cli {}

/// The options of `key`: its names and help (with the allowed values and the default), then what
/// its kind adds.
fn args_for<K: Kind<T>, T>(key: &'static KeySpec, default: K::Default) -> Vec<Arg> {
    let mut help = key.help.trim().trim_end_matches('.').to_owned();
    if let Some(allowed) = K::allowed() {
        help += &format!(" ({allowed})");
    }
    if let Some(default) = K::raw_default(default).default_text() {
        help += &format!(" [default: {default}]");
    }
    let mut arg = Arg::new(key.long).long(key.long).help(help);
    if let Some(alias) = key.alias {
        arg = arg.visible_alias(alias);
    }
    <K::Raw as Written>::args(arg, key, K::VALUE_NAME)
}

// ---- How the process runs --------------------------------------------------------------------

/// The process options MySQL Proxy users' wrappers pass (not configuration keys: they say how
/// the process runs, not what the proxy does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// Write the process id here at start (removed at exit).
    pub pid_file: Option<PathBuf>,
    /// Detach from the terminal and run in the background.
    pub daemon: bool,
    /// Directory relative paths are resolved against (the process changes to it first).
    pub basedir: Option<PathBuf>,
    /// Log to this file (appended) instead of standard error.
    pub log_file: Option<PathBuf>,
    /// Run under a supervisor process that restarts the proxy when it dies abnormally.
    pub keepalive: bool,
}

impl Launch {
    fn args() -> Vec<Arg> {
        let path = |name: &'static str, help: &'static str| {
            Arg::new(name)
                .long(name)
                .value_name("PATH")
                .value_parser(value_parser!(PathBuf))
                .help(help)
        };
        let flag = |name: &'static str, help: &'static str| {
            Arg::new(name)
                .long(name)
                .action(ArgAction::SetTrue)
                .help(help)
        };
        vec![
            path("pid-file", "Write the process id to this file (removed at exit)"),
            flag("daemon", "Detach from the terminal and run in the background"),
            path("basedir", "Resolve relative paths against this directory (changed to at start)"),
            path("log-file", "Log to this file (appended) instead of standard error"),
            flag("keepalive", "Restart the proxy when it dies abnormally (a supervisor process stays)"),
            path("plugin-dir", "Accepted for MySQL Proxy's wrappers: the proxy plugin is built in"),
            Arg::new("plugins")
                .long("plugins")
                .value_name("LIST")
                .action(ArgAction::Append)
                .help("Accepted for MySQL Proxy's wrappers when it names only `proxy` (built in); admin, debug and replicant are not available"),
            flag("proxy-skip-profiling", "Accepted for MySQL Proxy's wrappers: ringproxy keeps no per-query profile to skip"),
            flag("no-proxy", "MySQL Proxy's option to run without the proxy module: refused, ringproxy has no other module to run"),
        ]
    }

    fn from_matches(m: &ArgMatches) -> Result<Launch, clap::Error> {
        let refuse = |msg: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, msg);
        if m.get_flag("no-proxy") {
            return Err(refuse(
                "--no-proxy: ringproxy has no module to run without the proxy (no admin, debug or replicant plugin)\n".into(),
            ));
        }
        let plugins = m.get_many::<String>("plugins").into_iter().flatten();
        for name in plugins.flat_map(|list| list.split(',')).map(str::trim) {
            if !name.is_empty() && name != "proxy" {
                return Err(refuse(format!(
                    "--plugins: only the proxy plugin exists in ringproxy (built in); {name:?} is not available\n"
                )));
            }
        }
        Ok(Launch {
            pid_file: m.get_one::<PathBuf>("pid-file").cloned(),
            daemon: m.get_flag("daemon"),
            basedir: m.get_one::<PathBuf>("basedir").cloned(),
            log_file: m.get_one::<PathBuf>("log-file").cloned(),
            keepalive: m.get_flag("keepalive"),
        })
    }
}

// ---- The file -------------------------------------------------------------------------------

impl FileConfig {
    /// Parses the text of a configuration file; `origin` (usually the file's path) appears in errors.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.to_owned(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        let mut file = FileConfig::default();
        for (section, value) in table {
            if section == USERS {
                file.users = parse_users(value, origin)?;
                continue;
            }
            for (name, value) in section_entries(&section, value, origin)? {
                file.set((&section, &name), value, origin)?;
            }
        }
        Ok(file)
    }

    /// Reads and parses a configuration file.
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        FileConfig::parse(&text, &shown)
    }
}

/// The entries of the top-level table `section`; unknown tables and non-tables are refused.
fn section_entries(
    section: &str,
    value: toml::Value,
    origin: &str,
) -> Result<toml::Table, ConfigError> {
    let mut sections: Vec<&str> = KEYS.iter().map(|key| key.section).collect();
    sections.dedup();
    if !sections.contains(&section) {
        sections.push(USERS);
        return Err(ConfigError::UnknownKey {
            key: section.to_owned(),
            origin: origin.to_owned(),
            expected: one_of(sections),
        });
    }
    match value {
        toml::Value::Table(entries) => Ok(entries),
        other => Err(ConfigError::WrongType {
            key: section.to_owned(),
            origin: origin.to_owned(),
            problem: format!(
                "invalid type: {}, expected a [{section}] table",
                other.type_str()
            ),
        }),
    }
}

fn unknown_key(section: &str, name: &str, origin: &str) -> ConfigError {
    let names = KEYS.iter().filter(|key| key.section == section);
    ConfigError::UnknownKey {
        key: format!("{section}.{name}"),
        origin: origin.to_owned(),
        expected: one_of(names.map(|key| key.name).collect()),
    }
}

fn one_of(names: Vec<&str>) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    format!("expected one of {}", quoted.join(", "))
}

/// The file's value of the key at `path`, or an error naming the key and what was expected.
fn read_value<R: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    origin: &str,
) -> Result<R, ConfigError> {
    R::deserialize(value).map_err(|e| ConfigError::WrongType {
        key: path.to_owned(),
        origin: origin.to_owned(),
        problem: e
            .to_string()
            .trim_end()
            .replace("expected u64", "expected a non-negative integer")
            .replace("expected a boolean", "expected true or false"),
    })
}

// ---- Users of pooled listeners --------------------------------------------------------------

/// The top-level name of the `[[users]]` array of tables.
const USERS: &str = "users";

/// The keys a `[[users]]` table may hold.
const USER_KEYS: &[&str] = &[
    "name",
    "password",
    "default_schema",
    "max_connections",
    "active",
    "default_hostgroup",
];

/// Hex digits of a mysql_native_password hash (after its `*`).
const NATIVE_HASH_HEX_DIGITS: usize = 40;

/// How a caching_sha2_password hash starts (`mysql.user.authentication_string` of MySQL 8).
const SHA2_CRYPT_PREFIX: &str = "$A$";

/// Bytes of a caching_sha2_password hash: `$A$`, 3 hex digits, `$`, 20-byte salt, 43-char digest.
const SHA2_CRYPT_BYTES: usize = 3 + 3 + 1 + 20 + 43;

/// A user of the pooled listeners, from a `[[users]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// The account name clients log in with (`name`, required, not empty, unique).
    pub name: String,
    /// The account's password (`password`, required): the cleartext, a mysql_native_password
    /// hash or a caching_sha2_password hash (see [`Secret::parse`]).
    pub secret: Secret,
    /// Schema selected at login when the client names none (`default_schema`).
    pub default_schema: Option<String>,
    /// Client connections of this user at once (`max_connections`); 0 = unlimited.
    pub max_connections: usize,
    /// Whether the user may log in (`active`, default true).
    pub active: bool,
    /// The hostgroup the user's queries go to (`default_hostgroup`, default 0). Only hostgroup 0,
    /// all of `proxy.backends`, exists yet: any other value is refused.
    pub default_hostgroup: u32,
}

/// A user's password as the configuration gives it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The password itself.
    Cleartext(String),
    /// mysql_native_password's stored hash, SHA1(SHA1(password)), as MySQL prints it after the
    /// `*` (`SELECT PASSWORD('...')`, `mysql.user.authentication_string`).
    NativeHash([u8; 20]),
    /// caching_sha2_password's stored hash as MySQL 8 keeps it in
    /// `mysql.user.authentication_string`: `$A$`, 3 hex digits (rounds / 1000), `$`, a 20-byte
    /// salt, the 43-character SHA256-crypt digest. The salt may hold any character but must be
    /// valid UTF-8 to be written in TOML (escapes such as `\u0001` or `\"` are fine there).
    Sha2Crypt(String),
}

impl Secret {
    /// Reads a password as written: `*` followed by 40 hex digits (any case) is a
    /// mysql_native_password hash; `$A$` followed by the rest of a caching_sha2_password hash
    /// (70 bytes in all) is that hash; any other text is the cleartext password (the empty one
    /// included). A text starting with `*` or `$A$` that is not such a hash is refused: a
    /// cleartext password cannot start with either.
    pub fn parse(text: &str) -> Result<Secret, String> {
        if text.starts_with(SHA2_CRYPT_PREFIX) {
            return Secret::parse_sha2_crypt(text);
        }
        let Some(hex) = text.strip_prefix('*') else {
            return Ok(Secret::Cleartext(text.to_owned()));
        };
        let not_a_hash =
            "starts with \"*\" but is not a mysql_native_password hash (\"*\" followed \
                          by 40 hex digits, as MySQL prints it; a cleartext password cannot start \
                          with \"*\")";
        // The text is not echoed: it may be a cleartext password typed in the wrong place.
        let count = hex.chars().count();
        if count != NATIVE_HASH_HEX_DIGITS {
            return Err(format!(
                "{not_a_hash}: {count} characters follow the \"*\", not {NATIVE_HASH_HEX_DIGITS}"
            ));
        }
        if let Some(at) = hex.chars().position(|c| !c.is_ascii_hexdigit()) {
            return Err(format!(
                "{not_a_hash}: character {} after the \"*\" is not a hex digit",
                at + 1
            ));
        }
        // Every character is an ASCII hex digit and there are 40 (checked above).
        let hash = crate::protocol::hex::decode(hex.as_bytes())
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| format!("{not_a_hash}: not 40 hex digits"))?;
        Ok(Secret::NativeHash(hash))
    }

    /// A text starting with `$A$`: a caching_sha2_password hash, or refused (not echoed).
    fn parse_sha2_crypt(text: &str) -> Result<Secret, String> {
        let not_a_hash = "starts with \"$A$\" but is not a caching_sha2_password hash (\"$A$\", \
                          3 hex digits, \"$\", a 20-byte salt and a 43-character digest, as \
                          mysql.user.authentication_string holds it; a cleartext password cannot \
                          start with \"$A$\")";
        let len = text.len();
        if len != SHA2_CRYPT_BYTES {
            return Err(format!(
                "{not_a_hash}: it is {len} bytes long, not {SHA2_CRYPT_BYTES}"
            ));
        }
        match Stored::from_mysql_user("caching_sha2_password", text.as_bytes()) {
            Some(Stored::Sha256Crypt(_)) => Ok(Secret::Sha2Crypt(text.to_owned())),
            _ => Err(format!(
                "{not_a_hash}: the 3 characters after \"$A$\" must be hex digits (not 000) \
                 followed by \"$\""
            )),
        }
    }

    /// The password as a configuration file writes it: the cleartext, `*` and the native hash
    /// in upper-case hex (as MySQL prints it), or the caching_sha2_password hash as it is.
    /// [`Secret::parse`] reads it back to the same value.
    pub fn as_written(&self) -> String {
        match self {
            Secret::Cleartext(text) => text.clone(),
            Secret::NativeHash(hash) => format!("*{}", hex_upper(hash)),
            Secret::Sha2Crypt(hash) => hash.clone(),
        }
    }

    /// The credential the proxy checks a client's login against.
    pub fn to_stored(&self) -> Stored {
        match self {
            Secret::Cleartext(text) => Stored::Cleartext(text.as_bytes().to_vec()),
            Secret::NativeHash(hash) => Stored::NativeHash(*hash),
            Secret::Sha2Crypt(hash) => Stored::Sha256Crypt(hash.clone()),
        }
    }
}

/// Never the password: `Cleartext(***)`, the native hash's first two bytes
/// (`NativeHash(*2470…)`), or the caching_sha2 hash's rounds, without salt or digest
/// (`Sha2Crypt($A$005$…)`).
impl Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Cleartext(_) => f.write_str("Cleartext(***)"),
            Secret::NativeHash(hash) => write!(f, "NativeHash(*{}…)", hex_upper(&hash[..2])),
            Secret::Sha2Crypt(hash) => write!(f, "Sha2Crypt({}…)", hash.get(..7).unwrap_or("")),
        }
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    crate::protocol::hex::encode_upper_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The `[[users]]` array of tables: every user checked, names unique.
fn parse_users(value: toml::Value, origin: &str) -> Result<Vec<UserConfig>, ConfigError> {
    let toml::Value::Array(entries) = value else {
        return Err(ConfigError::WrongType {
            key: USERS.to_owned(),
            origin: origin.to_owned(),
            problem: format!(
                "invalid type: {}, expected an array of [[users]] tables",
                value.type_str()
            ),
        });
    };
    let mut users: Vec<UserConfig> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let path = format!("{USERS}[{index}]");
        let user = UserConfig::from_toml(entry, &path, origin)?;
        if let Some(first) = users.iter().position(|u| u.name == user.name) {
            return Err(ConfigError::Invalid {
                key: format!("{path}.name"),
                problem: format!(
                    "{:?} is already the name of {USERS}[{first}]; user names must be unique",
                    user.name
                ),
            });
        }
        users.push(user);
    }
    Ok(users)
}

impl UserConfig {
    /// One `[[users]]` table; `path` (`users[2]`) names it in errors.
    fn from_toml(value: toml::Value, path: &str, origin: &str) -> Result<UserConfig, ConfigError> {
        let toml::Value::Table(entries) = value else {
            return Err(ConfigError::WrongType {
                key: path.to_owned(),
                origin: origin.to_owned(),
                problem: format!(
                    "invalid type: {}, expected a [[users]] table",
                    value.type_str()
                ),
            });
        };
        let (mut name, mut password, mut default_schema) = (None, None, None);
        let (mut max_connections, mut active, mut default_hostgroup) = (0u64, true, 0u64);
        for (key, value) in entries {
            let at = format!("{path}.{key}");
            match key.as_str() {
                "name" => name = Some(read_value::<String>(value, &at, origin)?),
                "password" => password = Some(read_value::<String>(value, &at, origin)?),
                "default_schema" => {
                    default_schema = Some(read_value::<String>(value, &at, origin)?)
                }
                "max_connections" => max_connections = read_value::<u64>(value, &at, origin)?,
                "active" => active = read_value::<bool>(value, &at, origin)?,
                "default_hostgroup" => default_hostgroup = read_value::<u64>(value, &at, origin)?,
                _ => {
                    return Err(ConfigError::UnknownKey {
                        key: at,
                        origin: origin.to_owned(),
                        expected: one_of(USER_KEYS.to_vec()),
                    })
                }
            }
        }
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            key: format!("{path}.{key}"),
            problem,
        };
        let name =
            name.ok_or_else(|| invalid("name", "missing: every user needs a name".into()))?;
        if name.is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        let password = password.ok_or_else(|| {
            invalid(
                "password",
                format!(
                    "missing: user {name:?} needs a password (the cleartext, a \
                     mysql_native_password hash: \"*\" followed by 40 hex digits, or a \
                     caching_sha2_password hash starting with \"$A$\")"
                ),
            )
        })?;
        let secret = Secret::parse(&password).map_err(|problem| invalid("password", problem))?;
        if default_schema.as_deref() == Some("") {
            return Err(invalid(
                "default_schema",
                "must not be empty (leave it out for none)".into(),
            ));
        }
        if default_hostgroup != 0 {
            return Err(invalid(
                "default_hostgroup",
                format!(
                    "{default_hostgroup} is not a hostgroup: only hostgroup 0 (all backends, \
                     proxy.backends) exists yet"
                ),
            ));
        }
        Ok(UserConfig {
            name,
            secret,
            default_schema,
            max_connections: to_usize(max_connections),
            active,
            default_hostgroup: 0,
        })
    }

    /// The user as a `[[users]]` table (after a blank line), which [`parse_users`] reads back to
    /// the same value.
    fn summary(&self) -> String {
        let mut out = format!("\n[[{USERS}]]\nname = {}\n", toml_string(&self.name));
        out += &format!("password = {}\n", toml_string(&self.secret.as_written()));
        if let Some(schema) = &self.default_schema {
            out += &format!("default_schema = {}\n", toml_string(schema));
        }
        out += &format!("max_connections = {}\n", self.max_connections);
        out += &format!("active = {}\n", self.active);
        out += &format!("default_hostgroup = {}\n", self.default_hostgroup);
        out
    }
}

// ---- Layering and validation ----------------------------------------------------------------

/// Where a merged value came from; decides how errors name the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Default,
    File,
    Cli,
}

/// A merged, not yet validated value, where it came from, and its key.
#[derive(Debug, Clone)]
struct Layered<R> {
    value: R,
    origin: Origin,
    key: &'static KeySpec,
}

impl<R> Layered<R> {
    /// The command line's value if given, else the file's, else the default.
    fn pick(key: &'static KeySpec, default: R, file: Option<R>, cli: Option<R>) -> Layered<R> {
        let (value, origin) = match (cli, file) {
            (Some(value), _) => (value, Origin::Cli),
            (None, Some(value)) => (value, Origin::File),
            (None, None) => (default, Origin::Default),
        };
        Layered { value, origin, key }
    }

    /// The key as the user set it: its flag for a command-line value, else its TOML path.
    fn name(&self) -> &'static str {
        match self.origin {
            Origin::Cli => self.key.flag,
            Origin::Default | Origin::File => self.key.path,
        }
    }

    fn invalid(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.name().to_owned(),
            problem: problem.into(),
        }
    }

    /// The value checked by its kind `K`.
    fn check<K: Kind<T, Raw = R>, T>(&self) -> Result<T, ConfigError> {
        K::check(&self.value).map_err(|problem| self.invalid(problem))
    }
}

/// Facts about the machine that validation depends on (injected so tests are deterministic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// Cores available to this process (what `workers = 0` resolves to).
    pub cores: u64,
    /// Fixed-file slots per worker ring, see [`fixed_file_slots_per_worker`].
    pub slots_per_worker: u64,
}

impl Host {
    /// The machine this process runs on.
    pub fn current() -> Host {
        Host {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            slots_per_worker: u64::from(fixed_file_slots_per_worker()),
        }
    }
}

fn to_usize(n: u64) -> usize {
    // ringproxy only builds for 64-bit Linux targets, where usize is 64 bits wide.
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Merged {
    /// Every key by its kind, then what depends on the host or on several keys.
    fn validate(self, host: Host) -> Result<Config, ConfigError> {
        let mut config = self.check_each()?;
        config.listen = self.check_listeners(&config)?;
        let room = config.room(host.slots_per_worker);
        config.workers = self.resolve_workers(config.workers, host, room)?;
        config.max_connections = self.connection_limit(config.workers, room)?;
        config.buffer_count = self.buffers_per_worker(config.buffer_count, config.workers, host);
        self.check_send_high_water(&config)?;
        self.check_backend_handshake(&config)?;
        self.check_monitor_account(&config)?;
        Ok(config)
    }

    /// The pass-through listeners: none by default once pooled ones are set. Some listener, of
    /// either kind, is required, and an address is one or the other.
    fn check_listeners(&self, config: &Config) -> Result<Vec<SocketAddr>, ConfigError> {
        let (listen, pooled) = (&self.listen, &self.pooled_listen);
        if listen.origin == Origin::Default && !config.pooled_listen.is_empty() {
            return Ok(Vec::new());
        }
        if config.listen.is_empty() && config.pooled_listen.is_empty() {
            return Err(listen.invalid(format!(
                "at least one address is required (IP:PORT), here or in {}: there is nowhere to \
                 accept clients",
                pooled.name()
            )));
        }
        if let Some(addr) = config
            .pooled_listen
            .iter()
            .find(|a| config.listen.contains(a))
        {
            return Err(pooled.invalid(format!(
                "{addr} is also in {}; an address accepts either pass-through or pooled clients",
                listen.name()
            )));
        }
        Ok(config.listen.clone())
    }

    /// The monitor account needs both its name and its password.
    fn check_monitor_account(&self, config: &Config) -> Result<(), ConfigError> {
        let (user, password) = (&self.monitor_user, &self.monitor_password);
        match (&config.monitor_user, &config.monitor_password) {
            (Some(_), None) => Err(password.invalid(format!(
                "missing: {} is set, and the monitor account needs its password too",
                user.name()
            ))),
            (None, Some(_)) => Err(user.invalid(format!(
                "missing: {} is set, and the monitor account needs its user name too",
                password.name()
            ))),
            _ => Ok(()),
        }
    }

    /// `workers = 0` means one worker per core, or more when a `max_connections` that was chosen
    /// needs more fixed-file tables than the cores have (each worker ring has its own table, capped
    /// at RLIMIT_NOFILE slots).
    fn resolve_workers(
        &self,
        workers: usize,
        host: Host,
        room: Room,
    ) -> Result<usize, ConfigError> {
        if workers != 0 {
            return Ok(workers);
        }
        let cores = host.cores.max(1);
        if cores > MAX_WORKERS {
            return Err(self.workers.invalid(format!(
                "{cores} workers is too many (allowed 0 = one per core, or 1..={MAX_WORKERS}); \
                 this host has {cores} cores, so set workers explicitly"
            )));
        }
        if self.max_connections.origin == Origin::Default {
            return Ok(to_usize(cores));
        }
        let clients = self.max_connections.value;
        match room.workers_for(clients, cores) {
            Some(workers) => Ok(to_usize(workers)),
            None => Err(self.max_connections.invalid(format!(
                "{clients} is more than {MAX_WORKERS} workers can hold: {}",
                room.explain(MAX_WORKERS)
            ))),
        }
    }

    /// The client limit. The built-in default adapts to what `workers` can hold on this host;
    /// only a value the user chose is refused when it is impossible.
    fn connection_limit(&self, workers: usize, room: Room) -> Result<usize, ConfigError> {
        let workers = workers.to_u64();
        let ceiling = room.clients(workers);
        let limit = match self.max_connections.origin {
            Origin::Default => self.max_connections.value.min(ceiling).max(1),
            Origin::File | Origin::Cli => self.max_connections.value,
        };
        if limit <= ceiling {
            return Ok(to_usize(limit));
        }
        Err(self.max_connections.invalid(format!(
            "{limit} is more than {workers} worker(s) can hold: every pass-through client needs \
             {SLOTS_PER_CLIENT} slots (client socket + backend socket) and every pooled client \
             {SLOTS_PER_POOLED_CLIENT} in its worker ring's fixed-file table, the kernel caps each \
             table at RLIMIT_NOFILE, so the ceiling is {}; raise RLIMIT_NOFILE (ulimit -n), add \
             workers (workers = 0 adds them for a max_connections you set), or lower \
             max_connections",
            room.explain(workers)
        )))
    }

    /// The default receive-buffer count is per core: with more workers than cores (added for a
    /// large `max_connections`) each worker gets its share of the cores' buffers, rounded down to
    /// a power of two but never below [`MIN_SHARED_BUFFERS`]; a count the user chose stays.
    fn buffers_per_worker(&self, count: u16, workers: usize, host: Host) -> u16 {
        let workers = workers.to_u64();
        if self.buffer_count.origin != Origin::Default || workers <= host.cores {
            return count;
        }
        let share = u64::from(count) * host.cores.max(1) / workers;
        let pow2 = if share == 0 { 1 } else { 1u64 << share.ilog2() };
        // Lossless: at most `count`, a u16.
        pow2.max(MIN_SHARED_BUFFERS).min(u64::from(count)) as u16
    }

    /// One full receive buffer must always fit under the high-water mark.
    fn check_send_high_water(&self, config: &Config) -> Result<(), ConfigError> {
        let buffer_size = u64::from(config.buffer_size);
        if config.send_high_water.to_u64() >= buffer_size {
            return Ok(());
        }
        Err(self.send_high_water.invalid(format!(
            "{} is smaller than the receive buffer size ({}); it must be at least buffer_size so \
             one full receive can always be queued",
            self.send_high_water.value.shown(),
            format_size(buffer_size)
        )))
    }

    /// A prewarmed backend connection waits in its handshake, so it must be retired (at
    /// `prewarm_max_age_ms`) before the backend handshake times out.
    fn check_backend_handshake(&self, config: &Config) -> Result<(), ConfigError> {
        let timeout = config.backend_handshake_timeout_ms;
        let max_age = config.prewarm_max_age_ms;
        if timeout > max_age {
            return Ok(());
        }
        let (timeout_key, age_key) = (&self.backend_handshake_timeout_ms, &self.prewarm_max_age_ms);
        let why = "a prewarmed backend connection must be retired before its handshake times out";
        // Blame the key the user set: the timeout, unless only the age was set.
        if timeout_key.origin == Origin::Default && age_key.origin != Origin::Default {
            return Err(age_key.invalid(format!(
                "{max_age} is not below {} ({timeout}); {why}",
                timeout_key.name()
            )));
        }
        Err(timeout_key.invalid(format!(
            "{timeout} is not above {} ({max_age}); {why}",
            age_key.name()
        )))
    }
}

// ---- The configuration ----------------------------------------------------------------------

/// One summary line before notes: a key, its value as TOML (`None`: unset), its kind's comment,
/// and its default as TOML (`None`: none).
struct Rendered {
    key: &'static KeySpec,
    value: Option<String>,
    comment: Option<String>,
    default: Option<String>,
}

impl Config {
    /// The whole chassis: reads `--config` if given, lays the command-line options over it, and
    /// validates the result against this machine.
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Config::from_layers(file, cli, Host::current())
    }

    /// Parses and validates a configuration file's text with no command-line overrides.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(text, "the configuration text")?;
        Config::from_layers(file, &Cli::default(), Host::current())
    }

    /// Lays `cli` over `file` and validates the result for `host`.
    pub fn from_layers(file: FileConfig, cli: &Cli, host: Host) -> Result<Config, ConfigError> {
        Merged::new(file, cli).validate(host)
    }

    /// How each worker's fixed-file table of `slots_per_worker` slots is shared out.
    pub fn room(&self, slots_per_worker: u64) -> Room {
        let free = slots_per_worker.saturating_sub(u64::from(RESERVED_SLOTS_PER_WORKER));
        let servers = (self.backends.len() + self.read_only_backends.len()) as u64;
        let pool_slots = if self.pooled_mode() {
            // At most half the table: a larger pool than that never fits one worker anyway.
            (self.max_backend_connections as u64 * servers).min(free / 2)
        } else {
            0
        };
        let per_client = if self.listen.is_empty() {
            SLOTS_PER_POOLED_CLIENT
        } else {
            SLOTS_PER_CLIENT
        };
        Room {
            slots_per_worker,
            pool_slots,
            per_client: u64::from(per_client),
        }
    }

    /// Whether pooled listeners are configured.
    pub fn pooled_mode(&self) -> bool {
        !self.pooled_listen.is_empty()
    }

    /// Whether the keys of `mode` are in use.
    pub fn mode_on(&self, mode: Mode) -> bool {
        match mode {
            Mode::Any => true,
            Mode::Pooled => self.pooled_mode(),
            Mode::Script => self.lua_script.is_some(),
        }
    }

    /// A summary of the effective configuration, one `section.key = value` line per key (pooled
    /// mode's keys only in pooled mode or when not at their default; one screen without them),
    /// then the `[[users]]` tables. It is itself a valid configuration file: feeding it back
    /// through `--config` yields the same [`Config`].
    pub fn summary(&self) -> String {
        let host = Host::current();
        let mut out = String::from("# ringproxy effective configuration\n");
        for Rendered {
            key,
            value,
            comment,
            default,
        } in self.rendered()
        {
            let Some(value) = value else { continue };
            if !self.mode_on(key.mode) && Some(&value) == default.as_ref() {
                continue;
            }
            out += &format!("{} = {value}", key.path);
            let notes: Vec<String> = comment.into_iter().chain(self.note(key, host)).collect();
            if !notes.is_empty() {
                out += &format!("  # {}", notes.join("; "));
            }
            out.push('\n');
        }
        for user in &self.users {
            out += &user.summary();
        }
        out
    }

    /// What the summary adds about `key` beyond its value: what the host made of it.
    fn note(&self, key: &KeySpec, host: Host) -> Option<String> {
        let workers = self.workers.to_u64();
        if key == &keys::max_connections {
            Some(format!(
                "ceiling {}",
                self.room(host.slots_per_worker).explain(workers)
            ))
        } else if key == &keys::workers {
            let cores = host.cores;
            Some(if workers > cores {
                format!(
                    "{cores} core(s) available; each worker ring's fixed-file table holds {} \
                     clients",
                    self.room(host.slots_per_worker).per_worker()
                )
            } else {
                format!("{cores} core(s) available")
            })
        } else if key == &keys::buffer_count {
            let bytes = u64::from(self.buffer_size) * u64::from(self.buffer_count);
            Some(format!(
                "{} per worker in receive buffers",
                format_size(bytes)
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const HOST: Host = Host {
        cores: 2,
        slots_per_worker: 20_000,
    };

    fn cli(args: &[&str]) -> Cli {
        let mut argv = vec!["ringproxy"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("command line should parse")
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text, "test.toml").expect("file should parse")
    }

    fn build(text: &str, args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_layers(file(text), &cli(args), HOST)
    }

    fn ok(text: &str, args: &[&str]) -> Config {
        build(text, args).unwrap_or_else(|e| panic!("should be valid: {e}"))
    }

    /// The error message, asserting the error is about `key`.
    fn err_about(text: &str, args: &[&str], key: &str) -> String {
        let err = build(text, args).expect_err("should be refused");
        let message = err.to_string();
        assert_eq!(err.key(), Some(key), "wrong key in: {message}");
        assert!(
            message.starts_with(key),
            "message should name {key}: {message}"
        );
        message
    }

    const BACKEND: &str = "[proxy]\nbackends = [\"10.0.0.1:3306\"]\n";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = ok(BACKEND, &[]);
        assert_eq!(c.listen, vec![addr("127.0.0.1:6033")]);
        assert_eq!(c.backends, vec![addr("10.0.0.1:3306")]);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_packet_size, 1 << 30);
        assert_eq!(c.connect_timeout_ms, 5_000);
        assert_eq!(c.drain_timeout_ms, 10_000);
        assert_eq!(c.handshake_timeout_ms, 10_000);
        assert_eq!(c.idle_timeout_ms, 0, "no idle timeout");
        assert_eq!(c.max_connections_per_source, 0, "unlimited");
        assert_eq!(c.linger_timeout_ms, 5_000);
        assert_eq!(c.max_memory, 1 << 30);
        assert_eq!(c.prewarm, 2);
        assert_eq!(c.prewarm_max_age_ms, 2_000);
        assert_eq!(c.backend_handshake_timeout_ms, 8_000);
        assert_eq!(c.backend_source, None);
        assert_eq!(c.stats_file, None);
        assert_eq!(c.workers, 2, "workers = 0 resolves to the core count");
        assert!(c.pin_cpus);
        assert_eq!(c.ring_entries, 4096);
        assert_eq!(c.buffer_size, 16 << 10);
        assert_eq!(c.buffer_count, 1024);
        assert_eq!(c.send_high_water, 1 << 20);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(
            c.pooled_listen,
            Vec::<SocketAddr>::new(),
            "no pooled listener"
        );
        assert_eq!(c.max_backend_connections, 100);
        assert_eq!(c.pool_idle_timeout_ms, 60_000);
        assert_eq!(c.pool_max_age_ms, 3_600_000);
        assert_eq!(c.pool_ping_after_ms, 10_000);
        assert_eq!(c.pool_wait_timeout_ms, 10_000);
        assert_eq!(c.auth_failure_delay_ms, 1_000);
        assert_eq!(c.monitor_user, None);
        assert_eq!(c.monitor_password, None);
        assert_eq!(c.users_refresh_ms, 5_000);
        assert_eq!(c.users, vec![]);
        assert!(!c.pooled_mode());
    }

    #[test]
    fn every_key_is_read_from_the_file() {
        let c = ok(
            r#"
            [proxy]
            listen = ["0.0.0.0:7000", "[::1]:7001"]
            backends = ["10.0.0.1:3306", "10.0.0.2:3307"]
            max_connections = 1234
            max_packet_size = "16MiB"
            connect_timeout_ms = 250
            drain_timeout_ms = 0
            backend_source = "127.0.0.2"
            max_connections_per_source = 50
            max_memory = "256MiB"
            handshake_timeout_ms = 3000
            idle_timeout_ms = 60000
            linger_timeout_ms = 100
            prewarm = 0
            prewarm_max_age_ms = 500
            backend_handshake_timeout_ms = 1000
            [runtime]
            workers = 3
            pin_cpus = false
            ring_entries = 256
            buffer_size = 8192
            buffer_count = 64
            send_high_water = "256KiB"
            [log]
            level = "debug"
            stats_file = "/var/lib/ringproxy/stats.json"
            "#,
            &[],
        );
        assert_eq!(c.listen, vec![addr("0.0.0.0:7000"), addr("[::1]:7001")]);
        assert_eq!(
            c.backends,
            vec![addr("10.0.0.1:3306"), addr("10.0.0.2:3307")]
        );
        assert_eq!(c.max_connections, 1234);
        assert_eq!(c.max_packet_size, 16 << 20);
        assert_eq!(c.connect_timeout_ms, 250);
        assert_eq!(c.drain_timeout_ms, 0);
        assert_eq!(c.backend_source, Some(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(c.max_connections_per_source, 50);
        assert_eq!(c.max_memory, 256 << 20);
        assert_eq!(c.handshake_timeout_ms, 3_000);
        assert_eq!(c.idle_timeout_ms, 60_000);
        assert_eq!(c.linger_timeout_ms, 100);
        assert_eq!(c.prewarm, 0);
        assert_eq!(c.prewarm_max_age_ms, 500);
        assert_eq!(c.backend_handshake_timeout_ms, 1_000);
        assert_eq!(
            c.stats_file,
            Some(PathBuf::from("/var/lib/ringproxy/stats.json"))
        );
        assert_eq!(c.workers, 3, "workers may exceed the core count");
        assert!(!c.pin_cpus);
        assert_eq!(c.ring_entries, 256);
        assert_eq!(c.buffer_size, 8192);
        assert_eq!(c.buffer_count, 64);
        assert_eq!(c.send_high_water, 256 << 10);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn a_single_address_string_is_accepted() {
        let c = ok(
            "[proxy]\nlisten = \"127.0.0.1:1\"\nbackends = \"127.0.0.1:2\"\n",
            &[],
        );
        assert_eq!(c.listen, vec![addr("127.0.0.1:1")]);
        assert_eq!(c.backends, vec![addr("127.0.0.1:2")]);
    }

    #[test]
    fn every_command_line_option_overrides_the_file() {
        let text = r#"
            [proxy]
            listen = ["0.0.0.0:7000"]
            backends = ["10.0.0.1:3306"]
            max_connections = 1234
            max_packet_size = "16MiB"
            connect_timeout_ms = 250
            drain_timeout_ms = 0
            backend_source = "127.0.0.2"
            max_connections_per_source = 50
            max_memory = "256MiB"
            handshake_timeout_ms = 3000
            idle_timeout_ms = 60000
            linger_timeout_ms = 100
            prewarm = 0
            prewarm_max_age_ms = 500
            backend_handshake_timeout_ms = 1000
            [runtime]
            workers = 3
            pin_cpus = false
            ring_entries = 256
            buffer_size = 8192
            buffer_count = 64
            send_high_water = "256KiB"
            [log]
            level = "debug"
            stats_file = "/var/lib/ringproxy/stats.json"
        "#;
        let c = ok(
            text,
            &[
                "--listen=127.0.0.1:9000",
                "--backend=10.0.0.9:3306",
                "--max-connections=99",
                "--max-packet-size=2M",
                "--connect-timeout-ms=7",
                "--drain-timeout-ms=8",
                "--workers=4",
                "--pin-cpus",
                "--ring-entries=128",
                "--buffer-size=4KiB",
                "--buffer-count=32",
                "--send-high-water=4096",
                "--log-level=warn",
                "--stats-file=/tmp/stats.json",
                "--backend-source=::1",
                "--max-connections-per-source=7",
                "--max-memory=0",
                "--handshake-timeout-ms=1",
                "--idle-timeout-ms=2",
                "--linger-timeout-ms=3",
                "--prewarm=1024",
                "--prewarm-max-age-ms=60000",
                "--backend-handshake-timeout-ms=60001",
            ],
        );
        assert_eq!(c.listen, vec![addr("127.0.0.1:9000")]);
        assert_eq!(c.backends, vec![addr("10.0.0.9:3306")]);
        assert_eq!(c.max_connections, 99);
        assert_eq!(c.max_packet_size, 2 << 20);
        assert_eq!(c.connect_timeout_ms, 7);
        assert_eq!(c.drain_timeout_ms, 8);
        assert_eq!(c.workers, 4);
        assert!(c.pin_cpus);
        assert_eq!(c.ring_entries, 128);
        assert_eq!(c.buffer_size, 4096);
        assert_eq!(c.buffer_count, 32);
        assert_eq!(c.send_high_water, 4096);
        assert_eq!(c.log_level, log::LevelFilter::Warn);
        assert_eq!(c.stats_file, Some(PathBuf::from("/tmp/stats.json")));
        assert_eq!(c.backend_source, Some(IpAddr::from(Ipv6Addr::LOCALHOST)));
        assert_eq!(c.max_connections_per_source, 7);
        assert_eq!(c.max_memory, 0);
        assert_eq!(c.handshake_timeout_ms, 1);
        assert_eq!(c.idle_timeout_ms, 2);
        assert_eq!(c.linger_timeout_ms, 3);
        assert_eq!(c.prewarm, 1024);
        assert_eq!(c.prewarm_max_age_ms, 60_000);
        assert_eq!(c.backend_handshake_timeout_ms, 60_001);

        // Keys not given on the command line keep the file's values.
        let c = ok(text, &["--workers=1"]);
        assert_eq!(c.listen, vec![addr("0.0.0.0:7000")]);
        assert_eq!(c.max_connections, 1234);
        assert!(!c.pin_cpus);
        assert_eq!(c.workers, 1);
        assert_eq!(c.max_memory, 256 << 20);
        assert_eq!(c.prewarm_max_age_ms, 500);
    }

    #[test]
    fn no_pin_cpus_overrides_the_file_and_the_last_flag_wins() {
        assert!(!ok(BACKEND, &["--no-pin-cpus"]).pin_cpus);
        assert!(ok(BACKEND, &["--no-pin-cpus", "--pin-cpus"]).pin_cpus);
        assert!(!ok(BACKEND, &["--pin-cpus", "--no-pin-cpus"]).pin_cpus);
        let pinned_off = "[proxy]\nbackends = [\"10.0.0.1:3306\"]\n[runtime]\npin_cpus = false\n";
        assert!(!ok(pinned_off, &[]).pin_cpus);
        assert!(ok(pinned_off, &["--pin-cpus"]).pin_cpus);
    }

    #[test]
    fn address_lists_accept_repetition_and_commas() {
        let c = ok(
            "",
            &[
                "--backend",
                "10.0.0.1:1,10.0.0.2:2",
                "--backend",
                "10.0.0.3:3",
                "--listen",
                "127.0.0.1:1",
                "--listen=127.0.0.1:2,127.0.0.1:3",
            ],
        );
        assert_eq!(
            c.backends,
            vec![addr("10.0.0.1:1"), addr("10.0.0.2:2"), addr("10.0.0.3:3")]
        );
        assert_eq!(
            c.listen,
            vec![
                addr("127.0.0.1:1"),
                addr("127.0.0.1:2"),
                addr("127.0.0.1:3")
            ]
        );
    }

    #[test]
    fn mysql_proxy_aliases_set_the_same_options() {
        let a = cli(&[
            "--defaults-file=/etc/x.toml",
            "--proxy-address=127.0.0.1:4040",
            "--proxy-backend-addresses=10.0.0.1:3306,10.0.0.2:3306",
            "--event-threads=8",
        ]);
        let b = cli(&[
            "--config=/etc/x.toml",
            "--listen=127.0.0.1:4040",
            "--backend=10.0.0.1:3306",
            "--backend=10.0.0.2:3306",
            "--workers=8",
        ]);
        assert_eq!(a, b);
        assert_eq!(a.config, Some(PathBuf::from("/etc/x.toml")));
        assert_eq!(a.listen, vec!["127.0.0.1:4040"]);
        assert_eq!(a.backends.len(), 2);
        assert_eq!(a.workers, Some(8));
    }

    #[test]
    fn size_suffixes() {
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("4096 b", 4096),
            ("16KiB", 16 << 10),
            ("16K", 16 << 10),
            ("16k", 16 << 10),
            ("64MiB", 64 << 20),
            ("64 MiB", 64 << 20),
            ("64M", 64 << 20),
            ("1GiB", 1 << 30),
            ("1G", 1 << 30),
            ("2g", 2 << 30),
            (" 3kib ", 3 << 10),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(*want), "{text:?}");
        }
        for bad in ["", "MiB", "1.5MiB", "-1", "12TiB", "12 KB", "1e3", "0x10"] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.contains("not a valid size"), "{bad:?}: {err}");
        }
        assert!(parse_size("99999999999999G")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_in_the_file_accept_integers_and_strings() {
        let c = ok(
            "[proxy]\nbackends = [\"10.0.0.1:3306\"]\nmax_packet_size = 2048\n[runtime]\nbuffer_size = \"8K\"\nsend_high_water = \"1G\"\n",
            &[],
        );
        assert_eq!(c.max_packet_size, 2048);
        assert_eq!(c.buffer_size, 8192);
        assert_eq!(c.send_high_water, 1 << 30);
        let err = FileConfig::parse("[proxy]\nmax_packet_size = -5\n", "f.toml").unwrap_err();
        assert_eq!(err.key(), Some("proxy.max_packet_size"));
        assert!(err.to_string().contains("cannot be negative"), "{err}");
        let m = err_about(
            "[proxy]\nmax_packet_size = \"64 parsecs\"\n",
            &["--backend=10.0.0.1:1"],
            "proxy.max_packet_size",
        );
        assert!(m.contains("\"64 parsecs\" is not a valid size"), "{m}");
    }

    #[test]
    fn format_size_picks_the_largest_exact_unit() {
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(16 << 10), "16KiB");
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(1536), "1536B");
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(3 << 20), "3MiB");
    }

    #[test]
    fn unknown_keys_are_named_with_their_full_path() {
        for (text, key) in [
            ("[proxy]\nlisen = [\"127.0.0.1:1\"]\n", "proxy.lisen"),
            ("[runtime]\nthreads = 4\n", "runtime.threads"),
            ("[log]\nformat = \"json\"\n", "log.format"),
            ("[proxi]\n", "proxi"),
            ("verbose = true\n", "verbose"),
        ] {
            let err = FileConfig::parse(text, "/etc/ringproxy.toml").expect_err(text);
            assert_eq!(
                err.to_string()
                    .lines()
                    .next()
                    .unwrap()
                    .split(" (")
                    .next()
                    .unwrap(),
                format!("unknown key \"{key}\" in /etc/ringproxy.toml"),
                "{err}"
            );
            assert!(matches!(err, ConfigError::UnknownKey { .. }));
        }
        let err = FileConfig::parse("[proxy]\nlisen = 1\n", "f.toml").unwrap_err();
        assert!(
            err.to_string().contains("`listen`"),
            "suggests the real keys: {err}"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        for (text, key, what) in [
            (
                "[proxy]\nmax_connections = \"many\"\n",
                "proxy.max_connections",
                "non-negative integer",
            ),
            (
                "[proxy]\nmax_connections = -1\n",
                "proxy.max_connections",
                "non-negative integer",
            ),
            ("[proxy]\nlisten = [1]\n", "proxy.listen", "string"),
            (
                "[runtime]\npin_cpus = \"yes\"\n",
                "runtime.pin_cpus",
                "true or false",
            ),
            (
                "[runtime]\nbuffer_size = true\n",
                "runtime.buffer_size",
                "size",
            ),
            ("[log]\nlevel = 3\n", "log.level", "string"),
            ("proxy = 3\n", "proxy", "[proxy] table"),
        ] {
            let err = FileConfig::parse(text, "f.toml").expect_err(text);
            let message = err.to_string();
            assert_eq!(err.key(), Some(key), "{message}");
            assert!(message.starts_with(&format!("{key}: ")), "{message}");
            assert!(message.contains(what), "{message}");
            assert!(message.ends_with("(in f.toml)"), "{message}");
        }
    }

    #[test]
    fn toml_syntax_errors_name_the_file() {
        let err = FileConfig::parse("[proxy\n", "/etc/bad.toml").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }));
        assert!(
            err.to_string().starts_with("/etc/bad.toml: not valid TOML"),
            "{err}"
        );
    }

    #[test]
    fn addresses_are_validated() {
        let m = err_about(
            "[proxy]\nlisten = [\"127.0.0.1:99999\"]\n",
            &["--backend=10.0.0.1:1"],
            "proxy.listen",
        );
        assert_eq!(
            m,
            "proxy.listen: \"127.0.0.1:99999\" is not a valid address (expected IP:PORT)"
        );
        let m = err_about(BACKEND, &["--listen=localhost:6033"], "--listen");
        assert!(
            m.contains("\"localhost:6033\" is not a valid address"),
            "{m}"
        );
        let m = err_about("", &["--backend=10.0.0.1"], "--backend");
        assert!(m.contains("expected IP:PORT"), "{m}");
        let m = err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\", \"10.0.0.1:1\"]\n",
            &[],
            "proxy.backends",
        );
        assert!(m.contains("listed twice"), "{m}");
    }

    #[test]
    fn empty_address_lists_are_refused() {
        let m = err_about("", &[], "proxy.backends");
        assert!(m.contains("at least one address"), "{m}");
        err_about("[proxy]\nbackends = []\n", &[], "proxy.backends");
        err_about(
            "[proxy]\nlisten = []\nbackends = [\"10.0.0.1:1\"]\n",
            &[],
            "proxy.listen",
        );
    }

    #[test]
    fn workers_resolve_and_are_bounded() {
        assert_eq!(ok(BACKEND, &["--workers=0"]).workers, 2);
        assert_eq!(
            ok(BACKEND, &["--workers=1024", "--max-connections=1"]).workers,
            1024
        );
        let m = err_about(BACKEND, &["--workers=1025"], "--workers");
        assert!(m.contains("1..=1024"), "{m}");
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\n[runtime]\nworkers = 5000\n",
            &[],
            "runtime.workers",
        );
        let one_core = Host {
            cores: 1,
            slots_per_worker: 20_000,
        };
        let c = Config::from_layers(file(BACKEND), &cli(&["--max-connections=5"]), one_core);
        assert_eq!(c.unwrap().workers, 1);
    }

    #[test]
    fn ring_entries_must_be_a_power_of_two_in_range() {
        for good in [64, 4096, 32768] {
            assert_eq!(
                ok(BACKEND, &[&format!("--ring-entries={good}")]).ring_entries,
                good
            );
        }
        for bad in [0, 32, 100, 65536] {
            let m = err_about(
                BACKEND,
                &[&format!("--ring-entries={bad}")],
                "--ring-entries",
            );
            assert!(m.contains("power of two in 64..=32768"), "{m}");
        }
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\n[runtime]\nring_entries = 1000\n",
            &[],
            "runtime.ring_entries",
        );
    }

    #[test]
    fn buffer_count_must_be_a_power_of_two_in_range() {
        for good in [16u16, 1024, 32768] {
            assert_eq!(
                ok(BACKEND, &[&format!("--buffer-count={good}")]).buffer_count,
                good
            );
        }
        for bad in [0, 8, 1000, 65536] {
            let m = err_about(
                BACKEND,
                &[&format!("--buffer-count={bad}")],
                "--buffer-count",
            );
            assert!(m.contains("power of two in 16..=32768"), "{m}");
        }
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\n[runtime]\nbuffer_count = 3\n",
            &[],
            "runtime.buffer_count",
        );
    }

    #[test]
    fn buffer_size_is_bounded() {
        assert_eq!(ok(BACKEND, &["--buffer-size=4KiB"]).buffer_size, 4096);
        assert_eq!(ok(BACKEND, &["--buffer-size=1MiB"]).buffer_size, 1 << 20);
        for bad in ["4095", "2MiB", "0"] {
            let m = err_about(BACKEND, &[&format!("--buffer-size={bad}")], "--buffer-size");
            assert!(m.contains("allowed 4KiB..=1MiB"), "{m}");
        }
        err_about(BACKEND, &["--buffer-size=lots"], "--buffer-size");
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\n[runtime]\nbuffer_size = \"2M\"\n",
            &[],
            "runtime.buffer_size",
        );
    }

    #[test]
    fn max_packet_size_is_bounded() {
        assert_eq!(ok(BACKEND, &["--max-packet-size=1K"]).max_packet_size, 1024);
        assert_eq!(
            ok(BACKEND, &["--max-packet-size=1G"]).max_packet_size,
            1 << 30
        );
        for bad in ["1023", "2G"] {
            let m = err_about(
                BACKEND,
                &[&format!("--max-packet-size={bad}")],
                "--max-packet-size",
            );
            assert!(m.contains("allowed 1KiB..=1GiB"), "{m}");
        }
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\nmax_packet_size = \"4GiB\"\n",
            &[],
            "proxy.max_packet_size",
        );
    }

    #[test]
    fn send_high_water_must_hold_one_buffer() {
        assert_eq!(
            ok(BACKEND, &["--buffer-size=64K", "--send-high-water=64K"]).send_high_water,
            64 << 10
        );
        let m = err_about(
            BACKEND,
            &["--buffer-size=64K", "--send-high-water=32K"],
            "--send-high-water",
        );
        assert!(
            m.contains("smaller than the receive buffer size (64KiB)"),
            "{m}"
        );
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\n[runtime]\nsend_high_water = 100\n",
            &[],
            "runtime.send_high_water",
        );
    }

    #[test]
    fn timeouts_are_bounded() {
        err_about(BACKEND, &["--connect-timeout-ms=0"], "--connect-timeout-ms");
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\nconnect_timeout_ms = 0\n",
            &[],
            "proxy.connect_timeout_ms",
        );
        let m = err_about(
            BACKEND,
            &["--drain-timeout-ms=86400001"],
            "--drain-timeout-ms",
        );
        assert!(m.contains("0..=86400000"), "{m}");
        assert_eq!(ok(BACKEND, &["--drain-timeout-ms=0"]).drain_timeout_ms, 0);
    }

    #[test]
    fn log_level_is_validated() {
        for (text, want) in [
            ("error", log::LevelFilter::Error),
            ("warn", log::LevelFilter::Warn),
            ("info", log::LevelFilter::Info),
            ("debug", log::LevelFilter::Debug),
            ("trace", log::LevelFilter::Trace),
            ("off", log::LevelFilter::Off),
            ("DEBUG", log::LevelFilter::Debug),
        ] {
            assert_eq!(
                ok(BACKEND, &[&format!("--log-level={text}")]).log_level,
                want
            );
        }
        let m = err_about(BACKEND, &["--log-level=loud"], "--log-level");
        assert!(m.contains("\"loud\" is not a log level"), "{m}");
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\n[log]\nlevel = \"verbose\"\n",
            &[],
            "log.level",
        );
    }

    #[test]
    fn max_connections_must_be_positive() {
        let m = err_about(BACKEND, &["--max-connections=0"], "--max-connections");
        assert!(m.contains("at least 1"), "{m}");
        err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\nmax_connections = 0\n",
            &[],
            "proxy.max_connections",
        );
    }

    #[test]
    fn max_connections_must_fit_the_fixed_file_tables() {
        // 2 workers * (20000 - 16) / 2 = 19984.
        let two = "--workers=2";
        assert_eq!(
            ok(BACKEND, &[two, "--max-connections=19984"]).max_connections,
            19_984
        );
        let m = err_about(
            BACKEND,
            &[two, "--max-connections=19985"],
            "--max-connections",
        );
        assert!(
            m.contains(
                "2 workers * (RLIMIT_NOFILE 20000 - 16 reserved) / 2 slot(s) per client = 19984"
            ),
            "{m}"
        );
        let m = err_about(
            "[proxy]\nbackends = [\"10.0.0.1:1\"]\nmax_connections = 10000\n[runtime]\nworkers = 1\n",
            &[],
            "proxy.max_connections",
        );
        assert!(m.contains("= 9992"), "{m}");
        // More workers raise the ceiling.
        assert_eq!(
            ok(BACKEND, &["--workers=8", "--max-connections=79936"]).max_connections,
            79_936
        );
        // A tiny RLIMIT_NOFILE leaves no room at all, whatever the worker count.
        let tiny = Host {
            cores: 4,
            slots_per_worker: 16,
        };
        let err =
            Config::from_layers(file(BACKEND), &cli(&["--max-connections=1"]), tiny).unwrap_err();
        assert!(err.to_string().contains("1024 workers"), "{err}");
        assert!(err.to_string().contains("= 0"), "{err}");
    }

    #[test]
    fn workers_zero_adds_workers_for_a_chosen_max_connections() {
        // Left at its default, workers is the core count (2 here) and the default limit shrinks.
        assert_eq!(ok(BACKEND, &[]).workers, 2);
        // 19,985 pass-through clients do not fit 2 tables of 20,000 slots: a third worker comes,
        // with 5% of each worker's room kept for the uneven SO_REUSEPORT spread.
        assert_eq!(ok(BACKEND, &["--max-connections=19985"]).workers, 3);
        assert_eq!(ok(BACKEND, &["--max-connections=19000"]).workers, 3);
        assert_eq!(ok(BACKEND, &["--max-connections=18000"]).workers, 2);
        // A million pooled clients: one slot each, 100 kept per worker for the backend pool.
        let pooled = [
            "--pooled-listen=127.0.0.1:6400",
            "--max-connections=1000000",
        ];
        let c = ok(BACKEND, &pooled);
        let room = c.room(20_000);
        assert_eq!(room.per_worker(), 20_000 - 16 - 100);
        assert_eq!(c.workers, 53, "1e6 / (19884 * 0.95) rounded up");
        assert!(room.clients(53) >= 1_000_000);
        // Each of those workers gets its share of the cores' receive buffers: 1024 * 2 / 53
        // rounded down to a power of two is 32, raised to the floor of 128.
        assert_eq!(c.buffer_count, 128);
        // A buffer count that was chosen is kept.
        let mut chosen = pooled.to_vec();
        chosen.push("--buffer-count=2048");
        assert_eq!(ok(BACKEND, &chosen).buffer_count, 2048);
        // Explicit workers are never changed.
        let mut fixed = pooled.to_vec();
        fixed.push("--workers=60");
        assert_eq!(ok(BACKEND, &fixed).workers, 60);
        // A pass-through listener next to the pooled one makes every client count 2 slots.
        let both = ["--listen=127.0.0.1:6401", "--pooled-listen=127.0.0.1:6400"];
        assert_eq!(
            ok(BACKEND, &both).room(20_000).per_worker(),
            (20_000 - 16 - 100) / 2
        );
    }

    #[test]
    fn stats_file_comes_from_the_file_or_the_command_line() {
        assert_eq!(ok(BACKEND, &[]).stats_file, None);
        let text = "[proxy]\nbackends = [\"10.0.0.1:1\"]\n[log]\nstats_file = \"/tmp/a.json\"\n";
        assert_eq!(ok(text, &[]).stats_file, Some(PathBuf::from("/tmp/a.json")));
        let c = ok(text, &["--stats-file=/tmp/b.json"]);
        assert_eq!(c.stats_file, Some(PathBuf::from("/tmp/b.json")));
        // The summary is itself a valid configuration that keeps the setting.
        assert_eq!(Config::from_toml_str(&c.summary()).unwrap(), c);
    }

    #[test]
    fn default_max_connections_adapts_to_the_ceiling_but_a_chosen_value_does_not() {
        // One worker holds 9992 clients at RLIMIT_NOFILE 20000: the 10000 default shrinks to it.
        let c = ok(BACKEND, &["--workers=1"]);
        let ceiling = Room::pass_through(Host::current().slots_per_worker).clients(1);
        assert_eq!(
            c.max_connections as u64,
            DEFAULT_MAX_CONNECTIONS.min(ceiling)
        );
        assert!(c.max_connections < 10_000);
        // The same number chosen explicitly is refused, naming the key.
        err_about(
            BACKEND,
            &["--workers=1", "--max-connections=10000"],
            "--max-connections",
        );
    }

    #[test]
    fn ceiling_arithmetic() {
        assert_eq!(Room::pass_through(20_000).clients(2), 19_984);
        assert_eq!(Room::pass_through(1024).clients(1), 504);
        assert_eq!(Room::pass_through(10).clients(3), 0);
        assert_eq!(Room::pass_through(20_000).clients(0), 0);
    }

    #[test]
    fn fixed_file_slots_follow_rlimit_nofile() {
        let nofile = rlimit_nofile().expect("getrlimit works");
        let slots = fixed_file_slots_per_worker();
        assert_eq!(u64::from(slots), nofile.min(1 << 20));
        assert!(slots > 0);
    }

    #[test]
    fn summary_is_a_config_file_that_reproduces_the_config() {
        let c = Config::from_layers(
            file(
                "[proxy]\nlisten = [\"127.0.0.1:7000\", \"[::1]:7001\"]\nbackends = [\"10.0.0.1:3306\"]\nmax_connections = 7\nmax_packet_size = 5000\n[runtime]\nworkers = 3\npin_cpus = false\nbuffer_size = \"32K\"\n[log]\nlevel = \"trace\"\n",
            ),
            &Cli::default(),
            Host::current(),
        )
        .unwrap();
        let summary = c.summary();
        assert!(summary.lines().count() <= 24, "one screen:\n{summary}");
        assert!(summary.contains("max_packet_size = 5000"), "{summary}");
        assert!(summary.contains("buffer_size = \"32KiB\""), "{summary}");
        let again = Config::from_toml_str(&summary).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn from_toml_str_validates() {
        let err = Config::from_toml_str("[proxy]\nlisten = [\"127.0.0.1:1\"]\n").unwrap_err();
        assert_eq!(err.key(), Some("proxy.backends"));
    }

    #[test]
    fn new_limits_are_range_checked_naming_the_flag_or_the_key() {
        for (arg, flag, allowed) in [
            (
                "--handshake-timeout-ms=0",
                "--handshake-timeout-ms",
                "allowed 1..=86400000",
            ),
            (
                "--handshake-timeout-ms=86400001",
                "--handshake-timeout-ms",
                "allowed 1..=86400000",
            ),
            (
                "--idle-timeout-ms=86400001",
                "--idle-timeout-ms",
                "allowed 0..=86400000",
            ),
            (
                "--linger-timeout-ms=0",
                "--linger-timeout-ms",
                "allowed 1..=86400000",
            ),
            ("--prewarm=1025", "--prewarm", "allowed 0..=1024"),
            (
                "--prewarm-max-age-ms=99",
                "--prewarm-max-age-ms",
                "allowed 100..=60000",
            ),
            (
                "--prewarm-max-age-ms=60001",
                "--prewarm-max-age-ms",
                "allowed 100..=60000",
            ),
            (
                "--backend-handshake-timeout-ms=999",
                "--backend-handshake-timeout-ms",
                "allowed 1000..=86400000",
            ),
            (
                "--max-memory=15MiB",
                "--max-memory",
                "allowed 0 = no limit, or 16MiB..=1024GiB",
            ),
            (
                "--max-memory=1025G",
                "--max-memory",
                "allowed 0 = no limit, or 16MiB..=1024GiB",
            ),
            (
                "--max-memory=lots",
                "--max-memory",
                "\"lots\" is not a valid size",
            ),
            (
                "--max-packet-size=1025M",
                "--max-packet-size",
                "allowed 1KiB..=1GiB",
            ),
        ] {
            let m = err_about(BACKEND, &[arg], flag);
            assert!(m.contains(allowed), "{arg}: {m}");
        }
        for (line, key) in [
            ("handshake_timeout_ms = 0", "proxy.handshake_timeout_ms"),
            ("idle_timeout_ms = 86400001", "proxy.idle_timeout_ms"),
            ("linger_timeout_ms = 0", "proxy.linger_timeout_ms"),
            ("prewarm = 2000", "proxy.prewarm"),
            ("prewarm_max_age_ms = 50", "proxy.prewarm_max_age_ms"),
            (
                "backend_handshake_timeout_ms = 500",
                "proxy.backend_handshake_timeout_ms",
            ),
            ("max_memory = \"8MiB\"", "proxy.max_memory"),
            ("max_memory = \"2048GiB\"", "proxy.max_memory"),
        ] {
            err_about(&format!("{BACKEND}{line}\n"), &[], key);
        }
    }

    #[test]
    fn new_keys_refuse_wrong_types_naming_the_key() {
        for (line, key, what) in [
            (
                "max_connections_per_source = -1",
                "proxy.max_connections_per_source",
                "non-negative integer",
            ),
            (
                "idle_timeout_ms = \"1s\"",
                "proxy.idle_timeout_ms",
                "non-negative integer",
            ),
            ("prewarm = true", "proxy.prewarm", "non-negative integer"),
            ("max_memory = -1", "proxy.max_memory", "cannot be negative"),
            ("backend_source = 127", "proxy.backend_source", "string"),
        ] {
            let err = FileConfig::parse(&format!("[proxy]\n{line}\n"), "f.toml").expect_err(line);
            let message = err.to_string();
            assert_eq!(err.key(), Some(key), "{message}");
            assert!(message.contains(what), "{message}");
        }
    }

    #[test]
    fn max_memory_of_zero_means_no_limit() {
        assert_eq!(ok(BACKEND, &["--max-memory=0"]).max_memory, 0);
        assert_eq!(ok(&format!("{BACKEND}max_memory = 0\n"), &[]).max_memory, 0);
        assert_eq!(ok(BACKEND, &["--max-memory=16M"]).max_memory, 16 << 20);
        assert_eq!(ok(BACKEND, &["--max-memory=1024G"]).max_memory, 1 << 40);
        let c = ok(BACKEND, &["--max-memory=0"]);
        let summary = c.summary();
        assert!(
            summary.contains("proxy.max_memory = 0  # no limit"),
            "{summary}"
        );
        assert_eq!(
            Config::from_layers(file(&summary), &Cli::default(), HOST).unwrap(),
            c
        );
    }

    #[test]
    fn backend_handshake_timeout_must_exceed_prewarm_max_age() {
        let m = err_about(
            BACKEND,
            &["--backend-handshake-timeout-ms=2000"],
            "--backend-handshake-timeout-ms",
        );
        assert!(
            m.contains("2000 is not above proxy.prewarm_max_age_ms (2000)"),
            "{m}"
        );
        // Only the age was chosen: the error names it, not the default it collides with.
        let m = err_about(
            BACKEND,
            &["--prewarm-max-age-ms=9000"],
            "--prewarm-max-age-ms",
        );
        assert!(
            m.contains("9000 is not below proxy.backend_handshake_timeout_ms (8000)"),
            "{m}"
        );
        let m = err_about(
            &format!("{BACKEND}prewarm_max_age_ms = 5000\nbackend_handshake_timeout_ms = 5000\n"),
            &[
                "--prewarm-max-age-ms=4000",
                "--backend-handshake-timeout-ms=3000",
            ],
            "--backend-handshake-timeout-ms",
        );
        assert!(
            m.contains("3000 is not above --prewarm-max-age-ms (4000)"),
            "{m}"
        );
        err_about(
            &format!("{BACKEND}prewarm_max_age_ms = 5000\nbackend_handshake_timeout_ms = 5000\n"),
            &[],
            "proxy.backend_handshake_timeout_ms",
        );
        let c = ok(BACKEND, &["--prewarm-max-age-ms=7999"]);
        assert_eq!(
            (c.prewarm_max_age_ms, c.backend_handshake_timeout_ms),
            (7_999, 8_000)
        );
    }

    #[test]
    fn backend_source_is_an_ip_address_without_a_port() {
        let c = ok(BACKEND, &["--backend-source=127.0.0.2"]);
        assert_eq!(c.backend_source, Some(IpAddr::from([127, 0, 0, 2])));
        let c = ok(BACKEND, &["--backend-source", "::1"]);
        assert_eq!(c.backend_source, Some(IpAddr::from(Ipv6Addr::LOCALHOST)));
        let m = err_about(
            BACKEND,
            &["--backend-source=127.0.0.2:3306"],
            "--backend-source",
        );
        assert!(
            m.contains("\"127.0.0.2:3306\" is not a valid IP address"),
            "{m}"
        );
        let text = format!("{BACKEND}backend_source = \"localhost\"\n");
        err_about(&text, &[], "proxy.backend_source");
    }

    #[test]
    fn summary_with_every_key_set_fits_one_screen_and_reproduces_the_config() {
        let c = ok(
            &format!(
                "{BACKEND}backend_source = \"127.0.0.2\"\n[log]\nstats_file = \"/tmp/s.json\"\n"
            ),
            &["--idle-timeout-ms=30000", "--max-memory=64M"],
        );
        let summary = c.summary();
        assert!(summary.lines().count() <= 24, "one screen:\n{summary}");
        // Pooled mode's keys are shown in pooled mode: see `pooled_summary_...` below.
        for key in KEYS.iter().filter(|key| key.mode == Mode::Any) {
            let line = format!("\n{} = ", key.path);
            assert!(summary.contains(&line), "{} missing:\n{summary}", key.path);
        }
        assert!(
            summary.contains("proxy.backend_source = \"127.0.0.2\""),
            "{summary}"
        );
        assert!(
            summary.contains("proxy.max_memory = \"64MiB\""),
            "{summary}"
        );
        assert_eq!(
            Config::from_layers(file(&summary), &Cli::default(), HOST).unwrap(),
            c
        );
    }

    #[test]
    fn flags_are_the_kebab_case_of_the_keys() {
        for key in KEYS {
            match key.path {
                "proxy.backends" => assert_eq!(key.flag, "--backend"),
                "log.level" => assert_eq!(key.flag, "--log-level"),
                "monitor.user" => assert_eq!(key.flag, "--monitor-user"),
                "monitor.password" => assert_eq!(key.flag, "--monitor-password"),
                _ => assert_eq!(key.long, key.name.replace('_', "-"), "{}", key.path),
            }
            assert_eq!(key.path, format!("{}.{}", key.section, key.name));
        }
    }

    #[test]
    fn the_command_line_is_consistent_and_its_help_shows_ranges_and_defaults() {
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for text in [
            "--max-memory <SIZE>",
            "(allowed 0 = no limit, or 16MiB..=1024GiB) [default: 1GiB]",
            "--backend-source <IP>",
            "--prewarm-max-age-ms <N>",
            "(allowed 100..=60000) [default: 2000]",
            "--no-pin-cpus",
            "[alias: --event-threads]",
        ] {
            assert!(help.contains(text), "{text:?} missing from --help:\n{help}");
        }
    }

    #[test]
    fn the_readme_documents_every_key() {
        let readme = include_str!("../README.md");
        for key in KEYS {
            let row = format!("| `{}` | `{}", key.path, key.flag);
            assert!(
                readme.contains(&row),
                "README.md has no row starting {row:?}"
            );
        }
    }

    // ---- Pooled mode ----------------------------------------------------------------------------

    /// `SELECT PASSWORD('app')`, and its bytes.
    const APP_HASH: &str = "*5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3";
    const APP_HASH_BYTES: [u8; 20] = [
        0x5B, 0xCB, 0x3E, 0x6A, 0xC3, 0x45, 0xB4, 0x35, 0xC7, 0xC2, 0xE6, 0xB7, 0x94, 0x9A, 0x04,
        0xCE, 0x6F, 0x65, 0x63, 0xD3,
    ];

    const POOLED: &str =
        "[proxy]\nbackends = [\"10.0.0.1:3306\"]\npooled_listen = [\"127.0.0.1:6034\"]\n";

    #[test]
    fn pooled_keys_are_read_from_the_file_and_overridden_by_the_command_line() {
        let text = r#"
            [proxy]
            backends = ["10.0.0.1:3306"]
            pooled_listen = ["127.0.0.1:7100", "[::1]:7101"]
            max_backend_connections = 7
            pool_idle_timeout_ms = 0
            pool_max_age_ms = 0
            pool_ping_after_ms = 0
            pool_wait_timeout_ms = 1
            auth_failure_delay_ms = 0
            [monitor]
            user = "monitor"
            password = ""
            users_refresh_ms = 100
        "#;
        let c = ok(text, &[]);
        assert_eq!(
            c.pooled_listen,
            vec![addr("127.0.0.1:7100"), addr("[::1]:7101")]
        );
        assert_eq!(c.max_backend_connections, 7);
        assert_eq!(c.pool_idle_timeout_ms, 0, "never");
        assert_eq!(c.pool_max_age_ms, 0, "never");
        assert_eq!(c.pool_ping_after_ms, 0);
        assert_eq!(c.pool_wait_timeout_ms, 1);
        assert_eq!(c.auth_failure_delay_ms, 0);
        assert_eq!(c.monitor_user.as_deref(), Some("monitor"));
        assert_eq!(
            c.monitor_password.as_deref(),
            Some(""),
            "an empty password is a password"
        );
        assert_eq!(c.users_refresh_ms, 100);
        assert!(c.pooled_mode());

        let c = ok(
            text,
            &[
                "--pooled-listen=127.0.0.1:7200,127.0.0.1:7201",
                "--pooled-listen",
                "127.0.0.1:7202",
                "--max-backend-connections=100000",
                "--pool-idle-timeout-ms=86400000",
                "--pool-max-age-ms=86400000",
                "--pool-ping-after-ms=86400000",
                "--pool-wait-timeout-ms=86400000",
                "--auth-failure-delay-ms=60000",
                "--monitor-user=watcher",
                "--monitor-password=s3cret",
                "--users-refresh-ms=86400000",
            ],
        );
        assert_eq!(
            c.pooled_listen,
            vec![
                addr("127.0.0.1:7200"),
                addr("127.0.0.1:7201"),
                addr("127.0.0.1:7202")
            ]
        );
        assert_eq!(c.max_backend_connections, 100_000);
        assert_eq!(c.pool_idle_timeout_ms, 86_400_000);
        assert_eq!(c.pool_max_age_ms, 86_400_000);
        assert_eq!(c.pool_ping_after_ms, 86_400_000);
        assert_eq!(c.pool_wait_timeout_ms, 86_400_000);
        assert_eq!(c.auth_failure_delay_ms, 60_000);
        assert_eq!(c.monitor_user.as_deref(), Some("watcher"));
        assert_eq!(c.monitor_password.as_deref(), Some("s3cret"));
        assert_eq!(c.users_refresh_ms, 86_400_000);
    }

    #[test]
    fn pooled_keys_are_range_checked_naming_the_flag_or_the_key() {
        for (arg, allowed) in [
            ("--max-backend-connections=0", "allowed 1..=100000"),
            ("--max-backend-connections=100001", "allowed 1..=100000"),
            ("--pool-idle-timeout-ms=86400001", "allowed 0..=86400000"),
            ("--pool-max-age-ms=86400001", "allowed 0..=86400000"),
            ("--pool-ping-after-ms=86400001", "allowed 0..=86400000"),
            ("--pool-wait-timeout-ms=0", "allowed 1..=86400000"),
            ("--pool-wait-timeout-ms=86400001", "allowed 1..=86400000"),
            ("--auth-failure-delay-ms=60001", "allowed 0..=60000"),
            ("--users-refresh-ms=99", "allowed 100..=86400000"),
            ("--users-refresh-ms=86400001", "allowed 100..=86400000"),
        ] {
            let flag = arg.split('=').next().unwrap();
            let m = err_about(POOLED, &[arg], flag);
            assert!(m.contains(allowed), "{arg}: {m}");
        }
        for (text, key) in [
            (
                "[proxy]\nmax_backend_connections = 0",
                "proxy.max_backend_connections",
            ),
            (
                "[proxy]\nmax_backend_connections = 100001",
                "proxy.max_backend_connections",
            ),
            (
                "[proxy]\npool_idle_timeout_ms = 86400001",
                "proxy.pool_idle_timeout_ms",
            ),
            (
                "[proxy]\npool_max_age_ms = 86400001",
                "proxy.pool_max_age_ms",
            ),
            (
                "[proxy]\npool_ping_after_ms = 86400001",
                "proxy.pool_ping_after_ms",
            ),
            (
                "[proxy]\npool_wait_timeout_ms = 0",
                "proxy.pool_wait_timeout_ms",
            ),
            (
                "[proxy]\nauth_failure_delay_ms = 60001",
                "proxy.auth_failure_delay_ms",
            ),
            (
                "[monitor]\nusers_refresh_ms = 99",
                "monitor.users_refresh_ms",
            ),
        ] {
            let m = err_about(&format!("{text}\n"), &["--backend=10.0.0.1:1"], key);
            assert!(m.contains("is out of range (allowed "), "{m}");
        }
        let m = err_about(POOLED, &["--pooled-listen=localhost:1"], "--pooled-listen");
        assert!(m.contains("\"localhost:1\" is not a valid address"), "{m}");
        let m = err_about(
            &format!("{POOLED}[monitor]\nuser = \"\"\npassword = \"x\"\n"),
            &[],
            "monitor.user",
        );
        assert!(m.contains("must not be empty"), "{m}");
        err_about(
            POOLED,
            &["--monitor-user=", "--monitor-password=x"],
            "--monitor-user",
        );
    }

    #[test]
    fn pooled_keys_refuse_wrong_types_naming_the_key() {
        for (text, key, what) in [
            (
                "[proxy]\npooled_listen = [6034]",
                "proxy.pooled_listen",
                "string",
            ),
            (
                "[proxy]\nmax_backend_connections = -1",
                "proxy.max_backend_connections",
                "non-negative integer",
            ),
            (
                "[proxy]\npool_wait_timeout_ms = \"10s\"",
                "proxy.pool_wait_timeout_ms",
                "non-negative integer",
            ),
            ("[monitor]\nuser = 3", "monitor.user", "string"),
            ("[monitor]\npassword = true", "monitor.password", "string"),
            ("monitor = 1", "monitor", "[monitor] table"),
        ] {
            let err = FileConfig::parse(&format!("{text}\n"), "f.toml").expect_err(text);
            let message = err.to_string();
            assert_eq!(err.key(), Some(key), "{message}");
            assert!(message.contains(what), "{message}");
        }
        let err = FileConfig::parse("[monitor]\nusr = \"x\"\n", "f.toml").unwrap_err();
        assert_eq!(err.key(), Some("monitor.usr"));
        assert!(
            err.to_string()
                .contains("`user`, `password`, `users_refresh_ms`"),
            "{err}"
        );
    }

    #[test]
    fn pooled_listen_alone_means_no_pass_through_listener() {
        let c = ok(BACKEND, &["--pooled-listen", "127.0.0.1:6034"]);
        assert_eq!(c.pooled_listen, vec![addr("127.0.0.1:6034")]);
        assert_eq!(
            c.listen,
            vec![],
            "listen defaults to none once pooled_listen is set"
        );
        assert_eq!(ok(POOLED, &[]).listen, vec![]);
        // A listen the user sets is kept, from either layer.
        let c = ok(POOLED, &["--listen=127.0.0.1:6033"]);
        assert_eq!(c.listen, vec![addr("127.0.0.1:6033")]);
        let both = format!("{POOLED}listen = [\"127.0.0.1:6035\"]\n");
        assert_eq!(ok(&both, &[]).listen, vec![addr("127.0.0.1:6035")]);
        let c = ok(
            "[proxy]\nlisten = [\"127.0.0.1:1\"]\n",
            &["--backend=10.0.0.1:1", "--pooled-listen=127.0.0.1:2"],
        );
        assert_eq!(
            (c.listen, c.pooled_listen),
            (vec![addr("127.0.0.1:1")], vec![addr("127.0.0.1:2")])
        );
        // An explicit empty list of pooled listeners changes nothing.
        let c = ok(&format!("{BACKEND}pooled_listen = []\n"), &[]);
        assert_eq!(c.listen, vec![addr("127.0.0.1:6033")]);
        assert!(!c.pooled_mode());
        // An explicitly empty listen is fine next to pooled listeners.
        let c = ok(&format!("{POOLED}listen = []\n"), &[]);
        assert_eq!((c.listen.len(), c.pooled_listen.len()), (0, 1));
    }

    #[test]
    fn some_listener_is_required_naming_both_keys() {
        let m = err_about(&format!("{BACKEND}listen = []\n"), &[], "proxy.listen");
        assert!(m.contains("at least one address is required"), "{m}");
        assert!(m.contains("proxy.pooled_listen"), "{m}");
        let m = err_about(
            &format!("{BACKEND}listen = []\npooled_listen = []\n"),
            &[],
            "proxy.listen",
        );
        assert!(m.contains("here or in proxy.pooled_listen"), "{m}");
    }

    #[test]
    fn an_address_is_pass_through_or_pooled_not_both() {
        let m = err_about(
            BACKEND,
            &[
                "--listen=127.0.0.1:6033,127.0.0.1:6034",
                "--pooled-listen=127.0.0.1:6034",
            ],
            "--pooled-listen",
        );
        assert!(m.contains("127.0.0.1:6034 is also in --listen"), "{m}");
        let m = err_about(
            &format!("{POOLED}listen = [\"[::1]:1\", \"127.0.0.1:6034\"]\n"),
            &[],
            "proxy.pooled_listen",
        );
        assert!(m.contains("127.0.0.1:6034 is also in proxy.listen"), "{m}");
        // The default pass-through listener is dropped, so it cannot collide.
        let c = ok(BACKEND, &["--pooled-listen=127.0.0.1:6033"]);
        assert_eq!(
            (c.listen, c.pooled_listen),
            (vec![], vec![addr("127.0.0.1:6033")])
        );
        // Within one list, as for every address list.
        let m = err_about(
            POOLED,
            &["--pooled-listen=127.0.0.1:1,127.0.0.1:1"],
            "--pooled-listen",
        );
        assert!(m.contains("listed twice"), "{m}");
    }

    #[test]
    fn the_monitor_account_needs_both_user_and_password() {
        let m = err_about(POOLED, &["--monitor-user=monitor"], "monitor.password");
        assert!(m.contains("missing: --monitor-user is set"), "{m}");
        let m = err_about(
            &format!("{POOLED}[monitor]\npassword = \"x\"\n"),
            &[],
            "monitor.user",
        );
        assert!(m.contains("missing: monitor.password is set"), "{m}");
        let m = err_about(
            &format!("{POOLED}[monitor]\nuser = \"m\"\n"),
            &[],
            "monitor.password",
        );
        assert!(m.contains("missing: monitor.user is set"), "{m}");
        let c = ok(
            &format!("{POOLED}[monitor]\nuser = \"m\"\n"),
            &["--monitor-password=pw"],
        );
        assert_eq!(
            (c.monitor_user.as_deref(), c.monitor_password.as_deref()),
            (Some("m"), Some("pw"))
        );
    }

    /// The users of a configuration of `text` (top-level keys and tables) and [`POOLED`].
    fn users(text: &str) -> Vec<UserConfig> {
        ok(&format!("{text}\n{POOLED}"), &[]).users
    }

    /// The error of a configuration of `text` and [`POOLED`], asserting it is about `key`.
    fn user_err(text: &str, key: &str) -> String {
        let text = format!("{text}\n{POOLED}");
        let err = FileConfig::parse(&text, "f.toml").expect_err(&text);
        let message = err.to_string();
        assert_eq!(err.key(), Some(key), "{message}");
        message
    }

    #[test]
    fn users_are_read_with_their_defaults() {
        let list = users(
            r#"
            [[users]]
            name = "app"
            password = "app pass"
            [[users]]
            name = "reporting"
            password = "*5bcb3e6ac345b435c7c2e6b7949a04ce6f6563d3"
            default_schema = "sales"
            max_connections = 20
            active = false
            [[users]]
            name = "nopass"
            password = ""
            "#,
        );
        assert_eq!(
            list,
            vec![
                UserConfig {
                    name: "app".into(),
                    secret: Secret::Cleartext("app pass".into()),
                    default_schema: None,
                    max_connections: 0,
                    active: true,
                    default_hostgroup: 0,
                },
                UserConfig {
                    name: "reporting".into(),
                    secret: Secret::NativeHash(APP_HASH_BYTES),
                    default_schema: Some("sales".into()),
                    max_connections: 20,
                    active: false,
                    default_hostgroup: 0,
                },
                UserConfig {
                    name: "nopass".into(),
                    secret: Secret::Cleartext(String::new()),
                    default_schema: None,
                    max_connections: 0,
                    active: true,
                    default_hostgroup: 0,
                },
            ]
        );
        assert_eq!(users(""), vec![]);
        assert_eq!(users("users = []\n"), vec![]);
        // Inline tables are the same array of tables.
        let inline = users(&format!(
            "users = [{{ name = \"a\", password = \"{APP_HASH}\" }}]\n"
        ));
        assert_eq!(inline[0].secret, Secret::NativeHash(APP_HASH_BYTES));
    }

    #[test]
    fn passwords_are_cleartext_or_a_native_hash() {
        assert_eq!(
            Secret::parse(APP_HASH),
            Ok(Secret::NativeHash(APP_HASH_BYTES))
        );
        assert_eq!(
            Secret::parse(&APP_HASH.to_ascii_lowercase()),
            Ok(Secret::NativeHash(APP_HASH_BYTES)),
            "any case"
        );
        assert_eq!(
            Secret::parse("*5bCb3E6aC345b435C7c2E6b7949A04cE6f6563D3"),
            Ok(Secret::NativeHash(APP_HASH_BYTES))
        );
        // 40 hex digits without the "*" are a cleartext password, as are "*" inside or at the end.
        for text in [
            "5BCB3E6AC345B435C7C2E6B7949A04CE6F6563D3",
            "pa*ss",
            "pass*",
            "",
            " *x",
        ] {
            assert_eq!(
                Secret::parse(text),
                Ok(Secret::Cleartext(text.to_owned())),
                "{text:?}"
            );
        }
        let hash = Secret::NativeHash(APP_HASH_BYTES);
        assert_eq!(hash.as_written(), APP_HASH);
        assert_eq!(Secret::parse(&hash.as_written()), Ok(hash));
        assert_eq!(Secret::Cleartext("x".into()).as_written(), "x");
    }

    /// A caching_sha2_password hash of "app pass" with `salt` (20 bytes), 5000 rounds.
    fn sha2_hash(salt: &str) -> String {
        assert_eq!(salt.len(), 20, "{salt:?}");
        let digest = crate::protocol::auth_server::sha256_crypt(b"app pass", salt.as_bytes(), 5000);
        format!(
            "$A$005${salt}{}",
            String::from_utf8(digest.to_vec()).unwrap()
        )
    }

    #[test]
    fn passwords_may_be_a_caching_sha2_hash() {
        let hash = sha2_hash("abcdefghij0123456789");
        let secret = Secret::parse(&hash).unwrap();
        assert_eq!(secret, Secret::Sha2Crypt(hash.clone()));
        assert_eq!(secret.as_written(), hash);
        assert_eq!(Secret::parse(&secret.as_written()), Ok(secret.clone()));
        let stored = secret.to_stored();
        assert_eq!(stored, Stored::Sha256Crypt(hash.clone()));
        assert!(stored.matches_password(b"app pass"));
        assert!(!stored.matches_password(b"app pas"));
        // Not the prefix "$A$" at the start: cleartext.
        for text in ["$A", "$B$005$x", "x$A$005$", " $A$005$abc"] {
            assert_eq!(
                Secret::parse(text),
                Ok(Secret::Cleartext(text.to_owned())),
                "{text:?}"
            );
        }
        // Salts hold any character: quotes, backslashes, control characters survive the file,
        // the summary and the round trip.
        let odd = sha2_hash("a\"b\\c\u{1}d\u{7f}efghij012345");
        let c = ok(
            &format!(
                "{POOLED}[[users]]\nname = \"s\"\npassword = {}\n",
                toml_string(&odd)
            ),
            &[],
        );
        assert_eq!(c.users[0].secret, Secret::Sha2Crypt(odd.clone()));
        assert!(c.users[0].secret.to_stored().matches_password(b"app pass"));
        let summary = c.summary();
        assert_eq!(
            Config::from_layers(file(&summary), &Cli::default(), HOST).unwrap(),
            c
        );
    }

    #[test]
    fn secrets_become_the_credential_logins_are_checked_against() {
        assert_eq!(
            Secret::Cleartext("pw".into()).to_stored(),
            Stored::Cleartext(b"pw".to_vec())
        );
        assert!(Secret::Cleartext(String::new())
            .to_stored()
            .is_empty_password());
        let native = Secret::NativeHash(APP_HASH_BYTES).to_stored();
        assert_eq!(native, Stored::NativeHash(APP_HASH_BYTES));
        assert!(native.matches_password(b"app"), "APP_HASH is app's");
    }

    #[test]
    fn bad_caching_sha2_hashes_are_refused_clearly_without_echoing_them() {
        let good = sha2_hash("abcdefghij0123456789");
        let rest = &good[7..];
        let long = format!("{good}x");
        let bad_rounds = format!("$A$00G${rest}");
        let zero_rounds = format!("$A$000${rest}");
        let no_dollar = format!("$A$005x{rest}");
        for (bad, why) in [
            ("$A$", "it is 3 bytes long, not 70"),
            (&good[..69], "it is 69 bytes long, not 70"),
            (long.as_str(), "it is 71 bytes long, not 70"),
            (bad_rounds.as_str(), "must be hex digits (not 000)"),
            (zero_rounds.as_str(), "must be hex digits (not 000)"),
            (no_dollar.as_str(), "followed by \"$\""),
        ] {
            let m = user_err(
                &format!("[[users]]\nname = \"b\"\npassword = {}\n", toml_string(bad)),
                "users[0].password",
            );
            assert!(
                m.starts_with(
                    "users[0].password: starts with \"$A$\" but is not a caching_sha2_password \
                     hash"
                ),
                "{m}"
            );
            assert!(
                m.contains("a cleartext password cannot start with \"$A$\""),
                "{m}"
            );
            assert!(m.contains(why), "{bad}: {m}");
            assert!(!m.contains(&rest[..20]), "the text is not echoed: {m}");
        }
    }

    #[test]
    fn default_hostgroup_is_read_and_only_hostgroup_0_exists() {
        let user = "[[users]]\nname = \"a\"\npassword = \"x\"\n";
        assert_eq!(users(user)[0].default_hostgroup, 0);
        assert_eq!(
            users(&format!("{user}default_hostgroup = 0\n"))[0].default_hostgroup,
            0
        );
        let m = user_err(
            &format!("{user}default_hostgroup = 1\n"),
            "users[0].default_hostgroup",
        );
        assert!(
            m.starts_with("users[0].default_hostgroup: 1 is not a hostgroup"),
            "{m}"
        );
        assert!(
            m.contains("only hostgroup 0 (all backends, proxy.backends) exists yet"),
            "{m}"
        );
        for (value, what) in [("-1", "non-negative integer"), ("\"0\"", "non-negative")] {
            let m = user_err(
                &format!("{user}default_hostgroup = {value}\n"),
                "users[0].default_hostgroup",
            );
            assert!(m.contains(what), "{value}: {m}");
        }
    }

    #[test]
    fn bad_native_hashes_are_refused_clearly_without_echoing_them() {
        let forty_one = format!("{APP_HASH}0");
        for (bad, why) in [
            ("*XYZ", "3 characters follow the \"*\", not 40"),
            (&APP_HASH[..40], "39 characters follow the \"*\", not 40"),
            (forty_one.as_str(), "41 characters follow the \"*\", not 40"),
            ("*", "0 characters follow the \"*\", not 40"),
            (
                "*5BCB3E6AC345B435C7C2E6B7949A04CE6F6563DG",
                "character 40 after the \"*\" is not a hex digit",
            ),
            (
                "*ZBCB3E6AC345B435C7C2E6B7949A04CE6F6563D3",
                "character 1 after the \"*\" is not a hex digit",
            ),
        ] {
            let m = user_err(
                &format!("[[users]]\nname = \"a\"\npassword = \"x\"\n[[users]]\nname = \"b\"\npassword = {bad:?}\n"),
                "users[1].password",
            );
            assert!(
                m.starts_with(
                    "users[1].password: starts with \"*\" but is not a mysql_native_password hash"
                ),
                "{m}"
            );
            assert!(
                m.contains("a cleartext password cannot start with \"*\""),
                "{m}"
            );
            assert!(m.contains(why), "{bad}: {m}");
            assert!(
                !m.contains(&bad[1..]) || bad.len() == 1,
                "the text is not echoed: {m}"
            );
        }
    }

    #[test]
    fn users_are_checked_naming_the_full_path() {
        let user = "[[users]]\nname = \"a\"\npassword = \"x\"\n";
        let b = "[[users]]\nname = \"b\"\npassword = \"y\"\n";
        let typo = "[[users]]\nname = \"c\"\npasword = \"x\"\n";
        let m = user_err(&format!("{user}{b}{typo}"), "users[2].pasword");
        assert!(
            m.starts_with("unknown key \"users[2].pasword\" in f.toml"),
            "{m}"
        );
        assert!(
            m.contains(
                "`name`, `password`, `default_schema`, `max_connections`, `active`, \
                 `default_hostgroup`"
            ),
            "{m}"
        );
        let dup = format!("{user}{b}{user}");
        let m = user_err(&dup, "users[2].name");
        assert!(m.contains("\"a\" is already the name of users[0]"), "{m}");
        // Names are case-sensitive, as in MySQL.
        assert_eq!(
            users(&format!(
                "{user}[[users]]\nname = \"A\"\npassword = \"x\"\n"
            ))
            .len(),
            2
        );
        for (text, key, what) in [
            (
                "[[users]]\nname = 3\npassword = \"x\"\n",
                "users[0].name",
                "expected a string",
            ),
            (
                "[[users]]\nname = \"a\"\npassword = 5\n",
                "users[0].password",
                "expected a string",
            ),
            (
                "[[users]]\nname = \"a\"\npassword = \"x\"\ndefault_schema = []\n",
                "users[0].default_schema",
                "expected a string",
            ),
            (
                "[[users]]\nname = \"a\"\npassword = \"x\"\nmax_connections = -1\n",
                "users[0].max_connections",
                "non-negative integer",
            ),
            (
                "[[users]]\nname = \"a\"\npassword = \"x\"\nmax_connections = \"10\"\n",
                "users[0].max_connections",
                "non-negative integer",
            ),
            (
                "[[users]]\nname = \"a\"\npassword = \"x\"\nactive = \"yes\"\n",
                "users[0].active",
                "true or false",
            ),
            (
                "users = 3\n",
                "users",
                "expected an array of [[users]] tables",
            ),
            (
                "[users]\nname = \"a\"\n",
                "users",
                "expected an array of [[users]] tables",
            ),
            (
                "users = [\"a\"]\n",
                "users[0]",
                "expected a [[users]] table",
            ),
            (
                "[[users]]\npassword = \"x\"\n",
                "users[0].name",
                "missing: every user needs a name",
            ),
            (
                "[[users]]\nname = \"\"\npassword = \"x\"\n",
                "users[0].name",
                "must not be empty",
            ),
            (
                "[[users]]\nname = \"bob\"\n",
                "users[0].password",
                "missing: user \"bob\" needs a password",
            ),
            (
                "[[users]]\nname = \"a\"\npassword = \"x\"\ndefault_schema = \"\"\n",
                "users[0].default_schema",
                "must not be empty",
            ),
        ] {
            let m = user_err(text, key);
            assert!(m.starts_with(&format!("{key}: ")), "{m}");
            assert!(m.contains(what), "{key}: {m}");
        }
        // `users` is only a top-level array of tables.
        let err = FileConfig::parse("[proxy]\nusers = []\n", "f.toml").unwrap_err();
        assert_eq!(err.key(), Some("proxy.users"));
        let err = FileConfig::parse("[user]\n", "f.toml").unwrap_err();
        assert!(
            err.to_string().contains("`monitor`, `script`, `users`"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        assert_eq!(
            format!("{:?}", Secret::Cleartext("hunter2".into())),
            "Cleartext(***)"
        );
        assert_eq!(
            format!("{:?}", Secret::NativeHash(APP_HASH_BYTES)),
            "NativeHash(*5BCB…)"
        );
        let hash = sha2_hash("abcdefghij0123456789");
        assert_eq!(
            format!("{:?}", Secret::Sha2Crypt(hash.clone())),
            "Sha2Crypt($A$005$…)"
        );
        let c = ok(
            &format!(
                "{POOLED}[monitor]\nuser = \"mon\"\npassword = \"monpass\"\n[[users]]\nname = \"app\"\npassword = \"hunter2\"\n[[users]]\nname = \"b\"\npassword = \"{APP_HASH}\"\n"
            ),
            &[],
        );
        let debug = format!("{c:?}");
        for secret in ["hunter2", "monpass", &APP_HASH[5..]] {
            assert!(!debug.contains(secret), "{secret} shown: {debug}");
        }
        assert!(debug.contains("monitor_password: Some(***)"), "{debug}");
        assert!(debug.contains("monitor_user: Some(\"mon\")"), "{debug}");
        assert!(debug.contains("listen: []"), "{debug}");
        assert!(
            debug.contains("name: \"app\", secret: Cleartext(***)"),
            "{debug}"
        );
    }

    #[test]
    fn a_summary_without_pooled_mode_has_no_pooled_key_at_its_default() {
        let c = ok(BACKEND, &[]);
        let summary = c.summary();
        assert_eq!(
            summary.lines().count(),
            22,
            "as before pooled mode:\n{summary}"
        );
        for key in KEYS.iter().filter(|key| key.mode == Mode::Pooled) {
            assert!(
                !summary.contains(key.path),
                "{} shown:\n{summary}",
                key.path
            );
        }
        // A pooled key set away from its default is shown even so, to keep the round trip.
        let c = ok(BACKEND, &["--pool-wait-timeout-ms=5"]);
        let summary = c.summary();
        assert!(
            summary.contains("\nproxy.pool_wait_timeout_ms = 5\n"),
            "{summary}"
        );
        assert!(!summary.contains("pool_idle_timeout_ms"), "{summary}");
        assert_eq!(
            Config::from_layers(file(&summary), &Cli::default(), HOST).unwrap(),
            c
        );
        // Users without pooled listeners are kept too.
        let c = ok(
            &format!("{BACKEND}[[users]]\nname = \"a\"\npassword = \"b\"\n"),
            &[],
        );
        assert_eq!(
            Config::from_layers(file(&c.summary()), &Cli::default(), HOST).unwrap(),
            c
        );
    }

    #[test]
    fn pooled_summary_shows_every_key_and_the_users_and_reproduces_the_config() {
        let c = ok(
            &format!(
                r#"{POOLED}backend_source = "127.0.0.2"
                pool_max_age_ms = 0
                [log]
                stats_file = "/tmp/s.json"
                [monitor]
                user = "mon"
                password = "mon \"pass\""
                [[users]]
                name = "app"
                password = "app pass"
                default_schema = "app"
                [[users]]
                name = "reporting"
                password = "{}"
                max_connections = 5
                active = false
                "#,
                APP_HASH.to_ascii_lowercase()
            ),
            &["--users-refresh-ms=1000"],
        );
        let summary = c.summary();
        for key in KEYS.iter().filter(|key| key.mode != Mode::Script) {
            let line = format!("\n{} = ", key.path);
            assert!(summary.contains(&line), "{} missing:\n{summary}", key.path);
        }
        for line in [
            "\nproxy.listen = []\n",
            "\nproxy.pooled_listen = [\"127.0.0.1:6034\"]\n",
            "\nproxy.max_backend_connections = 100\n",
            "\nproxy.pool_max_age_ms = 0\n",
            "\nmonitor.users_refresh_ms = 1000\n",
            "\n\n[[users]]\nname = \"app\"\npassword = \"app pass\"\ndefault_schema = \"app\"\nmax_connections = 0\nactive = true\ndefault_hostgroup = 0\n",
            &format!("\n\n[[users]]\nname = \"reporting\"\npassword = \"{APP_HASH}\"\nmax_connections = 5\nactive = false\ndefault_hostgroup = 0\n"),
        ] {
            assert!(summary.contains(line), "{line:?} missing:\n{summary}");
        }
        // One line per key after the header, then the users.
        let keys = summary.split("\n\n[[users]]").next().unwrap();
        let shown = KEYS.iter().filter(|k| k.mode != Mode::Script).count();
        assert_eq!(keys.lines().count(), 1 + shown, "{summary}");
        assert!(
            summary.ends_with("active = false\ndefault_hostgroup = 0\n"),
            "{summary}"
        );
        let again = Config::from_layers(file(&summary), &Cli::default(), HOST).unwrap();
        assert_eq!(again, c);
        assert_eq!(again.summary(), summary);
    }
}
