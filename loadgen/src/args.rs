//! The command line (see /work/notes/loadgen-cli.md, the contract) and its validation into a
//! [`Plan`]: every check that can fail before a connection is opened lives here, and each
//! failure is a plain sentence (the binary exits with status 2 on it).

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ringproxy::protocol::constants::{COM_QUERY, COM_STMT_PREPARE, MAX_PAYLOAD_LEN};
use ringproxy::protocol::framing::write_packet;
use ringproxy::protocol::scanner::MAX_PIPELINE;

use crate::client::Credentials;

/// Fixed-file slots each loadgen ring keeps back (the rate workload's metronome socket, slack).
pub const RESERVED_SLOTS: u32 = 16;
/// Most queries a `--mix` may name (each is prepared on every connection with `--prepared`).
pub const MAX_MIX: usize = 16;
const DEFAULT_QUERY: &str = "SELECT 1";

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "MySQL load generator on ringproxy's io_uring core, and a mock MySQL server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open --connections connections (spread over --ramp), log in, report how fast.
    Connect(LoadArgs),
    /// Open the connections and hold them idle for --duration (--active-fraction of them query).
    Idle(LoadArgs),
    /// Closed loop: every connection sends its next query as soon as the last reply ended.
    Qps(LoadArgs),
    /// Open loop at --rate queries per second; latency counts from the intended send time.
    Rate(LoadArgs),
    /// --depth queries in flight per connection.
    Pipeline(LoadArgs),
    /// Run the mock MySQL server.
    Serve(crate::mock::ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Server to drive.
    #[arg(long, default_value = "127.0.0.1:6033")]
    pub target: String,
    #[arg(long, default_value = "app")]
    pub user: String,
    #[arg(long, default_value = "app")]
    pub password: String,
    /// Default schema ("" for none).
    #[arg(long, default_value = "app")]
    pub db: String,
    #[arg(long, default_value_t = 64)]
    pub connections: u64,
    /// Worker threads, one io_uring ring each (default: number of cores, or as many rings as
    /// --connections needs: each holds RLIMIT_NOFILE sockets).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds of the measured phase (connect: time limit).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds over which connection opening is spread.
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// IPv4 source range A-B (or one address), used round-robin per connection (default: the
    /// kernel chooses; to a loopback target, 127.0.0.2 on when one address's ports would not do).
    #[arg(long)]
    pub source: Option<String>,
    /// Query text (default "SELECT 1").
    #[arg(long)]
    pub query: Option<String>,
    /// Verify every reply has N rows (default 1 for the default query, else unchecked).
    #[arg(long)]
    pub expect_rows: Option<u64>,
    /// Prepare the query once per connection, then COM_STMT_EXECUTE it.
    #[arg(long)]
    pub prepared: bool,
    /// Weighted mix of queries, e.g. "SELECT 1=80,SELECT * FROM seq_1_to_10=20".
    #[arg(long)]
    pub mix: Option<String>,
    /// Rate workload: target queries per second (all connections together).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Pipeline workload: queries in flight per connection (default 8, at most 32).
    #[arg(long)]
    pub depth: Option<usize>,
    /// Idle workload: fraction of connections that run closed-loop queries.
    #[arg(long)]
    pub active_fraction: Option<f64>,
    /// Target process: report its CPU seconds, RSS and the kernel's socket memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// One progress line per second on stderr (default: on when --duration >= 10).
    #[arg(long, conflicts_with = "no_progress")]
    pub progress: bool,
    /// No progress lines.
    #[arg(long)]
    pub no_progress: bool,
    /// Do not ask for CLIENT_DEPRECATE_EOF at login, as clients older than MySQL 5.7 (and proxies
    /// that cannot parse OK-terminated resultsets, such as MySQL Proxy 0.8) expect.
    #[arg(long)]
    pub no_deprecate_eof: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Connect,
    Idle,
    Qps,
    Rate,
    Pipeline,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Connect => "connect",
            Workload::Idle => "idle",
            Workload::Qps => "qps",
            Workload::Rate => "rate",
            Workload::Pipeline => "pipeline",
        }
    }
}

/// One query of the workload, with its packets built once for the whole run.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    pub sql: String,
    /// Relative weight in the mix.
    pub weight: u32,
    /// The framed COM_QUERY packet.
    pub packet: &'static [u8],
    /// The framed COM_STMT_PREPARE packet.
    pub prepare: &'static [u8],
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub target: SocketAddr,
    pub target_text: String,
    pub cred: Credentials,
    pub connections: u32,
    pub threads: usize,
    pub duration: Duration,
    pub ramp: Duration,
    pub sources: Vec<Ipv4Addr>,
    pub queries: Vec<QuerySpec>,
    /// Sum of the query weights.
    pub weight_total: u32,
    pub expect_rows: Option<u64>,
    pub prepared: bool,
    /// Rate workload: queries per second, all threads together.
    pub rate: f64,
    /// Queries in flight per connection (1 except for the pipeline workload).
    pub depth: usize,
    /// Idle workload: fraction of the connections that query.
    pub active_fraction: f64,
    pub pid: Option<u32>,
    pub json: bool,
    pub progress: bool,
    /// Ask for CLIENT_DEPRECATE_EOF at login (when the server offers it).
    pub deprecate_eof: bool,
}

impl Plan {
    /// Connections thread `t` owns: global indices t, t + threads, t + 2*threads, ...
    pub fn connections_of(&self, t: usize) -> u32 {
        let n = self.connections as usize;
        (n / self.threads + usize::from(t < n % self.threads)) as u32
    }

    /// Whether the connection with global index `g` runs queries.
    pub fn is_active(&self, g: u32) -> bool {
        match self.workload {
            Workload::Connect => false,
            Workload::Idle => {
                let f = self.active_fraction;
                ((g as f64 + 1.0) * f).floor() > (g as f64 * f).floor()
            }
            _ => true,
        }
    }

    /// The source address of the connection with global index `g`.
    pub fn source_of(&self, g: u32) -> Option<SocketAddr> {
        if self.sources.is_empty() {
            return None;
        }
        let ip = self.sources[g as usize % self.sources.len()];
        Some(SocketAddr::from((ip, 0)))
    }
}

/// Leaks a buffer built once for the whole run, so every connection can send it with
/// `Io::send_static` (no copy, no allocation per query).
pub fn leak(v: Vec<u8>) -> &'static [u8] {
    Box::leak(v.into_boxed_slice())
}

fn packet(cmd: u8, body: &[u8]) -> &'static [u8] {
    let mut p = Vec::with_capacity(body.len() + 1);
    p.push(cmd);
    p.extend_from_slice(body);
    let mut out = Vec::with_capacity(p.len() + 4);
    write_packet(&mut out, 0, &p);
    leak(out)
}

/// Parses "SQL=W,SQL=W": an item ends at a comma that follows "=digits", so the SQL itself may
/// contain commas and equal signs.
pub fn parse_mix(spec: &str) -> Result<Vec<(String, u32)>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for piece in spec.split(',') {
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(piece);
        if let Some((sql, w)) = current.rsplit_once('=') {
            let w = w.trim();
            if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) {
                let weight: u32 = w
                    .parse()
                    .map_err(|_| format!("--mix: weight {w:?} is too large"))?;
                let sql = sql.trim();
                if sql.is_empty() {
                    return Err(format!("--mix: empty query before ={w}"));
                }
                if weight == 0 {
                    return Err(format!("--mix: weight of {sql:?} is 0"));
                }
                out.push((sql.to_string(), weight));
                current.clear();
            }
        }
    }
    if !current.trim().is_empty() {
        return Err(format!(
            "--mix: {:?} has no \"=WEIGHT\" (expected \"SQL=WEIGHT,SQL=WEIGHT\")",
            current.trim()
        ));
    }
    if out.is_empty() {
        return Err("--mix: no queries".into());
    }
    if out.len() > MAX_MIX {
        return Err(format!("--mix: at most {MAX_MIX} queries"));
    }
    Ok(out)
}

/// Parses "A-B" or "A" into the IPv4 addresses from A to B inclusive.
pub fn parse_source(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let (a, b) = spec.split_once('-').unwrap_or((spec, spec));
    let parse = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("--source: {s:?} is not an IPv4 address (expected A-B)"))
    };
    let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
    if a > b {
        return Err(format!(
            "--source: {spec}: the range is empty (first > last)"
        ));
    }
    if b - a >= 1 << 16 {
        return Err(format!("--source: {spec}: more than 65536 addresses"));
    }
    Ok((a..=b).map(Ipv4Addr::from).collect())
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    target
        .to_socket_addrs()
        .map_err(|e| format!("--target {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("--target {target}: no address"))
}

/// Validates the arguments of a load workload. `slots` is the fixed-file table size of one ring.
pub fn plan(workload: Workload, a: &LoadArgs, cores: usize, slots: u32) -> Result<Plan, String> {
    let target = resolve(&a.target)?;
    let (connections, threads) = connections_and_threads(a, cores, slots)?;
    if !(a.duration.is_finite() && a.duration > 0.0) {
        return Err("--duration must be a positive number of seconds".into());
    }
    if !(a.ramp.is_finite() && a.ramp >= 0.0) {
        return Err("--ramp must be a number of seconds >= 0".into());
    }
    let sources = match &a.source {
        Some(s) => parse_source(s)?,
        // The kernel's default range when /proc cannot be read.
        None => loopback_sources(
            &target,
            connections,
            crate::sys::ephemeral_ports().unwrap_or(60_999 - 32_768 + 1),
        ),
    };
    if !sources.is_empty() && !target.is_ipv4() {
        return Err("--source needs an IPv4 --target".into());
    }
    let (queries, weight_total) = query_specs(a)?;
    let expect_rows = match a.expect_rows {
        Some(n) => Some(n),
        None if a.query.is_none() && a.mix.is_none() => Some(1),
        None => None,
    };
    let (rate, depth, active_fraction) = workload_knobs(workload, a)?;
    if let Some(pid) = a.pid {
        if std::fs::metadata(format!("/proc/{pid}/stat")).is_err() {
            return Err(format!("--pid {pid}: no such process"));
        }
    }
    let progress = if a.no_progress {
        false
    } else {
        a.progress || a.duration >= 10.0
    };
    Ok(Plan {
        workload,
        target,
        target_text: a.target.clone(),
        cred: Credentials {
            user: a.user.clone(),
            password: a.password.clone(),
            stage1: None,
            db: (!a.db.is_empty()).then(|| a.db.clone()),
        },
        connections,
        threads,
        duration: Duration::from_secs_f64(a.duration),
        ramp: Duration::from_secs_f64(a.ramp),
        sources,
        queries,
        weight_total,
        expect_rows,
        prepared: a.prepared,
        rate,
        depth,
        active_fraction,
        pid: a.pid,
        json: a.json,
        progress,
        deprecate_eof: !a.no_deprecate_eof,
    })
}

/// Without --source, connections to a loopback target beyond what one source address's ephemeral
/// ports allow (keeping 10% of them free) come from 127.0.0.2, 127.0.0.3, ... in turn: every
/// 127.x.y.z is local, and each gives another set of ports.
fn loopback_sources(target: &SocketAddr, connections: u32, ports: u64) -> Vec<Ipv4Addr> {
    let usable = ports * 9 / 10;
    let SocketAddr::V4(t) = target else {
        return Vec::new();
    };
    if !t.ip().is_loopback() || usable == 0 || u64::from(connections) <= usable {
        return Vec::new();
    }
    let n = u64::from(connections).div_ceil(usable).min(65_000) as u32;
    (0..n)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 2)) + i))
        .collect()
}

/// `--connections` and `--threads`, checked against what the rings can hold.
fn connections_and_threads(a: &LoadArgs, cores: usize, slots: u32) -> Result<(u32, usize), String> {
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if a.connections > u64::from(u32::MAX) {
        return Err("--connections is too large".into());
    }
    let connections = a.connections as u32;
    let per_ring = slots.saturating_sub(RESERVED_SLOTS);
    // Without --threads: one per core, or as many rings as the connections need.
    let needed = connections.div_ceil(per_ring.max(1)) as usize;
    let threads = a.threads.unwrap_or(cores.max(1).max(needed));
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let threads = threads.min(connections as usize);
    let per_thread = connections.div_ceil(threads as u32);
    if per_thread > per_ring {
        let need = connections.div_ceil(per_ring.max(1));
        return Err(format!(
            "{connections} connections over {threads} threads need {per_thread} sockets per ring, \
             but each ring holds at most {per_ring} ({slots} fixed-file slots = RLIMIT_NOFILE, \
             minus {RESERVED_SLOTS} reserved): use --threads {need} or more, or raise RLIMIT_NOFILE"
        ));
    }
    Ok((connections, threads))
}

/// The queries of `--query` / `--mix` (the default one without either), and their weights' sum.
fn query_specs(a: &LoadArgs) -> Result<(Vec<QuerySpec>, u32), String> {
    let mix: Vec<(String, u32)> = match (&a.query, &a.mix) {
        (Some(_), Some(_)) => return Err("--query and --mix exclude each other".into()),
        (Some(q), None) => vec![(q.clone(), 1)],
        (None, Some(m)) => parse_mix(m)?,
        (None, None) => vec![(DEFAULT_QUERY.to_string(), 1)],
    };
    let mut queries = Vec::with_capacity(mix.len());
    for (sql, weight) in mix {
        if sql.is_empty() {
            return Err("--query is empty".into());
        }
        if sql.len() + 1 >= MAX_PAYLOAD_LEN {
            return Err("--query: queries of 16 MiB or more are not supported".into());
        }
        queries.push(QuerySpec {
            packet: packet(COM_QUERY, sql.as_bytes()),
            prepare: packet(COM_STMT_PREPARE, sql.as_bytes()),
            sql,
            weight,
        });
    }
    let weight_total = queries
        .iter()
        .try_fold(0u32, |s, q| s.checked_add(q.weight))
        .ok_or("--mix: weights add up to more than 2^32")?;
    Ok((queries, weight_total))
}

/// The knobs of one workload only: `--rate`, `--depth`, `--active-fraction`.
fn workload_knobs(workload: Workload, a: &LoadArgs) -> Result<(f64, usize, f64), String> {
    if a.rate.is_some() != (workload == Workload::Rate) {
        return Err("--rate is required by the rate workload and only used there".into());
    }
    let rate = a.rate.unwrap_or(0.0);
    if workload == Workload::Rate && !(rate.is_finite() && rate > 0.0) {
        return Err("--rate must be a positive number of queries per second".into());
    }
    if a.depth.is_some() && workload != Workload::Pipeline {
        return Err("--depth only applies to the pipeline workload".into());
    }
    let depth = if workload == Workload::Pipeline {
        a.depth.unwrap_or(8)
    } else {
        1
    };
    if depth == 0 || depth > MAX_PIPELINE {
        return Err(format!("--depth must be between 1 and {MAX_PIPELINE}"));
    }
    if a.active_fraction.is_some() && workload != Workload::Idle {
        return Err("--active-fraction only applies to the idle workload".into());
    }
    let active_fraction = a.active_fraction.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&active_fraction) {
        return Err("--active-fraction must be between 0 and 1".into());
    }
    Ok((rate, depth, active_fraction))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> LoadArgs {
        let mut v = vec!["loadgen", "qps"];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).unwrap().command {
            Command::Qps(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn mix_items_may_contain_commas_and_equal_signs() {
        let m = parse_mix("SELECT 1=80,SELECT a, b FROM t WHERE x=1=20").unwrap();
        assert_eq!(
            m,
            vec![
                ("SELECT 1".to_string(), 80),
                ("SELECT a, b FROM t WHERE x=1".to_string(), 20)
            ]
        );
        assert!(parse_mix("SELECT 1").is_err());
        assert!(parse_mix("SELECT 1=0").is_err());
        assert!(parse_mix("=5").is_err());
    }

    #[test]
    fn many_loopback_connections_get_source_addresses() {
        let lo: SocketAddr = "127.0.0.1:6033".parse().unwrap();
        assert!(loopback_sources(&lo, 20_000, 28_232).is_empty());
        // A million over 28,232 ports (90% used): 40 addresses from 127.0.0.2 on.
        let s = loopback_sources(&lo, 1_000_000, 28_232);
        assert_eq!(s.len(), 40);
        assert_eq!(s[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(s[39], Ipv4Addr::new(127, 0, 0, 41));
        // Not for a remote target: its own address rules there.
        let remote: SocketAddr = "10.0.0.1:6033".parse().unwrap();
        assert!(loopback_sources(&remote, 1_000_000, 28_232).is_empty());
        assert!(crate::sys::ephemeral_ports().is_some_and(|p| p > 0));
    }

    #[test]
    fn source_ranges() {
        let s = parse_source("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[2], Ipv4Addr::new(127, 0, 0, 4));
        assert_eq!(parse_source("10.0.0.1").unwrap().len(), 1);
        assert!(parse_source("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source("x-y").is_err());
    }

    #[test]
    fn defaults_and_ring_capacity() {
        let p = plan(Workload::Qps, &args(&["--target", "127.0.0.1:1"]), 2, 20000).unwrap();
        assert_eq!(p.connections, 64);
        assert_eq!(p.threads, 2);
        assert_eq!(p.expect_rows, Some(1));
        assert_eq!(p.queries[0].packet, b"\x09\x00\x00\x00\x03SELECT 1");
        assert!(p.progress);
        let a = args(&["--connections", "40000", "--threads", "2"]);
        let e = plan(Workload::Qps, &a, 2, 20000).unwrap_err();
        assert!(e.contains("--threads 3"), "{e}");
        let a = args(&["--connections", "39968", "--threads", "2"]);
        assert!(plan(Workload::Qps, &a, 2, 20000).is_ok());
        // Without --threads, as many rings as the connections need (a million: 51 of 19,968).
        let a = args(&["--connections", "1000000"]);
        assert_eq!(plan(Workload::Idle, &a, 2, 20000).unwrap().threads, 51);
        let a = args(&["--connections", "100"]);
        assert_eq!(plan(Workload::Idle, &a, 2, 20000).unwrap().threads, 2);
        let q = args(&["--query", "SELECT 2", "--duration", "2"]);
        let p = plan(Workload::Qps, &q, 2, 20000).unwrap();
        assert_eq!(p.expect_rows, None);
        assert!(!p.progress);
    }

    #[test]
    fn workload_specific_options_are_checked() {
        assert!(plan(Workload::Qps, &args(&["--rate", "5"]), 2, 20000).is_err());
        assert!(plan(Workload::Rate, &args(&[]), 2, 20000).is_err());
        assert!(plan(Workload::Rate, &args(&["--rate", "5"]), 2, 20000).is_ok());
        assert!(plan(Workload::Qps, &args(&["--depth", "4"]), 2, 20000).is_err());
        assert!(plan(Workload::Pipeline, &args(&["--depth", "33"]), 2, 20000).is_err());
        assert_eq!(
            plan(Workload::Pipeline, &args(&[]), 2, 20000)
                .unwrap()
                .depth,
            8
        );
        assert!(plan(
            Workload::Idle,
            &args(&["--active-fraction", "1.5"]),
            2,
            20000
        )
        .is_err());
        assert!(plan(
            Workload::Qps,
            &args(&["--query", "x", "--mix", "y=1"]),
            2,
            20000
        )
        .is_err());
    }

    #[test]
    fn connections_split_and_active_fraction() {
        let mut p = plan(
            Workload::Idle,
            &args(&[
                "--connections",
                "10",
                "--threads",
                "3",
                "--active-fraction",
                "0.25",
            ]),
            2,
            20000,
        )
        .unwrap();
        assert_eq!(
            (0..3).map(|t| p.connections_of(t)).collect::<Vec<_>>(),
            vec![4, 3, 3]
        );
        assert_eq!((0..10).filter(|&g| p.is_active(g)).count(), 2);
        p.active_fraction = 1.0;
        assert!((0..10).all(|g| p.is_active(g)));
        p.active_fraction = 0.0;
        assert!((0..10).all(|g| !p.is_active(g)));
    }
}
