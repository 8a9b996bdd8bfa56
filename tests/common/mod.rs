//! Integration-test harness: a private MariaDB server per test binary, a `ringproxy` child
//! process in front of it, and small helpers (free ports, the `mariadb` CLI, target choice).
//!
//! Owns: starting/stopping MariaDB (`MariaDb`), starting/stopping the proxy (`Proxy`), and the
//! `Target` switch that lets every proxied test also run straight against MariaDB
//! (`RINGPROXY_TEST_TARGET=direct`) so the test logic itself can be checked without the proxy.
//!
//! MariaDB lives in a `OnceLock` static that is never dropped, so it is started under a small
//! shell watchdog that kills it (and removes its data directory) once the test process is gone.

// Each test binary uses a different subset of this shared module.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

const MISSING_MARIADB: &str = "mariadbd not found: install Debian's MariaDB with \
`apt-get install -y mariadb-server mariadb-client` (tests need a real server; they do not skip)";

/// Database every test user can use; created at bootstrap.
pub const DB: &str = "rp";
/// `mysql_native_password` user with all privileges.
pub const NATIVE_USER: &str = "rp_native";
pub const NATIVE_PASS: &str = "native-pw";
/// Second native user, the target of COM_CHANGE_USER tests.
pub const OTHER_USER: &str = "rp_other";
pub const OTHER_PASS: &str = "other-pw";
/// ed25519 user (exists only when `MariaDb::has_ed25519`).
pub const ED_USER: &str = "rp_ed";
pub const ED_PASS: &str = "ed-pw";

/// A private MariaDB server, started once per test binary.
pub struct MariaDb {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The server's data directory (inside `root`).
    pub datadir: PathBuf,
    /// Unix socket; root@localhost logs in through it with unix_socket auth.
    pub socket: PathBuf,
    /// Process id of `mariadbd`.
    pub pid: u32,
    /// Whether the `ed25519` auth plugin could be installed (and `rp_ed` exists).
    pub has_ed25519: bool,
    /// Directory holding datadir, socket, pid file and logs; removed by the watchdog.
    pub root: PathBuf,
    /// mariadbd's error log.
    pub error_log: PathBuf,
    watchdog: Mutex<Child>,
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn require_binary(name: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| panic!("{MISSING_MARIADB} (missing `{name}`)"))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Options both `mariadb-install-db` and `mariadbd` get so the bootstrap matches the server.
const INNODB_OPTS: &[&str] = &[
    "--innodb-buffer-pool-size=128M",
    "--innodb-log-file-size=32M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
];

impl MariaDb {
    /// The server shared by every test of this binary, started on first use.
    pub fn shared() -> &'static MariaDb {
        static SHARED: OnceLock<MariaDb> = OnceLock::new();
        SHARED.get_or_init(MariaDb::start)
    }

    /// Client options for `user`/`pass` on 127.0.0.1:`port` (MariaDB's or the proxy's), db `rp`.
    pub fn opts(&self, port: u16, user: &str, pass: &str) -> mysql::Opts {
        mysql::OptsBuilder::new()
            .ip_or_hostname(Some("127.0.0.1"))
            .tcp_port(port)
            .user(Some(user))
            .pass(Some(pass))
            .db_name(Some(DB))
            .prefer_socket(false)
            .tcp_connect_timeout(Some(Duration::from_secs(10)))
            .read_timeout(Some(Duration::from_secs(120)))
            .write_timeout(Some(Duration::from_secs(120)))
            .into()
    }

    /// A connection as `rp_native` to `port`.
    pub fn conn(&self, port: u16) -> mysql::Conn {
        mysql::Conn::new(self.opts(port, NATIVE_USER, NATIVE_PASS))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port} as {NATIVE_USER}: {e}"))
    }

    /// Runs SQL as root over the unix socket with the `mariadb` CLI; panics on failure.
    pub fn root_sql(&self, sql: &str) -> String {
        let out = root_cli(&self.socket, sql);
        assert!(
            out.status.success(),
            "root SQL failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start() -> MariaDb {
        let mariadbd = require_binary("mariadbd");
        let install_db = require_binary("mariadb-install-db");
        require_binary("mariadb");

        let root = tempfile::Builder::new()
            .prefix("ringproxy-mariadb-")
            .tempdir()
            .expect("create temp dir for MariaDB")
            .keep();
        let datadir = root.join("data");
        let socket = root.join("mysqld.sock");
        let pid_file = root.join("mysqld.pid");
        let error_log = root.join("error.log");
        let install_log = root.join("install.log");

        let log = File::create(&install_log).expect("create install log");
        let status = Command::new(&install_db)
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", datadir.display()))
            .arg("--auth-root-authentication-method=socket")
            .arg("--skip-test-db")
            .args(INNODB_OPTS)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", install_db.display()));
        assert!(
            status.success(),
            "mariadb-install-db failed ({status}):\n{}",
            tail(&read_lossy(&install_log), 30)
        );

        // A free port can be taken by someone else between our probe and mariadbd's bind.
        for attempt in 1..=5 {
            let port = free_port();
            let _ = fs::remove_file(&error_log);
            let _ = fs::remove_file(&pid_file);
            let mut args: Vec<String> = vec![
                "--no-defaults".into(),
                "--user=root".into(),
                format!("--datadir={}", datadir.display()),
                format!("--socket={}", socket.display()),
                format!("--pid-file={}", pid_file.display()),
                format!("--log-error={}", error_log.display()),
                format!("--tmpdir={}", root.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--port={port}"),
                "--local-infile=1".into(),
                "--max-allowed-packet=256M".into(),
                "--max-connections=2000".into(),
                "--skip-name-resolve".into(),
                "--skip-log-bin".into(),
                "--character-set-server=utf8mb4".into(),
                "--collation-server=utf8mb4_general_ci".into(),
                "--open-files-limit=8192".into(),
                "--table-open-cache=400".into(),
                "--thread-cache-size=600".into(),
                "--net-read-timeout=120".into(),
                "--net-write-timeout=120".into(),
            ];
            args.extend(INNODB_OPTS.iter().map(|s| s.to_string()));
            let quoted: Vec<String> = std::iter::once(mariadbd.display().to_string())
                .chain(args)
                .map(|a| shell_quote(&a))
                .collect();
            let script = format!(
                "{cmd} & m=$!\n\
                 while kill -0 {test_pid} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done\n\
                 kill -9 $m 2>/dev/null; wait $m\n\
                 while kill -0 {test_pid} 2>/dev/null; do sleep 0.5; done\n\
                 rm -rf {root}\n",
                cmd = quoted.join(" "),
                test_pid = std::process::id(),
                root = shell_quote(&root.display().to_string()),
            );
            let mut watchdog = Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sh for the mariadbd watchdog");

            let deadline = Instant::now() + Duration::from_secs(60);
            let mut ready = false;
            while Instant::now() < deadline {
                if server_answers(&socket, port) {
                    ready = true;
                    break;
                }
                let log_text = read_lossy(&error_log);
                if log_text.contains("[ERROR] Aborting") || log_text.contains("Can't start server")
                {
                    break;
                }
                sleep(Duration::from_millis(50));
            }
            if !ready {
                let log_text = read_lossy(&error_log);
                kill_server(&pid_file);
                let _ = watchdog.kill();
                let _ = watchdog.wait();
                if log_text.contains("Address already in use") && attempt < 5 {
                    continue;
                }
                panic!(
                    "mariadbd did not come up on port {port}:\n{}",
                    tail(&log_text, 40)
                );
            }
            let pid: u32 = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| panic!("no pid in {}", pid_file.display()));

            let mut db = MariaDb {
                port,
                datadir,
                socket,
                pid,
                has_ed25519: false,
                root,
                error_log,
                watchdog: Mutex::new(watchdog),
            };
            db.bootstrap();
            return db;
        }
        unreachable!("the loop above returns or panics");
    }

    fn bootstrap(&mut self) {
        self.root_sql(&format!(
            "CREATE DATABASE {DB} CHARACTER SET utf8mb4;
             CREATE USER {NATIVE_USER}@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{NATIVE_PASS}');
             CREATE USER {OTHER_USER}@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('{OTHER_PASS}');
             GRANT ALL ON *.* TO {NATIVE_USER}@'%';
             GRANT ALL ON *.* TO {OTHER_USER}@'%';"
        ));
        let installed = root_cli(&self.socket, "INSTALL SONAME 'auth_ed25519'");
        let active = self.root_sql(
            "SELECT COUNT(*) FROM information_schema.PLUGINS \
             WHERE PLUGIN_NAME = 'ed25519' AND PLUGIN_STATUS = 'ACTIVE'",
        );
        if installed.status.success() && active.trim() == "1" {
            self.root_sql(&format!(
                "CREATE USER {ED_USER}@'%' IDENTIFIED VIA ed25519 USING PASSWORD('{ED_PASS}');
                 GRANT ALL ON *.* TO {ED_USER}@'%';"
            ));
            self.has_ed25519 = true;
        }
        self.root_sql("FLUSH PRIVILEGES");
    }

    /// Whether the watchdog (and so mariadbd) is still running.
    pub fn is_running(&self) -> bool {
        matches!(self.watchdog.lock().map(|mut c| c.try_wait()), Ok(Ok(None)))
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn root_cli(socket: &Path, sql: &str) -> Output {
    Command::new(require_binary("mariadb"))
        .arg("--no-defaults")
        .arg(format!("--socket={}", socket.display()))
        .arg("--protocol=SOCKET")
        .arg("-uroot")
        .arg("--batch")
        .arg("--skip-column-names")
        .arg("-e")
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .expect("run the mariadb CLI")
}

fn server_answers(socket: &Path, port: u16) -> bool {
    if !socket.exists() {
        return false;
    }
    let out = root_cli(socket, "SELECT @@port");
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == port.to_string()
}

fn kill_server(pid_file: &Path) {
    if let Some(pid) = fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        signal(pid, libc::SIGKILL);
    }
}

fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is one we
    // started (a child or mariadbd from its pid file), so we signal nothing foreign.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

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

impl Proxy {
    /// Starts `ringproxy` in front of 127.0.0.1:`backend_port`, waiting until it accepts TCP.
    pub fn start(backend_port: u16, extra_args: &[&str]) -> Proxy {
        let log_dir = tempfile::Builder::new()
            .prefix("ringproxy-log-")
            .tempdir()
            .expect("temp dir for proxy log");
        let log_path = log_dir.path().join("ringproxy.log");
        for attempt in 1..=5 {
            let port = free_port();
            let log = File::create(&log_path).expect("create proxy log");
            let mut child = Command::new(env!("CARGO_BIN_EXE_ringproxy"))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--backend")
                .arg(format!("127.0.0.1:{backend_port}"))
                .args(["--workers", "2", "--log-level", "info"])
                .args(extra_args)
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
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
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
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_else(|e| panic!("read /proc/{}/status: {e}", self.pid));
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid))
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

/// Runs `mariadb -h127.0.0.1 -P<port> -u<user> -p<pass> --protocol=TCP rp <args>`.
pub fn mariadb_cli(port: u16, user: &str, pass: &str, args: &[&str]) -> Output {
    Command::new(require_binary("mariadb"))
        .arg("--no-defaults")
        .arg("-h127.0.0.1")
        .arg(format!("-P{port}"))
        .arg(format!("-u{user}"))
        .arg(format!("-p{pass}"))
        .arg("--protocol=TCP")
        .arg(DB)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the mariadb CLI")
}

/// Where a test's client connections go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Straight to MariaDB (checks the test logic without the proxy).
    Direct,
    /// Through a fresh `ringproxy` in front of MariaDB.
    Proxy,
}

impl Target {
    /// `RINGPROXY_TEST_TARGET=direct` selects `Direct`; anything else (or unset) `Proxy`.
    pub fn from_env() -> Target {
        match std::env::var("RINGPROXY_TEST_TARGET").as_deref() {
            Ok("direct") => Target::Direct,
            Ok("proxy") | Err(_) => Target::Proxy,
            Ok(other) => panic!("RINGPROXY_TEST_TARGET must be `direct` or `proxy`, not {other:?}"),
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
            Target::Proxy => {
                let proxy = Proxy::start(db.port, extra_args);
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
        if let Some(mut proxy) = self.proxy.take() {
            assert!(
                proxy.is_running(),
                "ringproxy died during the test; log tail:\n{}",
                tail(&proxy.log(), 40)
            );
            let log = proxy.log();
            let status = proxy.terminate();
            assert!(
                status.success(),
                "ringproxy exited with {status} on SIGTERM; log tail:\n{}",
                tail(&log, 40)
            );
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
