//! Harness of loadgen's integration tests: a private MariaDB per test binary (started once,
//! killed with its data directory by a small shell watchdog when the test process is gone), free
//! ports, and running the `loadgen` binary with its JSON report parsed.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// User, password and schema every test logs in with (loadgen's defaults).
pub const USER: &str = "app";
pub const PASS: &str = "app";

pub struct MariaDb {
    pub port: u16,
    pub socket: PathBuf,
    pub pid: u32,
    /// The shell that kills mariadbd once this test process is gone (never waited for: the
    /// server lives in a static for the whole process).
    _watchdog: Child,
}

fn binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found: install Debian's MariaDB (`apt-get install -y mariadb-server \
                 mariadb-client`); these tests need a real server"
            )
        })
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl MariaDb {
    /// The server shared by every test of this binary.
    pub fn shared() -> &'static MariaDb {
        static DB: OnceLock<MariaDb> = OnceLock::new();
        DB.get_or_init(MariaDb::start)
    }

    fn start() -> MariaDb {
        let root = tempfile::Builder::new()
            .prefix("loadgen-mariadb-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let datadir = root.join("data");
        let socket = root.join("mysqld.sock");
        let pid_file = root.join("mysqld.pid");
        let log = root.join("error.log");
        let out = Command::new(binary("mariadb-install-db"))
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg("--auth-root-authentication-method=socket")
            .arg(format!("--datadir={}", datadir.display()))
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let args = [
            binary("mariadbd").display().to_string(),
            "--no-defaults".into(),
            "--user=root".into(),
            format!("--datadir={}", datadir.display()),
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", pid_file.display()),
            format!("--log-error={}", log.display()),
            "--bind-address=127.0.0.1".into(),
            format!("--port={port}"),
            "--max-connections=3000".into(),
            "--skip-name-resolve".into(),
            "--skip-log-bin".into(),
            "--innodb-buffer-pool-size=64M".into(),
        ];
        let cmd: Vec<String> = args.iter().map(|a| quote(a)).collect();
        let script = format!(
            "{cmd} & m=$!\n\
             while kill -0 {me} 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done\n\
             kill -9 $m 2>/dev/null; wait $m; rm -rf {root}\n",
            cmd = cmd.join(" "),
            me = std::process::id(),
            root = quote(&root.display().to_string()),
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the mariadbd watchdog");
        let mut db = MariaDb {
            port,
            socket,
            pid: 0,
            _watchdog: watchdog,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while db
            .root_sql_raw("SELECT 1")
            .map_or(true, |o| !o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            sleep(Duration::from_millis(100));
        }
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("mariadbd pid file");
        db.pid = pid;
        db.root_sql(&format!(
            "CREATE USER {USER}@'%' IDENTIFIED BY '{PASS}'; GRANT ALL ON *.* TO {USER}@'%';
             CREATE DATABASE app; DROP USER IF EXISTS ''@'localhost'; FLUSH PRIVILEGES;"
        ));
        db
    }

    fn root_sql_raw(&self, sql: &str) -> std::io::Result<Output> {
        Command::new(binary("mariadb"))
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args([
                "--protocol=SOCKET",
                "-uroot",
                "--batch",
                "--skip-column-names",
                "-e",
            ])
            .arg(sql)
            .stdin(Stdio::null())
            .output()
    }

    /// Runs SQL as root over the unix socket; returns stdout.
    pub fn root_sql(&self, sql: &str) -> String {
        let out = self.root_sql_raw(sql).expect("run the mariadb CLI");
        assert!(
            out.status.success(),
            "{sql}: {}",
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

    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A finished loadgen run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON report (the run must have used --json).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout {:?} stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }
}

pub fn loadgen_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    c.args(args).stdin(Stdio::null());
    c
}

/// Runs loadgen to completion (2 threads unless the args say otherwise).
pub fn loadgen(args: &[&str]) -> Run {
    let out = loadgen_cmd(args).output().expect("run loadgen");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts `loadgen serve` on a free port with extra args; killed when dropped.
pub struct Mock {
    pub port: u16,
    child: Child,
}

impl Mock {
    pub fn start(extra: &[&str]) -> Mock {
        for _ in 0..5 {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let mut args = vec!["serve", "--listen", &listen, "--threads", "2"];
            args.extend_from_slice(extra);
            let mut child = loadgen_cmd(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn loadgen serve");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Mock { port, child };
                }
                sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("loadgen serve did not start");
    }

    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
