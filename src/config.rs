//! Typed configuration, the proxy's "chassis": the TOML file named by `--config` (MySQL Proxy's
//! `--defaults-file`) is read first, then command-line options override it key by key, then the
//! merged values are validated into a [`Config`]. Every limit of the proxy lives here, together with
//! the arithmetic that decides how many connections the io_uring fixed-file tables can hold.
//!
//! Errors ([`ConfigError`]) always name the offending key: its TOML path (`proxy.listen`) when the
//! value came from the file or a default, its flag (`--listen`) when it came from the command line.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// The validated configuration the rest of the proxy reads. All sizes in bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub backends: Vec<SocketAddr>,
    /// Client connections allowed at once, whole proxy.
    pub max_connections: usize,
    /// Largest logical packet a client may send (larger ones end that client).
    pub max_packet_size: usize,
    pub connect_timeout_ms: u64,
    pub drain_timeout_ms: u64,
    /// Worker threads, resolved (never 0).
    pub workers: usize,
    pub pin_cpus: bool,
    pub ring_entries: u32,
    /// Size of each provided receive buffer.
    pub buffer_size: u32,
    /// Provided receive buffers per worker (power of two).
    pub buffer_count: u16,
    /// Unsent bytes queued for one connection above which the proxy stops reading its peer.
    pub send_high_water: usize,
    pub log_level: log::LevelFilter,
    /// Where to write the summed per-worker counters as JSON, about once a second and at exit.
    pub stats_file: Option<std::path::PathBuf>,
}

/// Fixed-file slots each worker keeps back from client connections: for the listener and for
/// accepting a connection only to refuse it (over `max_connections`) with a proper error packet.
pub const RESERVED_SLOTS_PER_WORKER: u32 = 16;

/// Fixed-file slots one pass-through client occupies: its own socket and its backend socket.
pub const SLOTS_PER_CLIENT: u32 = 2;

/// Upper bound on the fixed-file table we ever ask for, whatever RLIMIT_NOFILE says.
const MAX_FIXED_FILE_SLOTS: u64 = 1 << 20;

/// Used only if `getrlimit(RLIMIT_NOFILE)` itself fails: the usual Linux default soft limit.
const FALLBACK_NOFILE: u64 = 1024;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:6033";
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
pub const DEFAULT_MAX_PACKET_SIZE: u64 = 64 * MIB;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_WORKERS: u64 = 0;
pub const DEFAULT_PIN_CPUS: bool = true;
pub const DEFAULT_RING_ENTRIES: u64 = 4096;
pub const DEFAULT_BUFFER_SIZE: u64 = 16 * KIB;
pub const DEFAULT_BUFFER_COUNT: u64 = 1024;
pub const DEFAULT_SEND_HIGH_WATER: u64 = MIB;
pub const DEFAULT_LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;

/// Largest worker count accepted (after resolving 0 to the number of cores).
pub const MAX_WORKERS: u64 = 1024;
/// Longest connect or drain timeout accepted: one day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

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

/// Most clients `workers` workers can hold when each ring's fixed-file table has `slots_per_worker`
/// slots: `workers * (slots_per_worker - RESERVED_SLOTS_PER_WORKER) / SLOTS_PER_CLIENT`.
pub fn max_possible_connections(workers: u64, slots_per_worker: u64) -> u64 {
    workers.saturating_mul(slots_per_worker.saturating_sub(u64::from(RESERVED_SLOTS_PER_WORKER)))
        / u64::from(SLOTS_PER_CLIENT)
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

/// Command line. Every option overrides the same key of the `--config` file.
#[derive(Parser, Debug, Clone, Default, PartialEq)]
#[command(
    name = "ringproxy",
    version,
    about = "A MySQL-protocol proxy for Linux on io_uring",
    long_about = "A MySQL-protocol proxy for Linux on io_uring.\n\n\
        Settings are read from the TOML file given by --config (alias --defaults-file) first; \
        command-line options then override it key by key. Address lists accept the option \
        repeated and/or comma-separated values. Sizes accept a number of bytes or a number with \
        a B, KiB, MiB, GiB, K, M or G suffix (K = KiB, M = MiB, G = GiB)."
)]
pub struct Cli {
    /// TOML configuration file, read before the command-line options are applied.
    #[arg(long = "config", visible_alias = "defaults-file", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to accept clients on, IP:PORT (repeatable, comma-separated) [default: 127.0.0.1:6033]
    #[arg(
        long = "listen",
        visible_alias = "proxy-address",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,

    /// Backend MySQL server, IP:PORT (repeatable, comma-separated); required
    #[arg(
        long = "backend",
        visible_alias = "proxy-backend-addresses",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub backends: Vec<String>,

    /// Client connections allowed at once, whole proxy [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,

    /// Largest packet a client may send, 1KiB..=1GiB [default: 64MiB]
    #[arg(long, value_name = "SIZE")]
    pub max_packet_size: Option<String>,

    /// Backend connect timeout in milliseconds [default: 5000]
    #[arg(long, value_name = "N")]
    pub connect_timeout_ms: Option<u64>,

    /// On SIGINT/SIGTERM, how long in-flight queries may finish, in milliseconds [default: 10000]
    #[arg(long, value_name = "N")]
    pub drain_timeout_ms: Option<u64>,

    /// Worker threads; 0 = one per core; may exceed the core count, at most 1024 [default: 0]
    #[arg(long, visible_alias = "event-threads", value_name = "N")]
    pub workers: Option<u64>,

    /// Pin each worker to a CPU [default]
    #[arg(long, overrides_with = "no_pin_cpus")]
    pub pin_cpus: bool,

    /// Do not pin workers to CPUs
    #[arg(long, overrides_with = "pin_cpus")]
    pub no_pin_cpus: bool,

    /// Submission-queue entries per worker ring, power of two in 64..=32768 [default: 4096]
    #[arg(long, value_name = "N")]
    pub ring_entries: Option<u64>,

    /// Size of each provided receive buffer, 4KiB..=1MiB [default: 16KiB]
    #[arg(long, value_name = "SIZE")]
    pub buffer_size: Option<String>,

    /// Provided receive buffers per worker, power of two in 16..=32768 [default: 1024]
    #[arg(long, value_name = "N")]
    pub buffer_count: Option<u64>,

    /// Unsent bytes per connection above which the proxy stops reading its peer; >= buffer size [default: 1MiB]
    #[arg(long, value_name = "SIZE")]
    pub send_high_water: Option<String>,

    /// Log level: error, warn, info, debug, trace or off (RUST_LOG is not consulted) [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Write the proxy's counters as JSON to FILE about once a second and at exit (for benchmarks)
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,

    /// Validate the configuration, print the effective settings and exit
    #[arg(long)]
    pub check_config: bool,
}

impl Cli {
    /// `Some(true)` for `--pin-cpus`, `Some(false)` for `--no-pin-cpus` (the last one given wins),
    /// `None` when neither was given.
    pub fn pin_cpus_override(&self) -> Option<bool> {
        if self.pin_cpus {
            Some(true)
        } else if self.no_pin_cpus {
            Some(false)
        } else {
            None
        }
    }
}

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

/// The TOML file as written: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(default)]
    pub log: LogSection,
}

/// `[proxy]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [proxy] table")]
pub struct ProxySection {
    pub listen: Option<AddrList>,
    pub backends: Option<AddrList>,
    pub max_connections: Option<u64>,
    pub max_packet_size: Option<SizeSpec>,
    pub connect_timeout_ms: Option<u64>,
    pub drain_timeout_ms: Option<u64>,
}

/// `[runtime]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [runtime] table")]
pub struct RuntimeSection {
    pub workers: Option<u64>,
    pub pin_cpus: Option<bool>,
    pub ring_entries: Option<u64>,
    pub buffer_size: Option<SizeSpec>,
    pub buffer_count: Option<u64>,
    pub send_high_water: Option<SizeSpec>,
}

/// `[log]` table.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [log] table")]
pub struct LogSection {
    pub level: Option<String>,
    pub stats_file: Option<PathBuf>,
}

impl FileConfig {
    /// Parses the text of a configuration file; `origin` (usually the file's path) appears in errors.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.to_owned(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        FileConfig::deserialize(table).map_err(|e| schema_error(&e, origin))
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

/// Turns a serde error from deserializing the parsed table into an error naming the full key.
/// toml reports the path of the failing value as a trailing "in `a.b`" line.
fn schema_error(err: &toml::de::Error, origin: &str) -> ConfigError {
    let text = err.to_string();
    let text = text.trim_end();
    let (message, path) = match text.rsplit_once("\nin `") {
        Some((message, rest)) => (message.trim_end(), rest.trim_end_matches('`')),
        None => (text, ""),
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let key = if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            let expected = expected.trim_start_matches(',').trim();
            return ConfigError::UnknownKey {
                key,
                origin: origin.to_owned(),
                expected: expected.to_owned(),
            };
        }
    }
    ConfigError::WrongType {
        key: if path.is_empty() {
            "(top level)".to_owned()
        } else {
            path.to_owned()
        },
        origin: origin.to_owned(),
        problem: message
            .replace("expected u64", "expected a non-negative integer")
            .replace("expected a boolean", "expected true or false"),
    }
}

/// Where a merged value came from; decides how errors name the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Default,
    File,
    Cli,
}

/// A key's two spellings.
struct Key {
    toml: &'static str,
    flag: &'static str,
}

const LISTEN: Key = Key {
    toml: "proxy.listen",
    flag: "--listen",
};
const BACKENDS: Key = Key {
    toml: "proxy.backends",
    flag: "--backend",
};
const MAX_CONNECTIONS: Key = Key {
    toml: "proxy.max_connections",
    flag: "--max-connections",
};
const MAX_PACKET_SIZE: Key = Key {
    toml: "proxy.max_packet_size",
    flag: "--max-packet-size",
};
const CONNECT_TIMEOUT_MS: Key = Key {
    toml: "proxy.connect_timeout_ms",
    flag: "--connect-timeout-ms",
};
const DRAIN_TIMEOUT_MS: Key = Key {
    toml: "proxy.drain_timeout_ms",
    flag: "--drain-timeout-ms",
};
const WORKERS: Key = Key {
    toml: "runtime.workers",
    flag: "--workers",
};
const RING_ENTRIES: Key = Key {
    toml: "runtime.ring_entries",
    flag: "--ring-entries",
};
const BUFFER_SIZE: Key = Key {
    toml: "runtime.buffer_size",
    flag: "--buffer-size",
};
const BUFFER_COUNT: Key = Key {
    toml: "runtime.buffer_count",
    flag: "--buffer-count",
};
const SEND_HIGH_WATER: Key = Key {
    toml: "runtime.send_high_water",
    flag: "--send-high-water",
};
const LOG_LEVEL: Key = Key {
    toml: "log.level",
    flag: "--log-level",
};

/// A merged, not yet validated value and where it came from.
#[derive(Debug, Clone)]
struct Layered<T> {
    value: T,
    origin: Origin,
}

impl<T> Layered<T> {
    fn pick(default: T, file: Option<T>, cli: Option<T>) -> Layered<T> {
        match (cli, file) {
            (Some(value), _) => Layered {
                value,
                origin: Origin::Cli,
            },
            (None, Some(value)) => Layered {
                value,
                origin: Origin::File,
            },
            (None, None) => Layered {
                value: default,
                origin: Origin::Default,
            },
        }
    }

    fn invalid(&self, key: &Key, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: match self.origin {
                Origin::Cli => key.flag.to_owned(),
                Origin::Default | Origin::File => key.toml.to_owned(),
            },
            problem: problem.into(),
        }
    }
}

/// File values with command-line values laid over them.
struct Merged {
    listen: Layered<Vec<String>>,
    backends: Layered<Vec<String>>,
    max_connections: Layered<u64>,
    max_packet_size: Layered<SizeSpec>,
    connect_timeout_ms: Layered<u64>,
    drain_timeout_ms: Layered<u64>,
    workers: Layered<u64>,
    pin_cpus: bool,
    ring_entries: Layered<u64>,
    buffer_size: Layered<SizeSpec>,
    buffer_count: Layered<u64>,
    send_high_water: Layered<SizeSpec>,
    log_level: Layered<String>,
    stats_file: Option<PathBuf>,
}

fn non_empty(list: &[String]) -> Option<Vec<String>> {
    (!list.is_empty()).then(|| list.to_vec())
}

impl Merged {
    fn new(file: FileConfig, cli: &Cli) -> Merged {
        let FileConfig {
            proxy,
            runtime,
            log,
        } = file;
        let text = |s: &Option<String>| s.clone().map(SizeSpec::Text);
        Merged {
            listen: Layered::pick(
                vec![DEFAULT_LISTEN.to_owned()],
                proxy.listen.map(|l| l.0),
                non_empty(&cli.listen),
            ),
            backends: Layered::pick(
                Vec::new(),
                proxy.backends.map(|l| l.0),
                non_empty(&cli.backends),
            ),
            max_connections: Layered::pick(
                DEFAULT_MAX_CONNECTIONS,
                proxy.max_connections,
                cli.max_connections,
            ),
            max_packet_size: Layered::pick(
                SizeSpec::Bytes(DEFAULT_MAX_PACKET_SIZE),
                proxy.max_packet_size,
                text(&cli.max_packet_size),
            ),
            connect_timeout_ms: Layered::pick(
                DEFAULT_CONNECT_TIMEOUT_MS,
                proxy.connect_timeout_ms,
                cli.connect_timeout_ms,
            ),
            drain_timeout_ms: Layered::pick(
                DEFAULT_DRAIN_TIMEOUT_MS,
                proxy.drain_timeout_ms,
                cli.drain_timeout_ms,
            ),
            workers: Layered::pick(DEFAULT_WORKERS, runtime.workers, cli.workers),
            pin_cpus: Layered::pick(DEFAULT_PIN_CPUS, runtime.pin_cpus, cli.pin_cpus_override())
                .value,
            ring_entries: Layered::pick(
                DEFAULT_RING_ENTRIES,
                runtime.ring_entries,
                cli.ring_entries,
            ),
            buffer_size: Layered::pick(
                SizeSpec::Bytes(DEFAULT_BUFFER_SIZE),
                runtime.buffer_size,
                text(&cli.buffer_size),
            ),
            buffer_count: Layered::pick(
                DEFAULT_BUFFER_COUNT,
                runtime.buffer_count,
                cli.buffer_count,
            ),
            send_high_water: Layered::pick(
                SizeSpec::Bytes(DEFAULT_SEND_HIGH_WATER),
                runtime.send_high_water,
                text(&cli.send_high_water),
            ),
            log_level: Layered::pick(
                DEFAULT_LOG_LEVEL.as_str().to_ascii_lowercase(),
                log.level,
                cli.log_level.clone(),
            ),
            stats_file: cli.stats_file.clone().or(log.stats_file),
        }
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

fn parse_addrs(list: &Layered<Vec<String>>, key: &Key) -> Result<Vec<SocketAddr>, ConfigError> {
    if list.value.is_empty() {
        return Err(list.invalid(key, "at least one address is required (IP:PORT)"));
    }
    let mut out: Vec<SocketAddr> = Vec::with_capacity(list.value.len());
    for text in &list.value {
        let addr: SocketAddr = text.trim().parse().map_err(|_| {
            list.invalid(
                key,
                format!("{text:?} is not a valid address (expected IP:PORT)"),
            )
        })?;
        if out.contains(&addr) {
            return Err(list.invalid(key, format!("{addr} is listed twice")));
        }
        out.push(addr);
    }
    Ok(out)
}

fn size_in(v: &Layered<SizeSpec>, key: &Key, min: u64, max: u64) -> Result<u64, ConfigError> {
    let bytes = v.value.resolve().map_err(|p| v.invalid(key, p))?;
    if !(min..=max).contains(&bytes) {
        return Err(v.invalid(
            key,
            format!(
                "{} is out of range (allowed {}..={})",
                v.value.shown(),
                format_size(min),
                format_size(max)
            ),
        ));
    }
    Ok(bytes)
}

fn power_of_two_in(v: &Layered<u64>, key: &Key, min: u64, max: u64) -> Result<u64, ConfigError> {
    if !v.value.is_power_of_two() || !(min..=max).contains(&v.value) {
        return Err(v.invalid(
            key,
            format!(
                "{} is not allowed (must be a power of two in {min}..={max})",
                v.value
            ),
        ));
    }
    Ok(v.value)
}

fn int_in(v: &Layered<u64>, key: &Key, min: u64, max: u64) -> Result<u64, ConfigError> {
    if !(min..=max).contains(&v.value) {
        return Err(v.invalid(
            key,
            format!("{} is out of range (allowed {min}..={max})", v.value),
        ));
    }
    Ok(v.value)
}

fn to_usize(n: u64) -> usize {
    // Every value converted here was bounded above by at most 2^40 during validation, and ringproxy
    // only builds for 64-bit Linux targets where usize is 64 bits wide.
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Merged {
    fn validate(self, host: Host) -> Result<Config, ConfigError> {
        let listen = parse_addrs(&self.listen, &LISTEN)?;
        let backends = parse_addrs(&self.backends, &BACKENDS)?;
        let log_level: log::LevelFilter = self.log_level.value.trim().parse().map_err(|_| {
            self.log_level.invalid(
                &LOG_LEVEL,
                format!(
                    "{:?} is not a log level (expected error, warn, info, debug, trace or off)",
                    self.log_level.value
                ),
            )
        })?;

        let workers = if self.workers.value == 0 {
            host.cores.max(1)
        } else {
            self.workers.value
        };
        if workers > MAX_WORKERS {
            return Err(self.workers.invalid(
                &WORKERS,
                format!(
                    "{} workers is too many (allowed 0 = one per core, or 1..={MAX_WORKERS})",
                    workers
                ),
            ));
        }

        let ring_entries = power_of_two_in(&self.ring_entries, &RING_ENTRIES, 64, 32768)?;
        let buffer_count = power_of_two_in(&self.buffer_count, &BUFFER_COUNT, 16, 32768)?;
        let buffer_size = size_in(&self.buffer_size, &BUFFER_SIZE, 4 * KIB, MIB)?;
        let max_packet_size = size_in(&self.max_packet_size, &MAX_PACKET_SIZE, KIB, GIB)?;
        let send_high_water = self
            .send_high_water
            .value
            .resolve()
            .map_err(|p| self.send_high_water.invalid(&SEND_HIGH_WATER, p))?;
        if send_high_water < buffer_size {
            return Err(self.send_high_water.invalid(
                &SEND_HIGH_WATER,
                format!(
                    "{} is smaller than the receive buffer size ({}); it must be at least \
                     buffer_size so one full receive can always be queued",
                    self.send_high_water.value.shown(),
                    format_size(buffer_size)
                ),
            ));
        }
        let connect_timeout_ms = int_in(
            &self.connect_timeout_ms,
            &CONNECT_TIMEOUT_MS,
            1,
            MAX_TIMEOUT_MS,
        )?;
        let drain_timeout_ms =
            int_in(&self.drain_timeout_ms, &DRAIN_TIMEOUT_MS, 0, MAX_TIMEOUT_MS)?;

        let ceiling = max_possible_connections(workers, host.slots_per_worker);
        // The built-in default adapts to what this host can hold; only a value the user chose
        // is refused when it is impossible.
        let max_connections = match self.max_connections.origin {
            Origin::Default => self.max_connections.value.min(ceiling).max(1),
            Origin::File | Origin::Cli => self.max_connections.value,
        };
        if max_connections == 0 {
            return Err(self
                .max_connections
                .invalid(&MAX_CONNECTIONS, "must be at least 1"));
        }
        if max_connections > ceiling {
            return Err(self.max_connections.invalid(
                &MAX_CONNECTIONS,
                format!(
                    "{max_connections} is more than {workers} worker(s) can hold: every \
                     pass-through client needs {SLOTS_PER_CLIENT} slots (client socket + backend \
                     socket) in its worker ring's fixed-file table, the kernel caps each table at \
                     RLIMIT_NOFILE = {nofile}, and {RESERVED_SLOTS_PER_WORKER} slots per worker \
                     are reserved, so the ceiling is {workers} * ({nofile} - \
                     {RESERVED_SLOTS_PER_WORKER}) / {SLOTS_PER_CLIENT} = {ceiling}; raise \
                     RLIMIT_NOFILE (ulimit -n), add workers, or lower max_connections",
                    nofile = host.slots_per_worker,
                ),
            ));
        }

        Ok(Config {
            listen,
            backends,
            max_connections: to_usize(max_connections),
            max_packet_size: to_usize(max_packet_size),
            connect_timeout_ms,
            drain_timeout_ms,
            workers: to_usize(workers),
            pin_cpus: self.pin_cpus,
            // The casts below are lossless: each value was range-checked above
            // (ring_entries <= 32768, buffer_size <= 1MiB, buffer_count <= 32768).
            ring_entries: ring_entries as u32,
            buffer_size: buffer_size as u32,
            buffer_count: buffer_count as u16,
            send_high_water: to_usize(send_high_water),
            log_level,
            stats_file: self.stats_file,
        })
    }
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

    /// Most client connections this configuration's workers can hold on this machine.
    pub fn connection_ceiling(&self) -> u64 {
        max_possible_connections(
            self.workers as u64,
            u64::from(fixed_file_slots_per_worker()),
        )
    }

    /// A one-screen summary of the effective configuration. It is itself a valid configuration
    /// file: feeding it back through `--config` yields the same [`Config`].
    pub fn summary(&self) -> String {
        let host = Host::current();
        let addrs = |list: &[SocketAddr]| {
            list.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let size = |bytes: u64| {
            let text = format_size(bytes);
            if text.ends_with("iB") {
                format!("\"{text}\"")
            } else {
                bytes.to_string()
            }
        };
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# ringproxy effective configuration");
        let _ = writeln!(out, "[proxy]");
        let _ = writeln!(out, "listen = [{}]", addrs(&self.listen));
        let _ = writeln!(out, "backends = [{}]", addrs(&self.backends));
        let _ = writeln!(
            out,
            "max_connections = {}  # ceiling {} = {} workers * (RLIMIT_NOFILE {} - {}) / {}",
            self.max_connections,
            max_possible_connections(self.workers as u64, host.slots_per_worker),
            self.workers,
            host.slots_per_worker,
            RESERVED_SLOTS_PER_WORKER,
            SLOTS_PER_CLIENT
        );
        let _ = writeln!(
            out,
            "max_packet_size = {}  # {} bytes",
            size(self.max_packet_size as u64),
            self.max_packet_size
        );
        let _ = writeln!(out, "connect_timeout_ms = {}", self.connect_timeout_ms);
        let _ = writeln!(out, "drain_timeout_ms = {}", self.drain_timeout_ms);
        let _ = writeln!(out, "[runtime]");
        let _ = writeln!(
            out,
            "workers = {}  # {} core(s) available",
            self.workers, host.cores
        );
        let _ = writeln!(out, "pin_cpus = {}", self.pin_cpus);
        let _ = writeln!(out, "ring_entries = {}", self.ring_entries);
        let _ = writeln!(
            out,
            "buffer_size = {}  # {} bytes",
            size(u64::from(self.buffer_size)),
            self.buffer_size
        );
        let _ = writeln!(
            out,
            "buffer_count = {}  # {} per worker in receive buffers",
            self.buffer_count,
            format_size(u64::from(self.buffer_size) * u64::from(self.buffer_count))
        );
        let _ = writeln!(
            out,
            "send_high_water = {}  # {} bytes",
            size(self.send_high_water as u64),
            self.send_high_water
        );
        let _ = writeln!(out, "[log]");
        let _ = writeln!(
            out,
            "level = \"{}\"",
            self.log_level.as_str().to_ascii_lowercase()
        );
        if let Some(path) = &self.stats_file {
            let _ = writeln!(out, "stats_file = {:?}", path.display().to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.max_packet_size, 64 << 20);
        assert_eq!(c.connect_timeout_ms, 5_000);
        assert_eq!(c.drain_timeout_ms, 10_000);
        assert_eq!(c.workers, 2, "workers = 0 resolves to the core count");
        assert!(c.pin_cpus);
        assert_eq!(c.ring_entries, 4096);
        assert_eq!(c.buffer_size, 16 << 10);
        assert_eq!(c.buffer_count, 1024);
        assert_eq!(c.send_high_water, 1 << 20);
        assert_eq!(c.log_level, log::LevelFilter::Info);
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
            [runtime]
            workers = 3
            pin_cpus = false
            ring_entries = 256
            buffer_size = 8192
            buffer_count = 64
            send_high_water = "256KiB"
            [log]
            level = "debug"
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
            [runtime]
            workers = 3
            pin_cpus = false
            ring_entries = 256
            buffer_size = 8192
            buffer_count = 64
            send_high_water = "256KiB"
            [log]
            level = "debug"
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

        // Keys not given on the command line keep the file's values.
        let c = ok(text, &["--workers=1"]);
        assert_eq!(c.listen, vec![addr("0.0.0.0:7000")]);
        assert_eq!(c.max_connections, 1234);
        assert!(!c.pin_cpus);
        assert_eq!(c.workers, 1);
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
        assert_eq!(
            ok(BACKEND, &["--max-connections=19984"]).max_connections,
            19_984
        );
        let m = err_about(BACKEND, &["--max-connections=19985"], "--max-connections");
        assert!(m.contains("RLIMIT_NOFILE = 20000"), "{m}");
        assert!(m.contains("2 * (20000 - 16) / 2 = 19984"), "{m}");
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
        // A tiny RLIMIT_NOFILE leaves no room at all.
        let tiny = Host {
            cores: 4,
            slots_per_worker: 16,
        };
        let err =
            Config::from_layers(file(BACKEND), &cli(&["--max-connections=1"]), tiny).unwrap_err();
        assert!(err.to_string().contains("= 0;"), "{err}");
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
        let ceiling = max_possible_connections(1, Host::current().slots_per_worker);
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
        assert_eq!(max_possible_connections(2, 20_000), 19_984);
        assert_eq!(max_possible_connections(1, 1024), 504);
        assert_eq!(max_possible_connections(3, 10), 0);
        assert_eq!(max_possible_connections(0, 20_000), 0);
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
}
