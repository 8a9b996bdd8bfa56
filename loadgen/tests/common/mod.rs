//! Harness of loadgen's integration tests: running the `loadgen` binary with its JSON report
//! parsed, and its mock server (`Mock`).
//!
//! The private MariaDB (`MariaDb::shared()`, started by scripts/mariadb-private and killed with
//! its data directory once the test process is gone), free ports and the rest are the root
//! crate's shared harness file, `tests/common/mariadb.rs`, included here.

// Each test binary uses a different subset.
#![allow(dead_code)]

#[path = "../../../tests/common/mariadb.rs"]
mod mariadb;

pub use mariadb::*;

use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// User, password and schema every test logs in with (loadgen's defaults).
pub const USER: &str = APP_USER;
pub const PASS: &str = APP_PASS;

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
