//! Integration-test harness of the root crate: a `ringproxy` child process (`Proxy`) in front of
//! a private MariaDB, the `Target` switch that lets every proxied test also run straight against
//! MariaDB (`RINGPROXY_TEST_TARGET=direct`) so the test logic itself can be checked without the
//! proxy, and resultset helpers.
//!
//! What both crates' tests need (MariaDB, prerequisites, the Python env, free ports, the `mariadb`
//! CLI) is in `mariadb.rs`, shared with loadgen and re-exported here.

// Each test binary uses a different subset of this shared module.
#![allow(dead_code)]

mod mariadb;

pub use mariadb::*;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// A running `ringproxy` child process.
pub struct Proxy {
    /// The proxy's listening port on 127.0.0.1.
    pub port: u16,
    /// Its process id.
    pub pid: u32,
    /// Its stdout+stderr log file.
    pub log_path: PathBuf,
    child: Child,
    _log_dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

/// Whether `addr` accepts TCP. The probe connects from 127.0.0.254, so that it never counts
/// against a per-source limit the test then checks from 127.0.0.1 (the proxy may not have seen
/// the probe leave yet).
fn probe_accepts(addr: SocketAddr) -> bool {
    use socket2::{Domain, Socket, Type};
    let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM, None) else {
        return false;
    };
    let from: SocketAddr = ([127, 0, 0, 254], 0).into();
    s.bind(&from.into()).is_ok()
        && s.connect_timeout(&addr.into(), Duration::from_millis(200))
            .is_ok()
}

impl Proxy {
    /// Starts `ringproxy` in front of 127.0.0.1:`backend_port`, waiting until it accepts TCP.
    pub fn start(backend_port: u16, extra_args: &[&str]) -> Proxy {
        Proxy::launch("--listen", backend_port, extra_args, &[])
    }

    /// [`Proxy::start`] with environment variables added to the proxy's.
    pub fn start_with_env(backend_port: u16, extra_args: &[&str], env: &[(&str, &str)]) -> Proxy {
        Proxy::launch("--listen", backend_port, extra_args, env)
    }

    /// Starts `ringproxy` with a pooled listener (`--pooled-listen`) on a free port of
    /// 127.0.0.1 and no pass-through listener, in front of 127.0.0.1:`backend_port`, waiting
    /// until it accepts TCP; `port` is the pooled listener's.
    pub fn start_pooled(backend_port: u16, extra_args: &[&str]) -> Proxy {
        Proxy::launch("--pooled-listen", backend_port, extra_args, &[])
    }

    /// Starts `ringproxy` with its listener `listen_flag` (`--listen`, `--pooled-listen`) on a
    /// free port.
    fn launch(
        listen_flag: &str,
        backend_port: u16,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let log_dir = tempfile::Builder::new()
            .prefix("ringproxy-log-")
            .tempdir()
            .expect("temp dir for proxy log");
        let log_path = log_dir.path().join("ringproxy.log");
        for attempt in 1..=5 {
            let port = free_port();
            let log = File::create(&log_path).expect("create proxy log");
            let mut child = Command::new(env!("CARGO_BIN_EXE_ringproxy"))
                .arg(listen_flag)
                .arg(format!("127.0.0.1:{port}"))
                .arg("--backend")
                .arg(format!("127.0.0.1:{backend_port}"))
                .args(["--workers", "2", "--log-level", "info"])
                .args(extra_args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .expect("spawn ringproxy");
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = read_lossy(&log_path);
                    let in_use = text.contains("in use") || text.contains("AddrInUse");
                    if in_use && attempt < 5 {
                        break;
                    }
                    panic!(
                        "ringproxy exited early ({status}); args {extra_args:?}; log tail:\n{}",
                        tail(&text, 40)
                    );
                }
                if probe_accepts(addr) {
                    return Proxy {
                        port,
                        pid: child.id(),
                        log_path,
                        child,
                        _log_dir: log_dir,
                        exited: None,
                    };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "ringproxy did not accept on {addr} within 10 s; log tail:\n{}",
                        tail(&read_lossy(&log_path), 40)
                    );
                }
                sleep(Duration::from_millis(25));
            }
        }
        unreachable!("the loop above returns or panics");
    }

    /// Resident set size in KiB (VmRSS from /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("read /proc/{}/status: {e}", self.pid));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid))
    }

    /// Ends a test: the proxy must still be running and must exit cleanly on SIGTERM.
    pub fn finish(mut self) {
        assert!(
            self.is_running(),
            "ringproxy died during the test; log tail:\n{}",
            tail(&self.log(), 40)
        );
        let log = self.log();
        let status = self.terminate();
        assert!(
            status.success(),
            "ringproxy exited with {status} on SIGTERM; log tail:\n{}",
            tail(&log, 40)
        );
    }

    /// Everything the proxy wrote to stdout/stderr so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.seek(SeekFrom::Start(0));
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            _ => true,
        }
    }

    /// Sends SIGTERM and waits up to 30 s for the exit; panics (after SIGKILL) if it hangs.
    pub fn terminate(mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exited = Some(status);
            return status;
        }
        signal(self.pid as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                return status;
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for ringproxy");
        self.exited = Some(status);
        panic!(
            "ringproxy ignored SIGTERM for 30 s; log tail:\n{}",
            tail(&self.log(), 40)
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.exited.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// Where a test's client connections go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Straight to MariaDB (checks the test logic without the proxy).
    Direct,
    /// Through a fresh `ringproxy` in front of MariaDB.
    Proxy,
    /// Through a fresh `ringproxy` running `tests/lua/observe.lua`: every hook, every query's
    /// result through read_query_result (the scripted sessions' whole path).
    Scripted,
}

impl Target {
    /// `RINGPROXY_TEST_TARGET=direct` selects `Direct`, `scripted` `Scripted`; `proxy` (or
    /// unset) `Proxy`. A test binary whose name has `_scripted` (tests/passthrough_scripted.rs) defaults to
    /// `Scripted`.
    pub fn from_env() -> Target {
        let scripted_binary = std::env::current_exe()
            .ok()
            .and_then(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().contains("_scripted"))
            })
            .unwrap_or(false);
        match std::env::var("RINGPROXY_TEST_TARGET").as_deref() {
            Ok("direct") => Target::Direct,
            Ok("scripted") => Target::Scripted,
            Err(_) if scripted_binary => Target::Scripted,
            Ok("proxy") | Err(_) => Target::Proxy,
            Ok(other) => panic!(
                "RINGPROXY_TEST_TARGET must be `direct`, `proxy` or `scripted`, not {other:?}"
            ),
        }
    }
}

/// A port to connect to, and the proxy behind it (if any), kept alive as long as this is.
pub struct Endpoint {
    /// Port on 127.0.0.1 to connect to.
    pub port: u16,
    /// The shared MariaDB behind it.
    pub db: &'static MariaDb,
    /// The proxy, for `Target::Proxy`.
    pub proxy: Option<Proxy>,
}

impl Endpoint {
    /// `Target::from_env()` with the proxy started with no extra arguments.
    pub fn from_env() -> Endpoint {
        Endpoint::with_target(Target::from_env(), &[])
    }

    /// Starts a proxy (for `Target::Proxy`, with `extra_args`) in front of the shared MariaDB.
    pub fn with_target(target: Target, extra_args: &[&str]) -> Endpoint {
        let db = MariaDb::shared();
        match target {
            Target::Direct => Endpoint {
                port: db.port,
                db,
                proxy: None,
            },
            Target::Proxy | Target::Scripted => {
                let script = workspace_root().join("tests/lua/observe.lua");
                let script = script.to_string_lossy().into_owned();
                let mut args = extra_args.to_vec();
                if target == Target::Scripted {
                    args.extend(["--proxy-lua-script", script.as_str()]);
                }
                let proxy = Proxy::start(db.port, &args);
                Endpoint {
                    port: proxy.port,
                    db,
                    proxy: Some(proxy),
                }
            }
        }
    }

    /// Options for `user`/`pass` through this endpoint.
    pub fn opts(&self, user: &str, pass: &str) -> mysql::Opts {
        self.db.opts(self.port, user, pass)
    }

    /// A connection as `rp_native` through this endpoint.
    pub fn conn(&self) -> mysql::Conn {
        self.db.conn(self.port)
    }

    /// Ends the test: the proxy (if any) must still be running and must exit cleanly on SIGTERM.
    pub fn finish(mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.finish();
        }
    }
}

/// One result set as the client saw it: column names and types, rows, and its OK packet's count.
#[derive(Debug, Clone, PartialEq)]
pub struct SetSummary {
    /// (name, column type) per column; empty for an OK-only result.
    pub columns: Vec<(String, mysql::consts::ColumnType)>,
    /// Every row's values.
    pub rows: Vec<Vec<mysql::Value>>,
    /// affected_rows of the OK/EOF that ended this set.
    pub affected_rows: u64,
}

/// Drains every result set of a (text or binary) query result.
pub fn collect_sets<T: mysql::prelude::Protocol>(
    mut result: mysql::QueryResult<'_, '_, '_, T>,
) -> mysql::Result<Vec<SetSummary>> {
    let mut sets = Vec::new();
    while let Some(mut set) = result.iter() {
        let columns = set
            .columns()
            .as_ref()
            .iter()
            .map(|c| (c.name_str().into_owned(), c.column_type()))
            .collect();
        // Known up front for an OK-only set; once a row set is drained, the crate's state has
        // already moved on to the next set's OK, so it must be read before the rows.
        let affected_rows = set.affected_rows();
        let mut rows = Vec::new();
        for row in set.by_ref() {
            rows.push(row?.unwrap());
        }
        sets.push(SetSummary {
            columns,
            rows,
            affected_rows,
        });
    }
    Ok(sets)
}

/// Order-sensitive digest of a resultset: column names/types, then every value with a type tag.
pub struct RowHasher {
    hasher: sha1::Sha1,
    /// Rows fed so far.
    pub rows: u64,
}

impl Default for RowHasher {
    fn default() -> Self {
        RowHasher {
            hasher: <sha1::Sha1 as sha1::Digest>::new(),
            rows: 0,
        }
    }
}

impl RowHasher {
    /// Feeds the column metadata.
    pub fn columns(&mut self, columns: &[mysql::Column]) {
        use sha1::Digest;
        for c in columns {
            self.hasher.update(c.name_ref());
            self.hasher.update([0, c.column_type() as u8]);
        }
    }

    /// Feeds one row.
    pub fn row(&mut self, row: mysql::Row) {
        use sha1::Digest;
        self.rows += 1;
        for value in row.unwrap() {
            match value {
                mysql::Value::NULL => self.hasher.update([0u8]),
                mysql::Value::Bytes(bytes) => {
                    self.hasher.update([1u8]);
                    self.hasher.update((bytes.len() as u64).to_le_bytes());
                    self.hasher.update(&bytes);
                }
                other => {
                    self.hasher.update([2u8]);
                    self.hasher.update(format!("{other:?}").as_bytes());
                }
            }
        }
        self.hasher.update([0xffu8]);
    }

    /// (row count, SHA-1 of everything fed).
    pub fn finish(self) -> (u64, [u8; 20]) {
        use sha1::Digest;
        (self.rows, self.hasher.finalize().into())
    }
}

/// Streams a text-protocol query's single resultset into a `RowHasher`.
pub fn hash_query(conn: &mut mysql::Conn, sql: &str) -> (u64, [u8; 20]) {
    use mysql::prelude::Queryable;
    let mut result = conn
        .query_iter(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut hasher = RowHasher::default();
    hasher.columns(result.columns().as_ref());
    for row in result.by_ref() {
        hasher.row(row.unwrap_or_else(|e| panic!("{sql}: row: {e}")));
    }
    hasher.finish()
}

/// Streams a binary-protocol (prepared) query's single resultset into a `RowHasher`.
pub fn hash_exec(conn: &mut mysql::Conn, sql: &str) -> (u64, [u8; 20]) {
    use mysql::prelude::Queryable;
    let mut result = conn
        .exec_iter(sql, ())
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut hasher = RowHasher::default();
    hasher.columns(result.columns().as_ref());
    for row in result.by_ref() {
        hasher.row(row.unwrap_or_else(|e| panic!("{sql}: row: {e}")));
    }
    hasher.finish()
}

/// The server error inside a client error; panics on any other kind of failure or on success.
pub fn server_error<T: std::fmt::Debug>(result: mysql::Result<T>) -> mysql::MySqlError {
    match result {
        Err(mysql::Error::MySqlError(e)) => e,
        other => panic!("expected a server error (ERR packet), got {other:?}"),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), for payloads that don't compress or repeat.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}
