//! The part of the integration-test harness both crates share: this file is `tests/common/
//! mariadb.rs` of the root crate and is included by loadgen's `tests/common/mod.rs` with `#[path]`.
//!
//! Owns: the private MariaDB servers the tests use (`MariaDb`: the one shared by a test binary,
//! and dedicated ones with extra server options), all started and stopped by
//! `scripts/mariadb-private` (the one piece of code that starts MariaDB, also for dev-up and the
//! benchmarks); the prerequisites (MariaDB, python3-venv), installed once by
//! `scripts/test-prereqs.sh` when missing; a Python virtualenv with real MySQL client libraries
//! (`python_env`); free ports; the `mariadb` CLI runner.
//!
//! Each server runs under the script's supervisor with `--watch <this test process>`: mariadbd is
//! killed, and its temp directory removed, once the test process is gone, even when it dies
//! without unwinding (the shared server lives in a static that is never dropped).

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

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
/// loadgen's default credentials and database (`--user app --password app --db app`): a native
/// user with all privileges, on every server too.
pub const APP_USER: &str = "app";
pub const APP_PASS: &str = "app";
pub const APP_DB: &str = "app";

/// The Python client libraries of `python_env()`, pinned (checked to install from PyPI).
pub const PYTHON_REQUIREMENTS: &[&str] = &[
    "PyMySQL==1.2.4",
    "mysql-connector-python==26.10.0",
    // PyMySQL's caching_sha2_password full authentication without TLS (RSA), in pooled mode.
    "cryptography==50.0.2",
];

const MARIADB_BINARIES: [&str; 4] = ["mariadbd", "mariadb-install-db", "mariadb", "mariadb-admin"];

/// A private MariaDB server (see the module documentation).
pub struct MariaDb {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The server's data directory (inside `root`).
    pub datadir: PathBuf,
    /// Unix socket; the admin (root) logs in through it with unix_socket auth.
    pub socket: PathBuf,
    /// Process id of `mariadbd`.
    pub pid: u32,
    /// Whether the `ed25519` auth plugin could be installed (and `rp_ed` exists).
    pub has_ed25519: bool,
    /// Directory holding datadir, socket, pid file and logs; removed once the server is gone.
    pub root: PathBuf,
    /// mariadbd's error log.
    pub error_log: PathBuf,
    /// `SELECT VERSION()`, e.g. `10.11.19-MariaDB-0+deb12u1`.
    pub version: String,
    /// The account root SQL runs as (over the unix socket): the OS user's, `root` as root.
    admin_user: String,
    /// A server of its own (`start_with`), stopped on drop; false for the shared one.
    dedicated: bool,
}

impl MariaDb {
    /// The server shared by every test of this binary, started on first use.
    pub fn shared() -> &'static MariaDb {
        static SHARED: OnceLock<MariaDb> = OnceLock::new();
        SHARED.get_or_init(|| MariaDb::launch(&[], false))
    }

    /// A dedicated server (not the shared one) with the same users and databases, and `extra`
    /// mariadbd options after the standard ones (the last of repeated options wins, so e.g.
    /// `--skip-name-resolve=OFF` undoes the standard `--skip-name-resolve`). Stopped, and its
    /// directory removed, when dropped (or killed with the test process).
    pub fn start_with(extra: &[&str]) -> MariaDb {
        MariaDb::launch(extra, true)
    }

    fn launch(extra: &[&str], dedicated: bool) -> MariaDb {
        ensure_mariadb();
        let root = tempfile::Builder::new()
            .prefix("ringproxy-mariadb-")
            .tempdir()
            .expect("create temp dir for MariaDB")
            .keep();
        let users = [
            format!("{NATIVE_USER}:{NATIVE_PASS}"),
            format!("{OTHER_USER}:{OTHER_PASS}"),
            format!("{APP_USER}:{APP_PASS}"),
        ];
        let mut cmd = Command::new(mariadb_private());
        cmd.arg("start")
            .arg("--dir")
            .arg(&root)
            .args(["--profile", "tests", "--remove-dir"])
            .args(["--watch", &std::process::id().to_string()]);
        for user in &users {
            cmd.args(["--user", user]);
        }
        cmd.args(["--ed25519-user", &format!("{ED_USER}:{ED_PASS}")])
            .args(["--database", DB, "--database", APP_DB])
            .arg("--")
            .args(extra)
            .stdin(Stdio::null());
        let out = cmd.output().expect("run scripts/mariadb-private start");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/mariadb-private start (extra options {extra:?}) failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let fact = |key: &str| -> String {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("mariadb-private printed no {key}=: {stdout}"))
                .to_string()
        };
        let number = |key: &str| -> u32 {
            fact(key)
                .parse()
                .unwrap_or_else(|e| panic!("{key}= {:?}: {e}", fact(key)))
        };
        MariaDb {
            port: number("port") as u16,
            datadir: fact("datadir").into(),
            socket: fact("socket").into(),
            pid: number("pid"),
            has_ed25519: fact("ed25519") == "yes",
            root: fact("dir").into(),
            error_log: fact("error_log").into(),
            version: fact("version"),
            admin_user: fact("admin_user"),
            dedicated,
        }
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

    /// Runs SQL as root over the unix socket with the `mariadb` CLI; the raw output.
    pub fn root_sql_output(&self, sql: &str) -> Output {
        Command::new(require_binary("mariadb"))
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .arg("--protocol=SOCKET")
            .arg(format!("-u{}", self.admin_user))
            .arg("--batch")
            .arg("--skip-column-names")
            .arg("-e")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .expect("run the mariadb CLI")
    }

    /// Runs SQL as root over the unix socket with the `mariadb` CLI; its stdout. Panics on failure.
    pub fn root_sql(&self, sql: &str) -> String {
        let out = self.root_sql_output(sql);
        assert!(
            out.status.success(),
            "root SQL failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A global status counter, e.g. `Com_stmt_execute`.
    pub fn status(&self, name: &str) -> u64 {
        let out = self.root_sql(&format!("SHOW GLOBAL STATUS LIKE '{name}'"));
        out.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("status {name}: {out:?}"))
    }

    /// `127.0.0.1:<port>`.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether mariadbd is still running.
    pub fn is_running(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .is_ok_and(|comm| comm.trim_end() == "mariadbd")
    }

    /// The tail of mariadbd's error log, for failure messages.
    pub fn error_log_tail(&self, lines: usize) -> String {
        tail(&read_lossy(&self.error_log), lines)
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if self.dedicated {
            // Shuts the server down and removes `root` (started with --remove-dir).
            let _ = Command::new(mariadb_private())
                .arg("stop")
                .arg(&self.root)
                .stdin(Stdio::null())
                .output();
        }
    }
}

/// The workspace root (the directory holding `scripts/`), from either crate.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("scripts/mariadb-private").is_file())
        .unwrap_or_else(|| panic!("no scripts/mariadb-private above {}", manifest.display()))
        .to_path_buf()
}

/// Cargo's target directory (the parent of the integration tests' `CARGO_TARGET_TMPDIR`).
pub fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

fn mariadb_private() -> PathBuf {
    workspace_root().join("scripts/mariadb-private")
}

/// `name` on PATH or in the usual sbin/bin directories.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A MariaDB binary, installed first (`ensure_mariadb`) when the machine lacks it.
pub fn require_binary(name: &str) -> PathBuf {
    if MARIADB_BINARIES.contains(&name) {
        ensure_mariadb();
    }
    find_binary(name).unwrap_or_else(|| panic!("`{name}` not found"))
}

/// Makes sure Debian's MariaDB server and client are installed: when one of their binaries is
/// missing, runs `scripts/test-prereqs.sh mariadb` once (across threads and test processes).
pub fn ensure_mariadb() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let present = || MARIADB_BINARIES.iter().all(|b| find_binary(b).is_some());
        ensure_prereqs("mariadb", present);
    });
}

/// Makes sure `python3 -m venv` works (Debian keeps ensurepip in python3-venv): runs
/// `scripts/test-prereqs.sh python` once when it does not.
pub fn ensure_python() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let present = || {
            find_binary("python3").is_some_and(|python| {
                Command::new(python)
                    .args(["-c", "import venv, ensurepip"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
        };
        ensure_prereqs("python", present);
    });
}

/// Runs `scripts/test-prereqs.sh part` unless `present()`, holding `target/.prereqs.lock` and
/// checking again once it holds it (another test process may have installed meanwhile).
fn ensure_prereqs(part: &str, present: impl Fn() -> bool) {
    if present() {
        return;
    }
    with_lock(".prereqs.lock", || {
        if present() {
            return;
        }
        let script = workspace_root().join("scripts/test-prereqs.sh");
        let mut stderr = std::io::stderr();
        let _ = writeln!(
            stderr,
            "test harness: {part} prerequisites missing; running {} {part}",
            script.display()
        );
        let mut child = Command::new("bash")
            .arg(&script)
            .arg(part)
            .stdin(Stdio::null())
            .stdout(Stdio::null()) // it reports on stderr only
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        // Echo its progress straight to our stderr (not captured by the test runner: apt-get
        // can take a minute) and keep it for the failure message.
        let mut seen = Vec::new();
        let mut pipe = child.stderr.take().expect("piped stderr");
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = stderr.write_all(&buf[..n]);
            seen.extend_from_slice(&buf[..n]);
        }
        let status = child.wait().expect("wait for test-prereqs.sh");
        assert!(
            status.success() && present(),
            "{} {part} failed ({status}); it said:\n{}",
            script.display(),
            tail(&String::from_utf8_lossy(&seen), 30)
        );
    });
}

/// Runs `f` holding an exclusive flock(2) on `target/<name>` (serialises test processes and
/// threads; the lock goes with the file descriptor, also when `f` panics).
pub fn with_lock<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let dir = target_dir();
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    loop {
        // SAFETY: flock(2) on a descriptor `file` owns and keeps open for the call; no memory
        // is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        assert!(
            err.kind() == std::io::ErrorKind::Interrupted,
            "flock {}: {err}",
            path.display()
        );
    }
    let out = f();
    drop(file);
    out
}

/// The Python of a virtualenv (`target/test-venv`) with PyMySQL and mysql-connector-python
/// (`PYTHON_REQUIREMENTS`) installed: created once (with `python3 -m venv` and pip from PyPI,
/// holding `target/.test-venv.lock`), re-used while complete (a marker written last records the
/// requirements it was made for).
pub fn python_env() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = target_dir().join("test-venv");
            let python = venv.join("bin/python");
            let marker = venv.join(".ringproxy-complete");
            let wanted = PYTHON_REQUIREMENTS.join("\n");
            let complete =
                || python.is_file() && fs::read_to_string(&marker).is_ok_and(|m| m == wanted);
            if complete() {
                return python.clone();
            }
            ensure_python();
            with_lock(".test-venv.lock", || {
                if complete() {
                    return;
                }
                let mut stderr = std::io::stderr();
                let _ = writeln!(
                    stderr,
                    "test harness: creating {} with {}",
                    venv.display(),
                    PYTHON_REQUIREMENTS.join(" ")
                );
                if venv.exists() {
                    fs::remove_dir_all(&venv)
                        .unwrap_or_else(|e| panic!("remove {}: {e}", venv.display()));
                }
                let python3 = find_binary("python3").expect("python3 (ensure_python ran)");
                run_ok(Command::new(python3).args(["-m", "venv"]).arg(&venv));
                run_ok(
                    Command::new(&python)
                        .args([
                            "-m",
                            "pip",
                            "install",
                            "--quiet",
                            "--disable-pip-version-check",
                        ])
                        .args(PYTHON_REQUIREMENTS),
                );
                run_ok(Command::new(&python).args(["-c", "import pymysql, mysql.connector"]));
                fs::write(&marker, &wanted)
                    .unwrap_or_else(|e| panic!("write {}: {e}", marker.display()));
            });
            python
        })
        .clone()
}

/// Runs a command to completion; panics with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
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

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A file's content as text (lossy), empty when it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Sends `sig` to `pid`; true when it was delivered.
pub fn signal(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; callers pass pids of
    // processes they started, so nothing foreign is signalled.
    unsafe { libc::kill(pid, sig) == 0 }
}
