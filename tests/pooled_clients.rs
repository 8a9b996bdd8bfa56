//! Pooled mode (`pooled_listen`) with real clients against a real MariaDB: PyMySQL (a user with a
//! cleartext password, and one whose password is configured as a caching_sha2_password hash),
//! mysql-connector-python (binary protocol, compression, COM_RESET_CONNECTION, COM_CHANGE_USER)
//! and sysbench oltp_read_write with 256 threads over a capped pool. The Python scripts are
//! tests/py/pooled_pymysql.py and tests/py/pooled_connector.py; each test has its own MariaDB
//! account, so that what one test counts on the server is its own.

mod common;

use std::fs;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use ringproxy::protocol::auth_server::sha256_crypt;

/// A ringproxy with a pooled listener (and the harness's pass-through one) in front of a MariaDB.
struct Pooled {
    proxy: Proxy,
    /// The pooled listener's port on 127.0.0.1.
    port: u16,
    _config: tempfile::TempDir,
}

impl Pooled {
    /// Starts ringproxy in front of 127.0.0.1:`backend_port` with `users` (name, password as
    /// written in the configuration) as its `[[users]]` and `extra` options.
    fn start(backend_port: u16, users: &[(&str, &str)], extra: &[&str]) -> Pooled {
        let dir = tempfile::Builder::new()
            .prefix("ringproxy-pooled-")
            .tempdir()
            .expect("temp dir for the configuration");
        let path = dir.path().join("pooled.toml");
        let mut toml = String::new();
        for (name, password) in users {
            toml += &format!(
                "[[users]]\nname = {}\npassword = {}\n\n",
                toml_string(name),
                toml_string(password)
            );
        }
        fs::write(&path, toml).expect("write the configuration");
        for attempt in 1..=3 {
            let port = free_port();
            let mut args = vec![
                "--config".to_string(),
                path.display().to_string(),
                "--pooled-listen".to_string(),
                format!("127.0.0.1:{port}"),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            // The pooled port may have been taken meanwhile: then try another one.
            match catch_unwind(AssertUnwindSafe(|| Proxy::start(backend_port, &argv))) {
                Ok(proxy) => {
                    wait_for_port(port);
                    return Pooled {
                        proxy,
                        port,
                        _config: dir,
                    };
                }
                Err(e) if attempt == 3 => resume_unwind(e),
                Err(_) => continue,
            }
        }
        unreachable!("the loop returns or panics");
    }

    /// Ends the test: the proxy must still run, and exit 0 on SIGTERM.
    fn finish(mut self) {
        assert!(
            self.proxy.is_running(),
            "ringproxy died during the test; log tail:\n{}",
            tail(&self.proxy.log(), 40)
        );
        let log = self.proxy.log();
        let status = self.proxy.terminate();
        assert!(
            status.success(),
            "ringproxy exited with {status} on SIGTERM; log tail:\n{}",
            tail(&log, 40)
        );
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing accepts on the pooled listener 127.0.0.1:{port}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `s` as a TOML basic string: quotes, backslashes and control characters escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out += &format!("\\u{:04X}", c as u32),
            c => out.push(c),
        }
    }
    out + "\""
}

/// Creates (or re-creates) MariaDB account `name`@'%' with `password` (mysql_native_password)
/// and every privilege (the scripts read the processlist).
fn account(db: &MariaDb, name: &str, password: &str) {
    db.root_sql(&format!(
        "CREATE OR REPLACE USER '{name}'@'%' IDENTIFIED BY '{password}'; \
         GRANT ALL ON *.* TO '{name}'@'%';"
    ));
}

/// A caching_sha2_password hash of `password` as MySQL 8 stores it: `$A$005$`, a 20-byte salt
/// made as MySQL's generate_user_salt makes them (7-bit, no NUL, no '$'; here with a control
/// character, a quote and a backslash among them, which TOML must escape), and the 43-character
/// SHA256-crypt digest of 5000 rounds.
fn caching_sha2_hash(password: &str) -> String {
    let mut salt: Vec<u8> = pseudo_random_bytes(20, 0x5A17)
        .into_iter()
        .map(|b| match b & 0x7f {
            0 | b'$' => (b & 0x7f) + 1,
            b => b,
        })
        .collect();
    (salt[0], salt[7], salt[13]) = (0x01, b'"', b'\\');
    let digest = sha256_crypt(password.as_bytes(), &salt, 5000);
    let mut hash = b"$A$005$".to_vec();
    hash.extend_from_slice(&salt);
    hash.extend_from_slice(&digest);
    String::from_utf8(hash).expect("7-bit salt and crypt digest")
}

/// Runs tests/py/`name` with the harness's Python, killed after `limit`; its standard output.
/// Panics (with both outputs) unless it exits 0.
fn python(name: &str, args: &[String], limit: Duration) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name);
    let started = Instant::now();
    let out = Command::new("timeout")
        .args(["-k", "5", &limit.as_secs().to_string()])
        .arg(python_env())
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run timeout(1) with the test virtualenv's python");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}{}) after {:.1} s:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        if out.status.code() == Some(124) {
            ", killed by the time limit"
        } else {
            ""
        },
        started.elapsed().as_secs_f64(),
        tail(&stdout, 30),
        tail(&stderr, 40)
    );
    stdout
}

fn args(port: u16, rest: &[&str]) -> Vec<String> {
    std::iter::once(port.to_string())
        .chain(rest.iter().map(|s| s.to_string()))
        .collect()
}

fn assert_lines(out: &str, wanted: &[&str]) {
    for w in wanted {
        assert!(
            out.lines().any(|l| l.starts_with(w)),
            "no line starting with {w:?} in:\n{out}"
        );
    }
}

const LIMIT: Duration = Duration::from_secs(50);

// ---- 1. PyMySQL ----

/// PyMySQL, a `[[users]]` user with a cleartext password: four sessions over at most 2 backend
/// connections keep their own user variables, character sets (SET NAMES), schemas (USE and
/// COM_INIT_DB), system variables and LAST_INSERT_ID; transactions commit and roll back (BEGIN,
/// START TRANSACTION, autocommit=0); executemany INSERT; 100,000-row results, buffered and
/// unbuffered; LOAD DATA LOCAL INFILE from a session with other capabilities, under the cap.
#[test]
fn pymysql_cleartext_user_session_state_across_queries() {
    let db = MariaDb::shared();
    let (user, pass) = ("rp_pool_state", "state-pw");
    account(db, user, pass);
    let pooled = Pooled::start(
        db.port,
        &[(user, pass)],
        &["--max-backend-connections", "2"],
    );
    let out = python(
        "pooled_pymysql.py",
        &[
            vec!["state".to_string()],
            args(pooled.port, &[user, pass, DB, "2"]),
        ]
        .concat(),
        LIMIT,
    );
    assert_lines(
        &out,
        &[
            "ok backend connections within the cap",
            "ok user variables of session 3",
            "ok character sets of session 0",
            "ok schema of session 3",
            "ok committed, other view",
            "ok autocommit=0 commit visible",
            "ok LAST_INSERT_ID of session 3",
            "ok executemany rows read back",
            "ok 100k rows (buffered)",
            "ok 100k rows (unbuffered)",
            "ok load data rows read back",
            "ok backend connections within the cap after LOAD DATA",
            "ok group_concat_max_len of session 3",
            "state done",
        ],
    );
    pooled.finish();
}

/// PyMySQL, a `[[users]]` user whose password is configured as a caching_sha2_password hash:
/// the proxy switches the client to caching_sha2_password; the first login takes full
/// authentication (RSA public key, then the encrypted password), the second the fast path;
/// both run queries; a wrong password gets 1045. One worker, so that both logins meet the same
/// fast-path cache.
#[test]
fn pymysql_caching_sha2_hash_user_full_then_fast_authentication() {
    let db = MariaDb::shared();
    let (user, pass) = ("rp_pool_sha2", "sha2-secret");
    account(db, user, pass);
    let hash = caching_sha2_hash(pass);
    assert_eq!(hash.len(), 70, "{hash:?}");
    let pooled = Pooled::start(db.port, &[(user, &hash)], &["--workers", "1"]);
    let out = python(
        "pooled_pymysql.py",
        &[
            vec!["sha2".to_string()],
            args(pooled.port, &[user, pass, DB]),
        ]
        .concat(),
        LIMIT,
    );
    assert_lines(
        &out,
        &[
            "ok first login: switched to caching_sha2_password, full authentication over RSA",
            "ok query (first)",
            "ok second login: caching_sha2_password fast path (no RSA)",
            "ok query (second)",
            "ok wrong password gets 1045",
            "ok query (third)",
            "sha2 done",
        ],
    );
    pooled.finish();
}

// ---- 2. mysql-connector-python ----

/// Runs pooled_connector.py `mode` straight against MariaDB and through a pooled listener
/// (pool capped at 2, `user` and `other` as `[[users]]` with cleartext passwords); both runs
/// must pass and print the same lines. Returns the proxied output.
fn connector(mode: &str, user: (&str, &str), other: (&str, &str)) -> String {
    let db = MariaDb::shared();
    account(db, user.0, user.1);
    account(db, other.0, other.1);
    let pooled = Pooled::start(db.port, &[user, other], &["--max-backend-connections", "2"]);
    let run = |port: u16| {
        let rest = [user.0, user.1, DB, other.0, other.1];
        python(
            "pooled_connector.py",
            &[vec![mode.to_string()], args(port, &rest)].concat(),
            LIMIT,
        )
    };
    let direct = run(db.port);
    let proxied = run(pooled.port);
    assert_eq!(
        proxied, direct,
        "{mode}: through the pooled listener (left) and direct (right) differ"
    );
    pooled.finish();
    proxied
}

/// The binary protocol: one prepared statement executed 300 times from three sessions with
/// parameters of changing types (int, str, None, float, bytes), typed rows inserted and read
/// back through prepared statements, two statements alive on one session, a 60 KB binary
/// resultset; pure Python and, where it loads, the C extension.
#[test]
fn connector_prepared_statements_with_changing_parameter_types() {
    let out = connector(
        "prepared",
        ("rp_pool_ps", "ps-pw"),
        ("rp_pool_ps2", "ps2-pw"),
    );
    assert_lines(
        &out,
        &[
            "ok pure one statement, 300 executions with parameter types changing",
            "ok pure 400 rows read back through a prepared SELECT",
            "ok pure two statements, round 49",
            "pure binary rows ",
        ],
    );
}

/// compress=True sessions: 600 small queries over three compressed sessions sharing two
/// backend connections, 5 KB statements (compressed by the client), a prepared statement.
#[test]
fn connector_compressed_sessions() {
    let out = connector(
        "compress",
        ("rp_pool_zip", "zip-pw"),
        ("rp_pool_zip2", "zip2-pw"),
    );
    assert_lines(
        &out,
        &[
            "ok pure compressed protocol in use",
            "ok pure 600 queries on 3 compressed sessions",
            "ok pure long statement 2",
            "ok pure 500 small rows",
            "ok pure prepared statement executed 200 times, compressed",
        ],
    );
}

/// cmd_reset_connection() and reset_session(): user and system variables, a temporary table,
/// an open transaction and prepared statements are gone, as direct.
#[test]
fn connector_reset_connection() {
    let out = connector(
        "reset",
        ("rp_pool_reset", "reset-pw"),
        ("rp_pool_reset2", "reset2-pw"),
    );
    assert_lines(
        &out,
        &[
            "ok pure cmd_reset_connection()",
            "ok pure after the reset: variables",
            "ok pure after the reset: the open transaction was rolled back",
            "ok pure reset_session()",
        ],
    );
}

/// cmd_change_user(): the session is re-authenticated as the other user (CURRENT_USER(), its
/// state gone), runs queries and prepared statements as that user, changes back; a wrong
/// password gets 1045.
#[test]
fn connector_change_user_reauthenticates() {
    let out = connector(
        "change_user",
        ("rp_pool_cu", "cu-pw"),
        ("rp_pool_cu2", "cu2-pw"),
    );
    assert_lines(
        &out,
        &[
            "ok pure after change_user: the other user, state gone",
            "ok pure prepared statement as the other user",
            "ok pure changed back",
            "ok pure change_user with a wrong password",
            "ok pure change_user twice in a row",
        ],
    );
}

// ---- 3. sysbench ----

/// sysbench, installed first (`scripts/test-prereqs.sh sysbench`) when the machine lacks it.
fn sysbench() -> PathBuf {
    if let Some(path) = find_binary("sysbench") {
        return path;
    }
    with_lock(".prereqs.lock", || {
        if find_binary("sysbench").is_some() {
            return;
        }
        let script = workspace_root().join("scripts/test-prereqs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("sysbench")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} sysbench failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    });
    find_binary("sysbench").expect("sysbench installed by scripts/test-prereqs.sh")
}

/// The first number after `label` (e.g. `    transactions:   6547   (408.90 per sec.)`).
fn stat(out: &str, label: &str) -> u64 {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` number in sysbench's output:\n{out}"))
}

/// sysbench oltp_read_write, 256 threads, 15 s, server-side prepared statements
/// (`--db-ps-mode=auto`), through a pooled listener capped at 32 backend connections: no error
/// but the server's own deadlocks (each counted by InnoDB), no reconnect, transactions done,
/// the statements executed as prepared ones, and MariaDB never sees more than 32 connections
/// of the user (processlist polled throughout).
#[test]
fn sysbench_oltp_read_write_256_threads_over_32_backend_connections() {
    const CAP: u64 = 32;
    let sysbench = sysbench();
    let db = MariaDb::shared();
    let (user, pass, schema) = ("rp_pool_sb", "sb-pw", "rp_sbtest");
    db.root_sql(&format!(
        "DROP DATABASE IF EXISTS {schema}; CREATE DATABASE {schema}; \
         CREATE OR REPLACE USER '{user}'@'%' IDENTIFIED BY '{pass}'; \
         GRANT ALL ON {schema}.* TO '{user}'@'%';"
    ));
    let common = |port: u16, user: &str, pass: &str| -> Vec<String> {
        [
            "oltp_read_write",
            "--db-driver=mysql",
            "--mysql-host=127.0.0.1",
            &format!("--mysql-port={port}"),
            &format!("--mysql-user={user}"),
            &format!("--mysql-password={pass}"),
            &format!("--mysql-db={schema}"),
            "--tables=4",
            "--table-size=10000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run_sysbench = |args: Vec<String>, what: &str| -> String {
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["-k", "5", "50"])
            .arg(&sysbench)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run sysbench");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("FATAL"),
            "sysbench {what} failed ({}) after {:.1} s:\n{}",
            out.status,
            started.elapsed().as_secs_f64(),
            tail(&text, 60)
        );
        text
    };
    // Tables made directly (as another user), the run through the proxy.
    let mut prepare = common(db.port, NATIVE_USER, NATIVE_PASS);
    prepare.push("prepare".into());
    run_sysbench(prepare, "prepare (direct)");

    let pooled = Pooled::start(
        db.port,
        &[(user, pass)],
        &["--max-backend-connections", &CAP.to_string()],
    );
    let deadlocks = db.status("Innodb_deadlocks");
    let executes = db.status("Com_stmt_execute");

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop);
        let sql =
            format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'");
        thread::spawn(move || {
            let (mut max, mut samples) = (0u64, 0u32);
            while !stop.load(Ordering::Relaxed) {
                let n: u64 = db.root_sql(&sql).trim().parse().expect("a count");
                (max, samples) = (max.max(n), samples + 1);
                thread::sleep(Duration::from_millis(100));
            }
            (max, samples)
        })
    };
    let mut run = common(pooled.port, user, pass);
    run.extend(
        [
            "--threads=256",
            "--time=15",
            "--db-ps-mode=auto",
            // Deadlocks are the server's (counted by InnoDB, checked below); any other error,
            // lock wait timeouts included, ends sysbench.
            "--mysql-ignore-errors=1213",
            "run",
        ]
        .map(String::from),
    );
    let started = Instant::now();
    let out = run_sysbench(run, "run (through the pooled listener)");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (max_conns, samples) = poller.join().expect("the processlist poller");
    let deadlocks = db.status("Innodb_deadlocks") - deadlocks;
    let executes = db.status("Com_stmt_execute") - executes;

    let transactions = stat(&out, "transactions:");
    let ignored = stat(&out, "ignored errors:");
    let reconnects = stat(&out, "reconnects:");
    let (reads, writes) = (stat(&out, "read:"), stat(&out, "write:"));
    println!(
        "sysbench through the pooled listener ({:.1} s): {transactions} transactions, \
         {reads} reads, {writes} writes, {ignored} ignored errors ({deadlocks} InnoDB \
         deadlocks), {reconnects} reconnects; {executes} COM_STMT_EXECUTE at the server; at \
         most {max_conns} backend connections over {samples} samples",
        took.as_secs_f64()
    );
    assert!(transactions > 0, "no transaction done:\n{out}");
    assert_eq!(reconnects, 0, "reconnects:\n{out}");
    assert!(
        ignored <= deadlocks,
        "{ignored} errors, of which at most {deadlocks} are the server's deadlocks:\n{out}"
    );
    assert!(
        executes >= reads + writes,
        "{executes} COM_STMT_EXECUTE at the server for {reads} reads and {writes} writes: \
         the statements did not run as prepared statements"
    );
    assert!(samples >= 10, "only {samples} processlist samples");
    assert!(
        (1..=CAP).contains(&max_conns),
        "MariaDB saw up to {max_conns} connections of {user} (cap {CAP})"
    );
    pooled.finish();
}
