//! Pooled mode (`pooled_listen`) end to end: the real `ringproxy` binary with a pooled listener
//! in front of the harness's MariaDB, driven by real clients (the `mysql` crate, the `mariadb`
//! CLI) and, where a client must misbehave, raw sockets.
//!
//! Covered: logins of `[[users]]` (cleartext and mysql_native_password hash), wrong passwords,
//! unknown users and unknown databases with MariaDB's own errors, `default_schema`; users loaded
//! from the backends by a monitor account, including one created after the proxy started; the
//! CLI; per-session state (schema, charset, sql_mode, time zone, user variables, last insert id)
//! under heavy multiplexing, up to 5,000 clients over 50 backend connections; prepared
//! statements shared over a small pool; pins (transaction, temporary table, GET_LOCK,
//! autocommit=0); garbage handshakes and clients that vanish mid-query; pipelined multiplexing
//! (every answer names its client; a killed backend connection costs at most its running query).
//!
//! Each test starts its own proxy with its own `--backend-source` address (127.0.0.1x), so the
//! proxy's backend connections are told apart in MariaDB's processlist by their host, and the
//! limit `max_backend_connections` is checked from the server's side. Tests that load the
//! machine or read server-wide counters (`Prepared_stmt_count`) run one at a time (`heavy()`).

mod common;
mod raw;

use std::collections::BTreeSet;
use std::fs;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, OnceLock};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use common::{pseudo_random_bytes, require_binary, server_error, tail, MariaDb, Proxy};
use mysql::consts::ColumnType;
use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder, Value};
use raw::RawConn;
use sha1::{Digest, Sha1};

// ---------------------------------------------------------------------------------------------
// Shared set-up
// ---------------------------------------------------------------------------------------------

static HEAVY: Mutex<()> = Mutex::new(());

/// Tests that load the machine or read server-wide counters run one at a time.
fn heavy() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accounts (name, password) every test may use: mysql_native_password, ALL on *.*.
const ACCOUNTS: &[(&str, &str)] = &[
    ("pl_clear", "clear-pw"),
    ("pl_hash", "hash-pw"),
    ("pl_cli", "cli-pw"),
    ("pl_state", "state-pw"),
    ("pl_scale", "scale-pw"),
    ("pl_ps", "ps-pw"),
    ("pl_pin", "pin-pw"),
    ("pl_bad", "bad-pw"),
    ("pl_pipe", "pipe-pw"),
];

/// The shared MariaDB with this file's accounts, schemas and tables (created once).
fn setup() -> &'static MariaDb {
    static DONE: OnceLock<()> = OnceLock::new();
    let db = MariaDb::shared();
    DONE.get_or_init(|| {
        let mut sql = String::new();
        for schema in ["pl_a", "pl_b"] {
            sql += &format!(
                "CREATE DATABASE IF NOT EXISTS {schema}; \
                 CREATE TABLE IF NOT EXISTS {schema}.t (id INT AUTO_INCREMENT PRIMARY KEY, \
                 owner INT NOT NULL, v VARCHAR(64) NOT NULL) ENGINE=InnoDB; "
            );
        }
        sql += "CREATE TABLE IF NOT EXISTS rp.pl_granted (id INT PRIMARY KEY); \
                INSERT IGNORE INTO rp.pl_granted VALUES (1), (2); \
                CREATE TABLE IF NOT EXISTS rp.pl_secret (id INT PRIMARY KEY); \
                INSERT IGNORE INTO rp.pl_secret VALUES (1); \
                CREATE TABLE IF NOT EXISTS rp.pl_pin_t (id INT AUTO_INCREMENT PRIMARY KEY, \
                tag VARCHAR(32) NOT NULL) ENGINE=InnoDB; \
                CREATE TABLE IF NOT EXISTS rp.pl_ps (id INT PRIMARY KEY, v VARCHAR(32) NOT NULL); ";
        let rows: Vec<String> = (1..=100).map(|i| format!("({i}, 'v{i}')")).collect();
        sql += &format!("INSERT IGNORE INTO rp.pl_ps VALUES {}; ", rows.join(", "));
        for (user, pass) in ACCOUNTS {
            sql += &format!(
                "CREATE USER IF NOT EXISTS {user}@'%' IDENTIFIED BY '{pass}'; \
                 GRANT ALL ON *.* TO {user}@'%'; "
            );
        }
        sql += "CREATE USER IF NOT EXISTS pl_mon@'%' IDENTIFIED BY 'mon-pw'; \
                GRANT SELECT ON mysql.* TO pl_mon@'%';";
        db.root_sql(&sql);
    });
    db
}

/// Prints a test's run time when it ends, also when it fails.
struct Timer(&'static str, Instant);

impl Timer {
    fn start(name: &'static str) -> Timer {
        Timer(name, Instant::now())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let how = if thread::panicking() { "FAILED" } else { "ok" };
        eprintln!("[time] {}: {:.1?} ({how})", self.0, self.1.elapsed());
    }
}

/// `*` and 40 upper-case hex digits of SHA1(SHA1(password)), as `SELECT PASSWORD()` prints.
fn native_hash(password: &str) -> String {
    let hash = Sha1::digest(Sha1::digest(password.as_bytes()));
    let hex: String = hash.iter().map(|b| format!("{b:02X}")).collect();
    format!("*{hex}")
}

/// A `[[users]]` table.
fn user_toml(name: &str, password: &str, default_schema: Option<&str>) -> String {
    let mut t = format!("[[users]]\nname = \"{name}\"\npassword = \"{password}\"\n");
    if let Some(s) = default_schema {
        t += &format!("default_schema = \"{s}\"\n");
    }
    t + "\n"
}

/// A ringproxy with a pooled listener only, in front of the shared MariaDB, with its backend
/// connections made from `source`.
struct Pooled {
    proxy: Proxy,
    source: &'static str,
    _dir: tempfile::TempDir,
}

impl Pooled {
    /// Starts it with the configuration file `toml` and `args` (2 workers, as the harness).
    fn start(db: &MariaDb, source: &'static str, toml: &str, args: &[&str]) -> Pooled {
        let dir = tempfile::Builder::new()
            .prefix("ringproxy-pooled-")
            .tempdir()
            .expect("temp dir for the configuration");
        let path = dir.path().join("ringproxy.toml");
        fs::write(&path, toml).expect("write the configuration");
        let path = path.to_str().expect("utf-8 temp path").to_string();
        let mut all = vec!["--config", path.as_str(), "--backend-source", source];
        all.extend_from_slice(args);
        let proxy = Proxy::start_pooled(db.port, &all);
        Pooled {
            proxy,
            source,
            _dir: dir,
        }
    }

    fn port(&self) -> u16 {
        self.proxy.port
    }

    fn log_tail(&self) -> String {
        tail(&self.proxy.log(), 40)
    }

    /// The proxy must still run and exit 0 on SIGTERM.
    fn finish(self) {
        self.proxy.finish();
    }
}

/// The proxy's backend connections as MariaDB's processlist shows them (those from the
/// proxy's `--backend-source` address).
#[derive(Clone, Debug, Default)]
struct ConnSample {
    total: u64,
    /// Those past their login (not `unauthenticated user`).
    logged_in: u64,
    /// `user/command: count` groups.
    summary: String,
}

fn proxy_conns(db: &MariaDb, source: &str) -> ConnSample {
    let out = db.root_sql(&format!(
        "SELECT USER, COMMAND, COUNT(*) FROM information_schema.PROCESSLIST \
         WHERE HOST LIKE '{source}:%' GROUP BY USER, COMMAND"
    ));
    let mut sample = ConnSample::default();
    let mut groups = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        let n: u64 = f
            .get(2)
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("processlist line {line:?}"));
        sample.total += n;
        if f[0] != "unauthenticated user" {
            sample.logged_in += n;
        }
        groups.push(format!("{}/{}: {n}", f[0], f.get(1).unwrap_or(&"?")));
    }
    sample.summary = groups.join(", ");
    sample
}

/// The largest numbers of the proxy's backend connections MariaDB showed.
#[derive(Debug, Default)]
struct ConnPeaks {
    /// The sample with the most connections.
    total: ConnSample,
    logged_in: u64,
    samples: usize,
}

impl ConnPeaks {
    /// MariaDB never saw more than `cap` connections from the proxy: first those logged in
    /// (the pool's), then all of them.
    fn assert_within(&self, cap: u64) {
        assert!(
            self.logged_in >= 1,
            "the processlist watch saw no connection of the proxy"
        );
        assert!(
            self.logged_in <= cap,
            "MariaDB saw up to {} logged-in connections from the proxy (max_backend_connections {cap})",
            self.logged_in
        );
        assert!(
            self.total.total <= cap,
            "MariaDB saw up to {} connections from the proxy (max_backend_connections {cap}): {}",
            self.total.total,
            self.total.summary
        );
    }
}

/// Samples the proxy's backend connections every 50 ms until stopped.
struct ConnWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<ConnPeaks>,
}

impl ConnWatch {
    fn start(db: &'static MariaDb, source: &'static str) -> ConnWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut peaks = ConnPeaks::default();
            loop {
                let sample = proxy_conns(db, source);
                peaks.logged_in = peaks.logged_in.max(sample.logged_in);
                if sample.total > peaks.total.total {
                    peaks.total = sample;
                }
                peaks.samples += 1;
                if flag.load(Ordering::Relaxed) {
                    return peaks;
                }
                sleep(Duration::from_millis(50));
            }
        });
        ConnWatch { stop, handle }
    }

    /// Takes one last sample and returns the peaks.
    fn stop(self) -> ConnPeaks {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("processlist watch thread")
    }
}

/// Samples a number in the background until stopped; keeps the largest.
struct Watch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u64, usize)>,
}

impl Watch {
    fn start(period: Duration, sample: impl Fn() -> u64 + Send + 'static) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let (mut max, mut samples) = (0, 0);
            loop {
                max = max.max(sample());
                samples += 1;
                if flag.load(Ordering::Relaxed) {
                    return (max, samples);
                }
                sleep(period);
            }
        });
        Watch { stop, handle }
    }

    /// (largest value, samples taken); takes one last sample.
    fn stop(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("watch thread")
    }
}

/// Client options for 127.0.0.1:`port` (timeouts bound every call).
fn opts(port: u16, user: &str, pass: &str, db: Option<&str>) -> OptsBuilder {
    OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(pass))
        .db_name(db)
        .prefer_socket(false)
        .tcp_connect_timeout(Some(Duration::from_secs(10)))
        .read_timeout(Some(Duration::from_secs(15)))
        .write_timeout(Some(Duration::from_secs(15)))
}

fn connect(port: u16, user: &str, pass: &str, db: Option<&str>) -> Conn {
    Conn::new(opts(port, user, pass, db))
        .unwrap_or_else(|e| panic!("log in as {user} (db {db:?}) on {port}: {e}"))
}

/// A value as text: NULL is None; numbers of the binary protocol as they print.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn texts(row: mysql::Row) -> Vec<Option<String>> {
    row.unwrap().iter().map(text).collect()
}

/// The first row of `sql`, as text.
fn row_of(conn: &mut Conn, sql: &str) -> Result<Vec<Option<String>>, String> {
    match conn.query_first::<mysql::Row, _>(sql) {
        Ok(Some(row)) => Ok(texts(row)),
        Ok(None) => Err(format!("{sql}: no row")),
        Err(e) => Err(format!("{sql}: {e}")),
    }
}

/// The single value of `sql`; panics on an error.
fn value(conn: &mut Conn, sql: &str) -> Option<String> {
    row_of(conn, sql)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .next()
        .flatten()
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// Runs a command, killing it after `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let killer = thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while !flag.load(Ordering::Relaxed) {
            if Instant::now() >= deadline {
                common::signal(pid as i32, libc::SIGKILL);
                return true;
            }
            sleep(Duration::from_millis(20));
        }
        false
    });
    let out = child.wait_with_output().expect("wait for the command");
    done.store(true, Ordering::Relaxed);
    let killed = killer.join().unwrap_or(false);
    assert!(!killed, "{cmd:?} did not finish within {limit:?}");
    out
}

/// The `mariadb` CLI against 127.0.0.1:`port`: batch mode, no column names.
fn cli(port: u16, user: &str, pass: &str, db: Option<&str>, sql: &str) -> Output {
    let mut cmd = Command::new(require_binary("mariadb"));
    cmd.arg("--no-defaults")
        .arg("-h127.0.0.1")
        .arg(format!("-P{port}"))
        .arg(format!("-u{user}"))
        .arg(format!("-p{pass}"))
        .args(["--protocol=TCP", "--batch", "--skip-column-names"])
        .arg("--connect-timeout=10");
    if let Some(db) = db {
        cmd.arg(db);
    }
    cmd.arg("-e").arg(sql);
    output_within(&mut cmd, Duration::from_secs(30))
}

// ---------------------------------------------------------------------------------------------
// A session's state, as the client set it, checked against what the server reports
// ---------------------------------------------------------------------------------------------

const CHARSETS: [&str; 5] = ["utf8mb4", "latin1", "cp1251", "ascii", "utf8mb3"];
const MODES: [&str; 6] = [
    "",
    "ANSI_QUOTES",
    "PIPES_AS_CONCAT,ANSI_QUOTES",
    "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION",
    "NO_BACKSLASH_ESCAPES",
    "PIPES_AS_CONCAT,NO_BACKSLASH_ESCAPES",
];
const ZONES: [&str; 5] = ["+01:00", "-05:30", "+09:45", "+00:00", "-11:00"];

/// What the state check reads, in this order.
const CHECK: &str = "SELECT DATABASE(), @@character_set_client, @@character_set_connection, \
     @@character_set_results, @@sql_mode, @@time_zone, @s, CHARSET(@s), @n, @z, @d, \
     LAST_INSERT_ID(), 1 || 2, CONNECTION_ID()";

#[derive(Clone, Debug)]
struct Vars {
    s: String,
    /// The connection charset when @s was set (the variable's own charset).
    s_charset: String,
    n: i64,
    d: String,
}

#[derive(Clone, Debug)]
struct Expected {
    schema: Option<String>,
    charset: String,
    sql_mode: String,
    time_zone: String,
    vars: Option<Vars>,
    last_id: u64,
}

fn mode_set(mode: &str) -> BTreeSet<&str> {
    mode.split(',').filter(|m| !m.is_empty()).collect()
}

/// A string literal for the session's sql_mode.
fn sql_string(value: &str, no_backslash_escapes: bool) -> String {
    let mut v = value.replace('\'', "''");
    if !no_backslash_escapes {
        v = v.replace('\\', "\\\\");
    }
    format!("'{v}'")
}

/// A session's failure: what happened after which statement, and the state it expected.
fn failure(id: usize, exp: &Expected, context: &str, what: impl std::fmt::Display) -> String {
    format!("session {id} after `{context}`: {what} (expected state {exp:?})")
}

/// One client session through the proxy, with the state it set.
struct Session {
    id: usize,
    conn: Conn,
    exp: Expected,
    last_conn_id: Option<u32>,
    /// Checks that found the session on another backend connection than the one before.
    moves: usize,
    queries: usize,
    /// Wrong states seen: (what was wrong, the whole story).
    mismatches: Vec<(&'static str, String)>,
}

impl Session {
    /// Logs in (naming `db` or none) and reads the baseline: charset, sql_mode and time zone of
    /// a fresh connection, no user variables, no insert id.
    fn open(
        port: u16,
        user: &str,
        pass: &str,
        id: usize,
        db: Option<&str>,
        global_mode: &str,
    ) -> Result<Session, String> {
        let conn = Conn::new(opts(port, user, pass, db))
            .map_err(|e| format!("session {id}: log in as {user} (db {db:?}): {e}"))?;
        let mut s = Session {
            id,
            conn,
            exp: Expected {
                schema: db.map(str::to_string),
                charset: String::new(),
                sql_mode: global_mode.to_string(),
                time_zone: "SYSTEM".into(),
                vars: None,
                last_id: 0,
            },
            last_conn_id: None,
            moves: 0,
            queries: 1,
            mismatches: Vec::new(),
        };
        let base = row_of(&mut s.conn, "SELECT @@character_set_client")
            .map_err(|e| format!("session {id}: {e}"))?;
        s.exp.charset = base[0].clone().unwrap_or_default();
        s.check("login")?;
        Ok(s)
    }

    fn fail(&self, context: &str, what: impl std::fmt::Display) -> String {
        failure(self.id, &self.exp, context, what)
    }

    /// Reads the whole state and compares it with what the session set.
    fn check(&mut self, context: &str) -> Result<(), String> {
        self.queries += 1;
        let mut result = self.conn.query_iter(CHECK).map_err(|e| {
            failure(
                self.id,
                &self.exp,
                context,
                format!("state check failed: {e}"),
            )
        })?;
        let types: Vec<ColumnType> = result
            .columns()
            .as_ref()
            .iter()
            .map(|c| c.column_type())
            .collect();
        let mut rows = Vec::new();
        for row in result.by_ref() {
            match row {
                Ok(r) => rows.push(texts(r)),
                Err(e) => {
                    drop(result);
                    return Err(self.fail(context, format!("state check row: {e}")));
                }
            }
        }
        drop(result);
        let Some(got) = rows.into_iter().next() else {
            return Err(self.fail(context, "state check returned no row"));
        };
        let e = &self.exp;
        let mut diffs = Vec::new();
        if got[0] != e.schema {
            diffs.push(("DATABASE()", format!("DATABASE() {:?}", got[0])));
        }
        for (i, name) in [
            (1, "character_set_client"),
            (2, "character_set_connection"),
            (3, "character_set_results"),
        ] {
            if got[i].as_deref() != Some(e.charset.as_str()) {
                diffs.push((name, format!("{name} {:?}", got[i])));
            }
        }
        let mode = got[4].clone().unwrap_or_default();
        if mode_set(&mode) != mode_set(&e.sql_mode) {
            diffs.push(("sql_mode", format!("sql_mode {mode:?}")));
        }
        if got[5].as_deref() != Some(e.time_zone.as_str()) {
            diffs.push(("time_zone", format!("time_zone {:?}", got[5])));
        }
        match &e.vars {
            None => {
                if got[6].is_some() || got[8].is_some() || got[9].is_some() || got[10].is_some() {
                    diffs.push((
                        "user variables",
                        format!("user variables set: {:?}", &got[6..11]),
                    ));
                }
            }
            Some(v) => {
                if got[6].as_deref() != Some(v.s.as_str()) {
                    diffs.push(("@s", format!("@s {:?}", got[6])));
                }
                if got[7].as_deref() != Some(v.s_charset.as_str()) {
                    diffs.push(("CHARSET(@s)", format!("CHARSET(@s) {:?}", got[7])));
                }
                if got[8] != Some(v.n.to_string()) || types[8] != ColumnType::MYSQL_TYPE_LONGLONG {
                    diffs.push(("@n", format!("@n {:?} of type {:?}", got[8], types[8])));
                }
                if got[9].is_some() {
                    diffs.push(("@z", format!("@z {:?}", got[9])));
                }
                if got[10].as_deref() != Some(v.d.as_str())
                    || types[10] != ColumnType::MYSQL_TYPE_NEWDECIMAL
                {
                    diffs.push(("@d", format!("@d {:?} of type {:?}", got[10], types[10])));
                }
            }
        }
        if got[11] != Some(e.last_id.to_string()) {
            diffs.push((
                "LAST_INSERT_ID()",
                format!("LAST_INSERT_ID() {:?}", got[11]),
            ));
        }
        let pipes = mode_set(&e.sql_mode).contains("PIPES_AS_CONCAT");
        let want = if pipes { "12" } else { "1" };
        if got[12].as_deref() != Some(want) {
            diffs.push((
                "sql_mode in effect",
                format!("1 || 2 gave {:?} (sql_mode not in effect)", got[12]),
            ));
        }
        // A wrong state is recorded and the session goes on (what it set stays what it
        // expects), so that one kind of wrong state does not hide the others.
        for (kind, detail) in diffs {
            let msg = self.fail(context, format!("wrong {detail}"));
            self.mismatches.push((kind, msg));
        }
        let conn_id: Option<u32> = got[13].as_deref().and_then(|v| v.parse().ok());
        if self.last_conn_id.is_some() && conn_id != self.last_conn_id {
            self.moves += 1;
        }
        self.last_conn_id = conn_id;
        Ok(())
    }

    /// Runs `sql` (no result expected) and checks the state after it.
    fn run(&mut self, sql: &str) -> Result<(), String> {
        self.queries += 1;
        self.conn
            .query_drop(sql)
            .map_err(|e| self.fail(sql, format!("failed: {e}")))?;
        self.check(sql)
    }

    fn no_backslash_escapes(&self) -> bool {
        mode_set(&self.exp.sql_mode).contains("NO_BACKSLASH_ESCAPES")
    }

    /// `USE schema` as a query, or COM_INIT_DB.
    fn use_schema(&mut self, schema: &str, init_db: bool) -> Result<(), String> {
        if init_db {
            self.queries += 1;
            self.conn
                .select_db(schema)
                .map_err(|e| self.fail("COM_INIT_DB", format!("failed: {e}")))?;
            self.exp.schema = Some(schema.into());
            self.check(&format!("COM_INIT_DB {schema}"))
        } else {
            self.exp.schema = Some(schema.into());
            self.run(&format!("USE {schema}"))
        }
    }

    fn set_names(&mut self, charset: &str) -> Result<(), String> {
        self.exp.charset = charset.into();
        self.run(&format!("SET NAMES {charset}"))
    }

    fn set_mode_and_zone(&mut self, mode: &str, zone: &str, together: bool) -> Result<(), String> {
        if together {
            self.exp.sql_mode = mode.into();
            self.exp.time_zone = zone.into();
            return self.run(&format!(
                "SET SESSION sql_mode = '{mode}', time_zone = '{zone}'"
            ));
        }
        self.exp.sql_mode = mode.into();
        self.run(&format!("SET sql_mode = '{mode}'"))?;
        self.exp.time_zone = zone.into();
        self.run(&format!("SET @@session.time_zone = '{zone}'"))
    }

    fn set_vars(&mut self, s: &str, n: i64, d: &str) -> Result<(), String> {
        let literal = sql_string(s, self.no_backslash_escapes());
        self.exp.vars = Some(Vars {
            s: s.into(),
            s_charset: self.exp.charset.clone(),
            n,
            d: d.into(),
        });
        self.run(&format!(
            "SET @s = {literal}, @n = {n}, @z = NULL, @d = {d}"
        ))
    }

    /// BEGIN; INSERT; read the row and LAST_INSERT_ID() back; COMMIT, checking after each.
    fn transaction(&mut self, tag: &str) -> Result<(), String> {
        self.run("BEGIN")?;
        let insert = format!("INSERT INTO t (owner, v) VALUES ({}, '{tag}')", self.id);
        self.queries += 1;
        self.conn
            .query_drop(&insert)
            .map_err(|e| self.fail(&insert, format!("failed: {e}")))?;
        let id = self.conn.last_insert_id();
        if id == 0 {
            return Err(self.fail(&insert, "no insert id in the OK packet"));
        }
        self.exp.last_id = id;
        self.check(&insert)?;
        let select = format!("SELECT owner, v, LAST_INSERT_ID() FROM t WHERE id = {id}");
        self.queries += 1;
        let got = row_of(&mut self.conn, &select).map_err(|e| self.fail(&select, e))?;
        let want = vec![Some(self.id.to_string()), some(tag), Some(id.to_string())];
        if got != want {
            let msg = self.fail(&select, format!("got {got:?}, want {want:?}"));
            self.mismatches
                .push(("row read back in the transaction", msg));
        }
        self.check(&select)?;
        self.run("COMMIT")
    }
}

/// The server's global sql_mode (what a fresh session starts with).
fn global_mode(db: &MariaDb) -> String {
    db.root_sql("SELECT @@GLOBAL.sql_mode").trim().to_string()
}

/// Collects failures of many threads; keeps the first of each kind (the message without its
/// digits and expected-state dump), up to 12.
#[derive(Default)]
struct Failures {
    list: Mutex<Vec<(String, String, usize)>>,
    count: AtomicUsize,
}

impl Failures {
    fn add(&self, what: String) {
        let head = what.split(" (expected state").next().unwrap_or(&what);
        let kind: String = head.chars().filter(|c| !c.is_ascii_digit()).collect();
        self.add_kind(&kind, what);
    }

    /// Wrong states of a session, one kind per state item.
    fn add_session(&self, s: &Session) {
        for (kind, what) in &s.mismatches {
            self.add_kind(&format!("wrong {kind}"), what.clone());
        }
    }

    fn add_kind(&self, kind: &str, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = list.iter_mut().find(|(k, _, _)| k == kind) {
            entry.2 += 1;
        } else if list.len() < 12 {
            list.push((kind.to_string(), what, 1));
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn report(&self) -> String {
        let list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .map(|(kind, first, n)| format!("[{n}× {kind}] {first}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Logins
// ---------------------------------------------------------------------------------------------

/// The error a login to `port` gets.
fn login_error(port: u16, user: &str, pass: &str, db: Option<&str>) -> mysql::MySqlError {
    server_error(Conn::new(opts(port, user, pass, db)))
}

#[test]
fn login_config_users_and_refusals() {
    let started = Instant::now();
    let _timer = Timer::start("login_config_users_and_refusals");
    let db = setup();
    let hash = native_hash("hash-pw");
    assert_eq!(
        hash,
        db.root_sql("SELECT PASSWORD('hash-pw')").trim(),
        "the test's hash is MariaDB's"
    );
    let toml = user_toml("pl_clear", "clear-pw", Some("app")) + &user_toml("pl_hash", &hash, None);
    let p = Pooled::start(db, "127.0.0.11", &toml, &["--auth-failure-delay-ms", "0"]);
    let port = p.port();

    // Cleartext password, no database named: the default schema.
    let mut c = connect(port, "pl_clear", "clear-pw", None);
    assert_eq!(value(&mut c, "SELECT DATABASE()"), some("app"));
    assert_eq!(value(&mut c, "SELECT CURRENT_USER()"), some("pl_clear@%"));
    assert_eq!(value(&mut c, "SELECT 6 * 7"), some("42"));
    drop(c);
    // A database named wins over the default schema.
    let mut c = connect(port, "pl_clear", "clear-pw", Some("rp"));
    assert_eq!(value(&mut c, "SELECT DATABASE()"), some("rp"));
    assert_eq!(value(&mut c, "SELECT COUNT(*) FROM pl_granted"), some("2"));
    drop(c);

    // mysql_native_password hash in the configuration.
    let mut c = connect(port, "pl_hash", "hash-pw", Some("rp"));
    assert_eq!(value(&mut c, "SELECT DATABASE()"), some("rp"));
    assert_eq!(value(&mut c, "SELECT CURRENT_USER()"), some("pl_hash@%"));
    assert_eq!(value(&mut c, "SELECT COUNT(*) FROM pl_granted"), some("2"));
    drop(c);
    // Wrong passwords and an unknown user: MariaDB's error, exactly.
    for (user, pass, used) in [
        ("pl_clear", "wrong", "YES"),
        ("pl_hash", "wrong", "YES"),
        ("pl_nobody", "whatever", "YES"),
        ("pl_clear", "", "NO"),
    ] {
        let e = login_error(port, user, pass, Some("rp"));
        let want = format!("Access denied for user '{user}'@'127.0.0.1' (using password: {used})");
        assert_eq!(
            (e.code, e.state.as_str(), e.message.as_str()),
            (1045, "28000", want.as_str()),
            "login as {user} with password {pass:?}"
        );
        let direct = login_error(db.port, user, pass, Some("rp"));
        assert_eq!(
            (e.code, &e.state, &e.message),
            (direct.code, &direct.state, &direct.message),
            "the proxy's refusal of {user}/{pass:?} is MariaDB's own"
        );
    }

    // A database that does not exist: MariaDB's own error, passed through.
    let e = login_error(port, "pl_clear", "clear-pw", Some("pl_no_such_db"));
    let direct = login_error(db.port, "pl_clear", "clear-pw", Some("pl_no_such_db"));
    assert_eq!(e.code, 1049, "Unknown database: {e}");
    assert_eq!(
        (e.code, &e.state, &e.message),
        (direct.code, &direct.state, &direct.message),
        "the unknown database error is MariaDB's"
    );
    // The user still logs in after all those failures.
    let mut c = connect(port, "pl_hash", "hash-pw", Some("rp"));
    assert_eq!(value(&mut c, "SELECT CURRENT_USER()"), some("pl_hash@%"));
    drop(c);

    // Two more checks, both reported (neither hides the other).
    let mut problems = Vec::new();
    // No database named and no default schema: none selected, also when the pooled
    // connections were last used in one (several times: each worker has its own pool).
    for k in 0..8 {
        let mut c = connect(port, "pl_hash", "hash-pw", Some("rp"));
        assert_eq!(value(&mut c, "SELECT DATABASE()"), some("rp"));
        drop(c);
        let mut c = connect(port, "pl_hash", "hash-pw", None);
        let schema = value(&mut c, "SELECT DATABASE()");
        assert_eq!(value(&mut c, "SELECT 1 + 1"), some("2"));
        drop(c);
        if schema.is_some() {
            problems.push(format!(
                "login {k} naming no database (user without default_schema, the previous \
                 session of the user used rp): SELECT DATABASE() gave {schema:?}, not NULL"
            ));
            break;
        }
    }
    // An OK packet with an info string (an UPDATE's "Rows matched"), as MariaDB sends it.
    let mut c = connect(port, "pl_clear", "clear-pw", Some("rp"));
    match c.query_drop("UPDATE pl_granted SET id = id WHERE id > 0") {
        Ok(()) => {
            let info = c.info_str().into_owned();
            if (c.affected_rows(), info.as_str()) != (0, "Rows matched: 2  Changed: 0  Warnings: 0")
            {
                problems.push(format!(
                    "UPDATE: affected rows {}, info {info:?}",
                    c.affected_rows()
                ));
            }
        }
        Err(e) => problems.push(format!("UPDATE pl_granted SET id = id WHERE id > 0: {e}")),
    }
    drop(c);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    p.finish();
    eprintln!("login_config_users_and_refusals: {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. Users loaded from the backend by the monitor account
// ---------------------------------------------------------------------------------------------

#[test]
fn monitor_loads_backend_users_created_after_start() {
    let started = Instant::now();
    let _timer = Timer::start("monitor_loads_backend_users_created_after_start");
    let db = setup();
    db.root_sql("DROP USER IF EXISTS pl_late@'%'");
    let toml = "[monitor]\nuser = \"pl_mon\"\npassword = \"mon-pw\"\nusers_refresh_ms = 100\n";
    let p = Pooled::start(db, "127.0.0.12", toml, &["--auth-failure-delay-ms", "0"]);
    let port = p.port();

    // An account that existed at start.
    let mut c = connect(port, "pl_clear", "clear-pw", Some("rp"));
    assert_eq!(value(&mut c, "SELECT CURRENT_USER()"), some("pl_clear@%"));
    drop(c);
    let e = login_error(port, "pl_clear", "not-it", Some("rp"));
    assert_eq!(
        (e.code, e.state.as_str(), e.message.as_str()),
        (
            1045,
            "28000",
            "Access denied for user 'pl_clear'@'127.0.0.1' (using password: YES)"
        )
    );

    // More than users_refresh_ms after the last load, an account is created...
    sleep(Duration::from_millis(300));
    db.root_sql(
        "CREATE USER pl_late@'%' IDENTIFIED BY 'late-pw'; \
         GRANT SELECT ON rp.pl_granted TO pl_late@'%';",
    );
    // ...and logs in at once: the proxy reloads on the unknown user.
    let t = Instant::now();
    let mut c = Conn::new(opts(port, "pl_late", "late-pw", Some("rp"))).unwrap_or_else(|e| {
        panic!(
            "pl_late, created after the proxy started, cannot log in: {e}; log tail:\n{}",
            p.log_tail()
        )
    });
    let login_time = t.elapsed();
    assert_eq!(value(&mut c, "SELECT CURRENT_USER()"), some("pl_late@%"));
    assert_eq!(value(&mut c, "SELECT COUNT(*) FROM pl_granted"), some("2"));
    // Its privileges are the server's.
    let e = server_error(c.query_drop("SELECT * FROM pl_secret"));
    assert_eq!(e.code, 1142, "SELECT of a table not granted: {e}");
    assert!(
        e.message
            .starts_with("SELECT command denied to user 'pl_late'@"),
        "{e}"
    );
    let e = server_error(c.query_drop("INSERT INTO pl_granted VALUES (3)"));
    assert_eq!(e.code, 1142, "INSERT not granted: {e}");
    // The session goes on after the errors.
    assert_eq!(value(&mut c, "SELECT MAX(id) FROM pl_granted"), some("2"));
    drop(c);
    // Its password is checked.
    let e = login_error(port, "pl_late", "wrong", Some("rp"));
    assert_eq!(e.code, 1045, "{e}");
    p.finish();
    eprintln!(
        "monitor_loads_backend_users_created_after_start: {:?} (late login {login_time:?})",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The mariadb CLI
// ---------------------------------------------------------------------------------------------

#[test]
fn mariadb_cli_through_the_pooled_listener() {
    let started = Instant::now();
    let _timer = Timer::start("mariadb_cli_through_the_pooled_listener");
    let db = setup();
    let toml = user_toml("pl_cli", "cli-pw", Some("app"));
    let p = Pooled::start(db, "127.0.0.13", &toml, &["--auth-failure-delay-ms", "0"]);
    let port = p.port();
    let show = |out: &Output| {
        format!(
            "exit {}; stdout:\n{}stderr:\n{}proxy log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            p.log_tail()
        )
    };

    let out = cli(
        port,
        "pl_cli",
        "cli-pw",
        Some("rp"),
        "SELECT DATABASE(); USE app; SELECT DATABASE(); SET @a=1; SELECT @a; \
         USE rp; SELECT DATABASE(), @a, CURRENT_USER(); SELECT COUNT(*) FROM pl_granted",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "rp\napp\n1\nrp\t1\tpl_cli@%\n2\n",
        "{}",
        show(&out)
    );

    // A result of many small rows (they straddle every receive buffer boundary), exactly as
    // MariaDB sends it.
    let many = "SELECT seq, CONCAT('row-', seq), seq * 3 FROM seq_1_to_100000";
    let via = cli(port, "pl_cli", "cli-pw", Some("rp"), many);
    let direct = cli(db.port, "pl_cli", "cli-pw", Some("rp"), many);
    assert!(via.status.success(), "{}", show(&via));
    assert_eq!(direct.stdout.len(), via.stdout.len(), "100,000 rows' bytes");
    assert!(
        direct.stdout == via.stdout,
        "100,000 rows differ from MariaDB's"
    );

    // No database named: the default schema.
    let out = cli(
        port,
        "pl_cli",
        "cli-pw",
        None,
        "SELECT DATABASE(); SELECT @a",
    );
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "app\nNULL\n",
        "{}",
        show(&out)
    );

    // A failing statement: the server's error, exit status 1.
    let out = cli(
        port,
        "pl_cli",
        "cli-pw",
        Some("rp"),
        "SELECT 1; SELECT * FROM pl_no_such_table",
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n",
        "{}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR 1146 (42S02)"),
        "{}",
        show(&out)
    );

    // A wrong password.
    let out = cli(port, "pl_cli", "nope", Some("rp"), "SELECT 1");
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "ERROR 1045 (28000): Access denied for user 'pl_cli'@'127.0.0.1' (using password: YES)"
        ),
        "{}",
        show(&out)
    );
    p.finish();
    eprintln!(
        "mariadb_cli_through_the_pooled_listener: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Per-session state under multiplexing
// ---------------------------------------------------------------------------------------------

#[test]
fn state_stays_per_session_200_sessions_over_4_connections() {
    let _serial = heavy();
    let started = Instant::now();
    let _timer = Timer::start("state_stays_per_session_200_sessions_over_4_connections");
    let db = setup();
    const SESSIONS: usize = 200;
    const ROUNDS: usize = 3;
    const CAP: u64 = 4;
    let toml = user_toml("pl_state", "state-pw", None);
    let p = Pooled::start(
        db,
        "127.0.0.14",
        &toml,
        &["--max-backend-connections", "4", "--workers", "2"],
    );
    let port = p.port();
    let global = global_mode(db);
    let watch = ConnWatch::start(db, p.source);
    let failures = Arc::new(Failures::default());
    let moves = Arc::new(AtomicUsize::new(0));
    let queries = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(35);
    let threads: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let (failures, moves, queries) = (
                Arc::clone(&failures),
                Arc::clone(&moves),
                Arc::clone(&queries),
            );
            let global = global.clone();
            thread::spawn(move || {
                // Logs in naming a schema: a login naming none is login_…'s business.
                let first = ["rp", "pl_a", "pl_b"][i % 3];
                let mut s =
                    match Session::open(port, "pl_state", "state-pw", i, Some(first), &global) {
                        Ok(s) => s,
                        Err(e) => return failures.add(e),
                    };
                let result = (|| -> Result<(), String> {
                    for k in 0..ROUNDS {
                        if Instant::now() > deadline {
                            return Err(format!("session {i}: out of time in round {k}"));
                        }
                        let schema = ["pl_a", "pl_b"][(i + k) % 2];
                        s.use_schema(schema, (i + k) % 3 == 0)?;
                        s.set_names(CHARSETS[(i * 7 + k) % CHARSETS.len()])?;
                        s.set_mode_and_zone(
                            MODES[(i * 3 + k) % MODES.len()],
                            ZONES[(i + k * 2) % ZONES.len()],
                            false,
                        )?;
                        let n = (i * 1000 + k) as i64 * if i % 2 == 1 { -1 } else { 1 };
                        let sv = format!("it's\\{i}-{k}");
                        s.set_vars(&sv, n, &format!("{i}.{:03}", k * 7 + 1))?;
                        s.transaction(&format!("s{i}-r{k}"))?;
                    }
                    Ok(())
                })();
                if let Err(e) = result {
                    failures.add(e);
                }
                failures.add_session(&s);
                moves.fetch_add(s.moves, Ordering::Relaxed);
                queries.fetch_add(s.queries, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("session thread");
    }
    let peaks = watch.stop();
    let moves = moves.load(Ordering::Relaxed);
    eprintln!(
        "state_stays_per_session_200_sessions_over_4_connections: {:?}, {} queries, {moves} moves, {} failures, peak backend connections {} logged in / {} in all ({}; {} samples)",
        started.elapsed(),
        queries.load(Ordering::Relaxed),
        failures.count(),
        peaks.logged_in,
        peaks.total.total,
        peaks.total.summary,
        peaks.samples
    );
    assert_eq!(
        failures.count(),
        0,
        "{} failures in {SESSIONS} sessions; the first of each kind:\n{}\nproxy log tail:\n{}",
        failures.count(),
        failures.report(),
        p.log_tail()
    );
    peaks.assert_within(CAP);
    assert!(
        moves > SESSIONS,
        "sessions moved between backend connections only {moves} times: no multiplexing?"
    );
    p.finish();
}

// ---------------------------------------------------------------------------------------------
// 5. 5,000 clients over 50 backend connections
// ---------------------------------------------------------------------------------------------

#[test]
fn scale_5000_clients_over_50_backend_connections() {
    let _serial = heavy();
    let started = Instant::now();
    let _timer = Timer::start("scale_5000_clients_over_50_backend_connections");
    let db = setup();
    const THREADS: usize = 100;
    const PER_THREAD: usize = 50;
    const CLIENTS: usize = THREADS * PER_THREAD;
    const CAP: u64 = 50;
    let toml = user_toml("pl_scale", "scale-pw", None);
    let p = Pooled::start(
        db,
        "127.0.0.15",
        &toml,
        &[
            "--max-backend-connections",
            "50",
            "--workers",
            "2",
            "--max-connections",
            "6000",
            "--max-connections-per-source",
            "0",
        ],
    );
    let port = p.port();
    let global = global_mode(db);
    let watch = ConnWatch::start(db, p.source);
    let failures = Arc::new(Failures::default());
    let connected = Arc::new(AtomicUsize::new(0));
    let at_once = Arc::new(AtomicUsize::new(0));
    let moves = Arc::new(AtomicUsize::new(0));
    let queries = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let deadline = Instant::now() + Duration::from_secs(35);
    let connect_done = Arc::new(Mutex::new(None::<Duration>));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (failures, connected, at_once, moves, queries, barrier, global, connect_done) = (
                Arc::clone(&failures),
                Arc::clone(&connected),
                Arc::clone(&at_once),
                Arc::clone(&moves),
                Arc::clone(&queries),
                Arc::clone(&barrier),
                global.clone(),
                Arc::clone(&connect_done),
            );
            thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(move || {
                    let mut sessions = Vec::with_capacity(PER_THREAD);
                    for j in 0..PER_THREAD {
                        let i = t * PER_THREAD + j;
                        let schema = ["pl_a", "pl_b"][i % 2];
                        match Session::open(port, "pl_scale", "scale-pw", i, Some(schema), &global)
                        {
                            Ok(s) => sessions.push(s),
                            Err(e) => {
                                failures.add(e);
                                break;
                            }
                        }
                    }
                    connected.fetch_add(sessions.len(), Ordering::SeqCst);
                    // Every client of every thread is connected before any starts its work.
                    if barrier.wait().is_leader() {
                        at_once.store(connected.load(Ordering::SeqCst), Ordering::SeqCst);
                        *connect_done.lock().unwrap() = Some(started.elapsed());
                    }
                    let ok = sessions.len() == PER_THREAD;
                    let work = |sessions: &mut Vec<Session>| -> Result<(), String> {
                        for phase in 0..6 {
                            for s in sessions.iter_mut() {
                                if Instant::now() > deadline {
                                    return Err(format!(
                                        "session {}: out of time in phase {phase}",
                                        s.id
                                    ));
                                }
                                let i = s.id;
                                match phase {
                                    0 => s.set_names(CHARSETS[i % CHARSETS.len()])?,
                                    1 => s.set_mode_and_zone(
                                        MODES[(i / 5) % MODES.len()],
                                        ZONES[(i / 3) % ZONES.len()],
                                        true,
                                    )?,
                                    2 => {
                                        let n = i as i64 * if i % 2 == 1 { -7 } else { 7 };
                                        let sv = format!("c'{i}\\x");
                                        s.set_vars(&sv, n, &format!("{}.{:02}", i, i % 100))?
                                    }
                                    3 => s.transaction(&format!("scale{i}"))?,
                                    4 => prepared_step(s)?,
                                    _ => s.check("the end")?,
                                }
                            }
                        }
                        Ok(())
                    };
                    if ok {
                        if let Err(e) = work(&mut sessions) {
                            failures.add(e);
                        }
                    }
                    // Nobody disconnects before everybody is done.
                    barrier.wait();
                    for s in &sessions {
                        failures.add_session(s);
                        moves.fetch_add(s.moves, Ordering::Relaxed);
                        queries.fetch_add(s.queries, Ordering::Relaxed);
                    }
                    drop(sessions);
                })
                .expect("spawn client thread")
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let peaks = watch.stop();
    let connect_time = connect_done.lock().unwrap().unwrap_or_default();
    eprintln!(
        "scale_5000_clients_over_50_backend_connections: {:?} (all connected after {connect_time:?}), {} queries, {} moves, {} failures, peak backend connections {} logged in / {} in all ({}; {} samples)",
        started.elapsed(),
        queries.load(Ordering::Relaxed),
        moves.load(Ordering::Relaxed),
        failures.count(),
        peaks.logged_in,
        peaks.total.total,
        peaks.total.summary,
        peaks.samples
    );
    assert_eq!(
        failures.count(),
        0,
        "{} failures; the first of each kind:\n{}\nproxy log tail:\n{}",
        failures.count(),
        failures.report(),
        p.log_tail()
    );
    assert_eq!(
        at_once.load(Ordering::SeqCst),
        CLIENTS,
        "clients connected at once"
    );
    peaks.assert_within(CAP);
    p.finish();
}

/// Prepares a statement that reads the session's state and executes it twice.
fn prepared_step(s: &mut Session) -> Result<(), String> {
    const SQL: &str = "SELECT CONCAT(?, ':', @s), DATABASE(), @@time_zone, @n, ? + 1";
    s.queries += 1;
    let stmt = s
        .conn
        .prep(SQL)
        .map_err(|e| s.fail("COM_STMT_PREPARE", format!("failed: {e}")))?;
    for round in 0..2i64 {
        s.queries += 1;
        let tag = format!("p{}", s.id);
        let row: Option<mysql::Row> = s
            .conn
            .exec_first(&stmt, (tag.clone(), round))
            .map_err(|e| s.fail("COM_STMT_EXECUTE", format!("failed: {e}")))?;
        let got = row.map(texts).unwrap_or_default();
        let v = s.exp.vars.clone().expect("vars set before");
        let want = vec![
            Some(format!("{tag}:{}", v.s)),
            s.exp.schema.clone(),
            Some(s.exp.time_zone.clone()),
            Some(v.n.to_string()),
            Some((round + 1).to_string()),
        ];
        if got != want {
            let msg = s.fail(
                "COM_STMT_EXECUTE",
                format!("got {got:?}, want {want:?} (statement id {})", stmt.id()),
            );
            s.mismatches.push(("prepared statement's result", msg));
        }
        s.check("COM_STMT_EXECUTE")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Prepared statements shared over a small pool
// ---------------------------------------------------------------------------------------------

/// The SQL texts every client of the prepared-statements test prepares.
const PS_SQLS: [&str; 3] = [
    "SELECT ? + ?",
    "SELECT CONCAT(?, '/', ?)",
    "SELECT v FROM pl_ps WHERE id = ?",
];
/// Rounds of executions of each statement by each client.
const PS_ROUNDS: usize = 4;

type PsClient = (usize, Conn, Vec<mysql::Statement>);

/// Clients `ids` log in and prepare `PS_SQLS`; each gets distinct, non-zero statement ids.
fn ps_prepare(port: u16, ids: std::ops::Range<usize>) -> Result<Vec<PsClient>, String> {
    let mut clients = Vec::new();
    for i in ids {
        let mut conn = Conn::new(opts(port, "pl_ps", "ps-pw", Some("rp")))
            .map_err(|e| format!("client {i}: log in: {e}"))?;
        let mut prepared = Vec::new();
        for sql in PS_SQLS {
            let st = conn
                .prep(sql)
                .map_err(|e| format!("client {i}: prepare {sql}: {e}"))?;
            prepared.push(st);
        }
        let ids: BTreeSet<u32> = prepared.iter().map(|s| s.id()).collect();
        if ids.len() != PS_SQLS.len() || ids.contains(&0) {
            return Err(format!("client {i}: statement ids {ids:?}"));
        }
        clients.push((i, conn, prepared));
    }
    Ok(clients)
}

/// Each client executes each statement `PS_ROUNDS` times, round-robin over the clients (so
/// every execution may land on another backend connection); then the ids are checked: the same
/// SQL prepared again (the crate's cache) keeps its id, a closed statement is unknown (1243),
/// and preparing it anew works.
fn ps_rounds(clients: &mut [PsClient], deadline: Instant) -> Result<(), String> {
    for round in 0..PS_ROUNDS {
        for (i, conn, prepared) in clients.iter_mut() {
            if Instant::now() > deadline {
                return Err(format!("client {i}: out of time in round {round}"));
            }
            let (i, r) = (*i as i64, round as i64);
            let ctx = |what: &str, e: &dyn std::fmt::Display| {
                format!("client {i} round {round}: {what}: {e}")
            };
            let a: Option<mysql::Row> = conn
                .exec_first(&prepared[0], (i, r))
                .map_err(|e| ctx(PS_SQLS[0], &e))?;
            let a = a.map(texts).unwrap_or_default();
            if a != vec![Some((i + r).to_string())] {
                return Err(ctx(
                    PS_SQLS[0],
                    &format!("got {a:?} (statement id {})", prepared[0].id()),
                ));
            }
            let b: Option<mysql::Row> = conn
                .exec_first(&prepared[1], (format!("c{i}"), r))
                .map_err(|e| ctx(PS_SQLS[1], &e))?;
            let b = b.map(texts).unwrap_or_default();
            if b != vec![Some(format!("c{i}/{r}"))] {
                return Err(ctx(
                    PS_SQLS[1],
                    &format!("got {b:?} (statement id {})", prepared[1].id()),
                ));
            }
            let key = (i * 7 + r) % 100 + 1;
            let c: Option<mysql::Row> = conn
                .exec_first(&prepared[2], (key,))
                .map_err(|e| ctx(PS_SQLS[2], &e))?;
            let c = c.map(texts).unwrap_or_default();
            if c != vec![Some(format!("v{key}"))] {
                return Err(ctx(
                    PS_SQLS[2],
                    &format!("got {c:?} (statement id {})", prepared[2].id()),
                ));
            }
        }
    }
    for (i, conn, prepared) in clients.iter_mut() {
        let again = conn
            .prep(PS_SQLS[0])
            .map_err(|e| format!("client {i}: prepare again: {e}"))?;
        if again.id() != prepared[0].id() {
            return Err(format!(
                "client {i}: id {} then {}",
                prepared[0].id(),
                again.id()
            ));
        }
        if *i % 10 == 0 {
            let closed = prepared[2].clone();
            conn.close(prepared[2].clone())
                .map_err(|e| format!("client {i}: close: {e}"))?;
            match conn.exec_first::<mysql::Row, _, _>(&closed, (1,)) {
                Err(mysql::Error::MySqlError(e)) if e.code == 1243 => {}
                other => {
                    return Err(format!(
                        "client {i}: EXECUTE of a closed statement: {other:?}"
                    ))
                }
            }
            let fresh = conn
                .prep(PS_SQLS[2])
                .map_err(|e| format!("client {i}: prepare after close: {e}"))?;
            let v: Option<String> = conn
                .exec_first(&fresh, (5,))
                .map_err(|e| format!("client {i}: execute after close: {e}"))?;
            if v.as_deref() != Some("v5") {
                return Err(format!("client {i}: after close got {v:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn prepared_statements_1000_clients_over_8_connections() {
    let _serial = heavy();
    let started = Instant::now();
    let _timer = Timer::start("prepared_statements_1000_clients_over_8_connections");
    let db = setup();
    const THREADS: usize = 50;
    const PER_THREAD: usize = 20;
    const CLIENTS: usize = THREADS * PER_THREAD;
    const CAP: u64 = 8;
    // Each connection holds each SQL text once; a client's PREPARE may make a connection hold
    // one more for a moment (the server statement it replaces is closed right after).
    let bound = CAP * PS_SQLS.len() as u64 + CAP;
    let toml = user_toml("pl_ps", "ps-pw", None);
    let p = Pooled::start(
        db,
        "127.0.0.16",
        &toml,
        &["--max-backend-connections", "8", "--workers", "2"],
    );
    let port = p.port();
    let baseline = db.status("Prepared_stmt_count");
    let prepares_before = db.status("Com_stmt_prepare");
    let conns = ConnWatch::start(db, p.source);
    let stmts = Watch::start(Duration::from_millis(50), move || {
        db.status("Prepared_stmt_count").saturating_sub(baseline)
    });
    let failures = Arc::new(Failures::default());
    let barrier = Arc::new(Barrier::new(THREADS));
    let deadline = Instant::now() + Duration::from_secs(35);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (failures, barrier) = (Arc::clone(&failures), Arc::clone(&barrier));
            thread::spawn(move || {
                let clients = ps_prepare(port, t * PER_THREAD..(t + 1) * PER_THREAD);
                // Every client has prepared before any executes.
                barrier.wait();
                let result = clients.and_then(|mut c| ps_rounds(&mut c, deadline));
                if let Err(e) = result {
                    failures.add(e);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let peaks = conns.stop();
    let (max_stmts, samples) = stmts.stop();
    let prepares = db.status("Com_stmt_prepare") - prepares_before;
    eprintln!(
        "prepared_statements_1000_clients_over_8_connections: {:?}, {} failures, peak {max_stmts} server statements ({samples} samples), {prepares} COM_STMT_PREPARE at the server, peak backend connections {} logged in / {} in all ({})",
        started.elapsed(),
        failures.count(),
        peaks.logged_in,
        peaks.total.total,
        peaks.total.summary
    );
    assert_eq!(
        failures.count(),
        0,
        "{} client threads failed; the first of each kind:\n{}\nproxy log tail:\n{}",
        failures.count(),
        failures.report(),
        p.log_tail()
    );
    assert!(
        max_stmts <= bound,
        "MariaDB held up to {max_stmts} prepared statements for {CLIENTS} clients of {} SQL texts over at most {CAP} connections (bound {bound})",
        PS_SQLS.len()
    );
    peaks.assert_within(CAP);
    p.finish();
}

// ---------------------------------------------------------------------------------------------
// 7. Pins
// ---------------------------------------------------------------------------------------------

/// (start, end, CONNECTION_ID()) of one query of a busy session.
type Observation = (Instant, Instant, u32);

/// Sessions that run `SELECT CONNECTION_ID()` in a loop until stopped, recording each answer.
struct Busy {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Observation>>>,
    failures: Arc<Failures>,
    threads: Vec<JoinHandle<()>>,
}

impl Busy {
    fn start(port: u16, user: &'static str, pass: &'static str, n: usize) -> Busy {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Failures::default());
        let threads = (0..n)
            .map(|k| {
                let (stop, seen, failures) =
                    (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&failures));
                thread::spawn(move || {
                    let mut conn = match Conn::new(opts(port, user, pass, Some("rp"))) {
                        Ok(c) => c,
                        Err(e) => return failures.add(format!("busy {k}: log in: {e}")),
                    };
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        match conn.query_first::<u32, _>("SELECT CONNECTION_ID()") {
                            Ok(Some(id)) => seen.lock().unwrap().push((t0, Instant::now(), id)),
                            other => return failures.add(format!("busy {k}: {other:?}")),
                        }
                        sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Busy {
            stop,
            seen,
            failures,
            threads,
        }
    }

    /// Busy queries that ran entirely within `from..to` must not have run on `pinned`, and
    /// there must have been some.
    fn check_window(&self, from: Instant, to: Instant, pinned: u32, what: &str) {
        let seen = self.seen.lock().unwrap();
        let inside: Vec<&Observation> = seen
            .iter()
            .filter(|(start, end, _)| *start >= from && *end <= to)
            .collect();
        assert!(
            inside.len() >= 3,
            "{what}: the busy sessions ran only {} queries while the pinned session worked (failures: {})",
            inside.len(),
            self.failures.report()
        );
        let stolen = inside.iter().filter(|(_, _, id)| *id == pinned).count();
        assert_eq!(
            stolen,
            0,
            "{what}: {stolen} of {} queries of other sessions ran on connection {pinned}, which the pinned session held",
            inside.len()
        );
    }

    fn stop(self) -> Arc<Failures> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("busy thread");
        }
        self.failures
    }
}

fn conn_id(conn: &mut Conn) -> u32 {
    conn.query_first("SELECT CONNECTION_ID()")
        .expect("SELECT CONNECTION_ID()")
        .expect("a row")
}

#[test]
fn pins_transaction_temp_table_get_lock_autocommit() {
    let _serial = heavy();
    let started = Instant::now();
    let _timer = Timer::start("pins_transaction_temp_table_get_lock_autocommit");
    let db = setup();
    const CAP: u64 = 2;
    let toml = user_toml("pl_pin", "pin-pw", None);
    let p = Pooled::start(
        db,
        "127.0.0.17",
        &toml,
        &["--max-backend-connections", "2", "--workers", "2"],
    );
    let port = p.port();
    let watch = ConnWatch::start(db, p.source);
    let busy = Busy::start(port, "pl_pin", "pin-pw", 3);
    let pause = || sleep(Duration::from_millis(30));
    let login = || connect(port, "pl_pin", "pin-pw", Some("rp"));

    // A transaction keeps its connection until COMMIT.
    let mut a = login();
    a.query_drop("BEGIN").unwrap();
    let from = Instant::now();
    let id = conn_id(&mut a);
    for k in 0..10 {
        pause();
        a.query_drop(format!("INSERT INTO pl_pin_t (tag) VALUES ('txn-{k}')"))
            .unwrap();
        assert_eq!(
            conn_id(&mut a),
            id,
            "CONNECTION_ID() changed inside BEGIN…COMMIT"
        );
    }
    let to = Instant::now();
    a.query_drop("COMMIT").unwrap();
    busy.check_window(from, to, id, "transaction");
    // After COMMIT the session may move; it still works.
    assert_eq!(
        value(
            &mut a,
            "SELECT COUNT(*) FROM pl_pin_t WHERE tag LIKE 'txn-%'"
        ),
        some("10")
    );
    drop(a);

    // A temporary table stays visible to its session, and to it only.
    let mut b = login();
    b.query_drop("CREATE TEMPORARY TABLE pl_tmp (x INT)")
        .unwrap();
    for x in 1..=3 {
        // One row each: a multi-row INSERT's OK carries an info string, login_…'s business.
        b.query_drop(format!("INSERT INTO pl_tmp VALUES ({x})"))
            .unwrap();
    }
    let from = Instant::now();
    let id = conn_id(&mut b);
    for _ in 0..10 {
        pause();
        assert_eq!(
            value(&mut b, "SELECT COUNT(*) FROM pl_tmp"),
            some("3"),
            "the temporary table"
        );
        assert_eq!(
            conn_id(&mut b),
            id,
            "CONNECTION_ID() changed with a temporary table"
        );
    }
    let to = Instant::now();
    busy.check_window(from, to, id, "temporary table");
    drop(b);
    let mut c = login();
    for _ in 0..5 {
        let e = server_error(c.query_drop("SELECT COUNT(*) FROM pl_tmp"));
        assert_eq!(
            e.code, 1146,
            "another session sees the temporary table: {e}"
        );
        pause();
    }
    drop(c);

    // GET_LOCK holds: the session keeps the connection that owns the lock.
    let mut d = login();
    assert_eq!(
        value(&mut d, "SELECT GET_LOCK('pl_pin_lock', 0)"),
        some("1")
    );
    let from = Instant::now();
    let id = conn_id(&mut d);
    {
        let mut e = login();
        assert_eq!(
            value(&mut e, "SELECT GET_LOCK('pl_pin_lock', 0)"),
            some("0"),
            "another session got the lock"
        );
        assert_eq!(
            value(&mut e, "SELECT IS_USED_LOCK('pl_pin_lock')"),
            Some(id.to_string()),
            "the lock's owner"
        );
    }
    for _ in 0..8 {
        pause();
        assert_eq!(
            conn_id(&mut d),
            id,
            "CONNECTION_ID() changed while holding GET_LOCK"
        );
    }
    let to = Instant::now();
    assert_eq!(
        value(&mut d, "SELECT RELEASE_LOCK('pl_pin_lock')"),
        some("1"),
        "RELEASE_LOCK on the session's own connection"
    );
    busy.check_window(from, to, id, "GET_LOCK");
    drop(d);
    let mut f = login();
    assert_eq!(
        value(&mut f, "SELECT GET_LOCK('pl_pin_lock', 0)"),
        some("1"),
        "the lock is free again"
    );
    assert_eq!(
        value(&mut f, "SELECT RELEASE_LOCK('pl_pin_lock')"),
        some("1")
    );
    drop(f);

    // autocommit=0: the session sees its uncommitted rows; nobody else does.
    let mut g = login();
    g.query_drop("SET autocommit = 0").unwrap();
    let from = Instant::now();
    let id = conn_id(&mut g);
    g.query_drop("INSERT INTO pl_pin_t (tag) VALUES ('ac0')")
        .unwrap();
    for _ in 0..6 {
        pause();
        assert_eq!(value(&mut g, "SELECT @@autocommit"), some("0"));
        assert_eq!(
            value(&mut g, "SELECT COUNT(*) FROM pl_pin_t WHERE tag = 'ac0'"),
            some("1"),
            "the session's own uncommitted row"
        );
        assert_eq!(
            conn_id(&mut g),
            id,
            "CONNECTION_ID() changed with autocommit=0"
        );
    }
    let outside = db.root_sql("SELECT COUNT(*) FROM rp.pl_pin_t WHERE tag = 'ac0'");
    assert_eq!(outside.trim(), "0", "an uncommitted row is visible outside");
    let to = Instant::now();
    g.query_drop("COMMIT").unwrap();
    busy.check_window(from, to, id, "autocommit=0");
    let outside = db.root_sql("SELECT COUNT(*) FROM rp.pl_pin_t WHERE tag = 'ac0'");
    assert_eq!(outside.trim(), "1", "the committed row");
    g.query_drop("SET autocommit = 1").unwrap();
    assert_eq!(value(&mut g, "SELECT @@autocommit"), some("1"));
    drop(g);

    let failures = busy.stop();
    let peaks = watch.stop();
    eprintln!(
        "pins_transaction_temp_table_get_lock_autocommit: {:?}, peak backend connections {} logged in / {} in all ({}; {} samples)",
        started.elapsed(),
        peaks.logged_in,
        peaks.total.total,
        peaks.total.summary,
        peaks.samples
    );
    assert_eq!(
        failures.count(),
        0,
        "busy sessions failed:\n{}\nproxy log tail:\n{}",
        failures.report(),
        p.log_tail()
    );
    peaks.assert_within(CAP);
    p.finish();
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input
// ---------------------------------------------------------------------------------------------

/// Reads what the proxy answers after a bad handshake response: an ERR packet, then the close.
fn expect_err_then_close(c: &mut RawConn, what: &str) -> raw::ServerError {
    let (_, p) = c
        .read_packet()
        .unwrap_or_else(|e| panic!("{what}: no answer ({e})"));
    let e = raw::parse_err(&p).unwrap_or_else(|| {
        panic!(
            "{what}: the answer is not an ERR packet: {:02x?}",
            &p[..p.len().min(32)]
        )
    });
    match c.read_packet() {
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut => {}
        other => panic!("{what}: the connection stays open after the ERR: {other:?}"),
    }
    e
}

#[test]
fn bad_input_garbage_handshakes_and_vanishing_clients() {
    let started = Instant::now();
    let _timer = Timer::start("bad_input_garbage_handshakes_and_vanishing_clients");
    let db = setup();
    const CAP: u64 = 2;
    let toml = user_toml("pl_bad", "bad-pw", None);
    let p = Pooled::start(
        db,
        "127.0.0.18",
        &toml,
        &[
            "--max-backend-connections",
            "2",
            "--workers",
            "2",
            "--handshake-timeout-ms",
            "3000",
            "--auth-failure-delay-ms",
            "0",
        ],
    );
    let port = p.port();
    let watch = ConnWatch::start(db, p.source);
    let mut steady = connect(port, "pl_bad", "bad-pw", Some("rp"));
    assert_eq!(value(&mut steady, "SELECT 1"), some("1"));

    // Random bytes as the handshake response.
    let mut c = RawConn::connect(port).unwrap();
    c.read_greeting().expect("greeting");
    c.write_packet(1, &pseudo_random_bytes(64, 7)).unwrap();
    let e = expect_err_then_close(&mut c, "random handshake response");
    eprintln!("random handshake response: {e}");
    // A one-byte handshake response.
    let mut c = RawConn::connect(port).unwrap();
    c.read_greeting().expect("greeting");
    c.write_packet(1, &[0x01]).unwrap();
    let e = expect_err_then_close(&mut c, "one-byte handshake response");
    eprintln!("one-byte handshake response: {e}");
    // An HTTP request instead of a handshake response (its "header" announces 5 MB).
    let mut c = RawConn::connect(port).unwrap();
    c.read_greeting().expect("greeting");
    c.set_read_timeout(Duration::from_secs(8)).unwrap();
    c.write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let e = expect_err_then_close(&mut c, "HTTP request");
    eprintln!("HTTP request: {e}");
    // Connects and leaves at once, or after one byte.
    for k in 0..5 {
        let mut c = RawConn::connect(port).unwrap();
        if k % 2 == 1 {
            let _ = c.write_raw(&[0x42]);
        }
    }
    assert_eq!(
        value(&mut steady, "SELECT 2"),
        some("2"),
        "after the garbage"
    );
    let mut fresh = connect(port, "pl_bad", "bad-pw", Some("rp"));
    assert_eq!(value(&mut fresh, "SELECT 3"), some("3"));
    drop(fresh);

    // A client vanishes in the middle of a long query while others work.
    let others_stop = Arc::new(AtomicBool::new(false));
    let others_failures = Arc::new(Failures::default());
    let others_done = Arc::new(AtomicUsize::new(0));
    let others: Vec<_> = (0..3)
        .map(|k| {
            let (stop, failures, done) = (
                Arc::clone(&others_stop),
                Arc::clone(&others_failures),
                Arc::clone(&others_done),
            );
            thread::spawn(move || {
                let mut conn = match Conn::new(opts(port, "pl_bad", "bad-pw", Some("rp"))) {
                    Ok(c) => c,
                    Err(e) => return failures.add(format!("other {k}: log in: {e}")),
                };
                while !stop.load(Ordering::Relaxed) {
                    match conn.query_first::<u32, _>("SELECT 40 + 2") {
                        Ok(Some(42)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        other => return failures.add(format!("other {k}: {other:?}")),
                    }
                    sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let mut vanishing = RawConn::login(port, "pl_bad", "bad-pw", Some("rp")).expect("raw login");
    vanishing.send_query("SELECT SLEEP(2)").unwrap();
    sleep(Duration::from_millis(300));
    let before_vanish = others_done.load(Ordering::Relaxed);
    drop(vanishing);
    let vanished_at = Instant::now();
    // The others keep working through the rest of the SLEEP and after it.
    sleep(Duration::from_millis(2500));
    let during = others_done.load(Ordering::Relaxed) - before_vanish;
    others_stop.store(true, Ordering::Relaxed);
    for t in others {
        t.join().expect("other thread");
    }
    assert_eq!(
        others_failures.count(),
        0,
        "other sessions failed:\n{}\nproxy log tail:\n{}",
        others_failures.report(),
        p.log_tail()
    );
    assert!(
        during >= 10,
        "the other sessions ran only {during} queries in the 2.5 s after a client vanished"
    );
    // New clients are served; the pool recovered.
    for k in 0..10 {
        let mut c = Conn::new(opts(port, "pl_bad", "bad-pw", Some("rp"))).unwrap_or_else(|e| {
            panic!(
                "client {k} after the vanished one: {e}; log tail:\n{}",
                p.log_tail()
            )
        });
        assert_eq!(value(&mut c, "SELECT 10 * 10"), some("100"));
    }
    assert_eq!(value(&mut steady, "SELECT 4"), some("4"));
    drop(steady);
    let peaks = watch.stop();
    let now = proxy_conns(db, p.source);
    eprintln!(
        "bad_input_garbage_handshakes_and_vanishing_clients: {:?}, peak backend connections {} logged in / {} in all ({}; {} samples), now {} ({}); vanished {:?} ago",
        started.elapsed(),
        peaks.logged_in,
        peaks.total.total,
        peaks.total.summary,
        peaks.samples,
        now.total,
        now.summary,
        vanished_at.elapsed()
    );
    peaks.assert_within(CAP);
    assert!(
        now.total <= CAP,
        "now {} backend connections: {}",
        now.total,
        now.summary
    );
    p.finish();
}

// ---------------------------------------------------------------------------------------------
// 9. The idle timeout and pool_min_idle
// ---------------------------------------------------------------------------------------------

/// Idle connections close after `pool_idle_timeout_ms`, except the `pool_min_idle` of each pool
/// (per worker).
#[test]
fn idle_connections_close_but_min_idle_stay() {
    let _timer = Timer::start("idle_connections_close_but_min_idle_stay");
    let db = setup();
    let toml = user_toml("pl_hash", "hash-pw", None);
    let run = |source: &'static str, min_idle: &str| {
        let args = [
            "--workers",
            "1",
            "--pool-idle-timeout-ms",
            "300",
            "--pool-min-idle",
            min_idle,
        ];
        let p = Pooled::start(db, source, &toml, &args);
        // Three sessions at once: three connections.
        let mut conns: Vec<Conn> = (0..3)
            .map(|_| connect(p.port(), "pl_hash", "hash-pw", Some("rp")))
            .collect();
        let _held: Vec<Conn> = (0..3)
            .map(|_| connect(p.port(), "pl_hash", "hash-pw", Some("rp")))
            .collect();
        for c in conns.iter_mut() {
            c.query_drop("BEGIN").unwrap();
        }
        for c in conns.iter_mut() {
            c.query_drop("COMMIT").unwrap();
        }
        let busy = proxy_conns(db, source).logged_in;
        sleep(Duration::from_millis(2_000));
        let idle = proxy_conns(db, source);
        p.finish();
        (busy, idle)
    };
    let (busy, idle) = run("127.0.0.19", "0");
    assert!(busy >= 3, "3 transactions at once held {busy} connections");
    assert_eq!(idle.logged_in, 0, "min idle 0: {}", idle.summary);
    let (busy, idle) = run("127.0.0.20", "2");
    assert!(busy >= 3, "3 transactions at once held {busy} connections");
    assert_eq!(idle.logged_in, 2, "min idle 2: {}", idle.summary);
}

/// A proxy with one backend connection (one worker, pool_wait_timeout_ms 500) and two sessions
/// of pl_pin on it.
fn one_shared_connection(db: &MariaDb, source: &'static str) -> (Pooled, Conn, Conn) {
    let toml = user_toml("pl_pin", "pin-pw", None);
    let args = [
        "--workers",
        "1",
        "--max-backend-connections",
        "1",
        "--pool-wait-timeout-ms",
        "500",
    ];
    let p = Pooled::start(db, source, &toml, &args);
    let a = connect(p.port(), "pl_pin", "pin-pw", Some("rp"));
    let b = connect(p.port(), "pl_pin", "pin-pw", Some("rp"));
    (p, a, b)
}

/// `b`'s query waits for the one connection, in vain (ERR 9001): another session holds it.
fn other_waits(b: &mut Conn, what: &str) {
    match b.query_first::<u32, _>("SELECT 1") {
        Err(mysql::Error::MySqlError(e)) => assert_eq!(e.code, 9001, "{what}: {e}"),
        other => panic!("{what}: the other session ran ({other:?}) while the first held on"),
    }
}

/// `b`'s query runs: the one connection is free.
fn other_runs(b: &mut Conn, what: &str) {
    assert_eq!(
        b.query_first::<u32, _>("SELECT 1").unwrap(),
        Some(1),
        "{what}"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. User locks pin only while held
// ---------------------------------------------------------------------------------------------

/// GET_LOCK keeps the session on its connection until its locks are released: with one backend
/// connection, another session waits (and gets ERR 9001 after pool_wait_timeout_ms) while the
/// lock is held and runs once RELEASE_LOCK (or RELEASE_ALL_LOCKS for a lock whose name the
/// proxy cannot read) has run.
#[test]
fn user_locks_pin_until_released() {
    let _serial = heavy();
    let _timer = Timer::start("user_locks_pin_until_released");
    let db = setup();
    let (p, mut a, mut b) = one_shared_connection(db, "127.0.0.21");
    other_runs(&mut b, "before any lock");
    assert_eq!(
        value(&mut a, "SELECT GET_LOCK('pl_l1', 0), GET_LOCK('pl_l1', 0)"),
        some("1")
    );
    other_waits(&mut b, "pl_l1 taken twice");
    assert_eq!(value(&mut a, "SELECT RELEASE_LOCK('pl_l1')"), some("1"));
    other_waits(&mut b, "pl_l1 released once of twice");
    a.query_drop("DO RELEASE_LOCK('pl_l1'); SELECT 1").unwrap();
    // A multi-statement's release is not counted: still held as far as the proxy knows.
    other_waits(&mut b, "a release in a multi-statement");
    assert_eq!(
        value(&mut a, "SELECT IS_USED_LOCK('pl_l1') IS NULL"),
        some("1")
    );
    assert_eq!(value(&mut a, "SELECT RELEASE_ALL_LOCKS()"), some("0"));
    other_runs(&mut b, "after RELEASE_ALL_LOCKS");
    assert_eq!(
        value(&mut a, "SELECT GET_LOCK(CONCAT('pl_', 'l2'), 0)"),
        some("1")
    );
    other_waits(&mut b, "a lock of computed name");
    assert_eq!(value(&mut a, "SELECT RELEASE_LOCK('pl_l2')"), some("1"));
    other_waits(&mut b, "a computed name released by a literal");
    assert_eq!(value(&mut a, "SELECT RELEASE_ALL_LOCKS()"), some("0"));
    other_runs(&mut b, "after RELEASE_ALL_LOCKS of a computed name");
    drop((a, b));
    p.finish();
}

/// A temporary table keeps the session on its connection until it is dropped (DROP TABLE or
/// DROP TEMPORARY TABLE), with one backend connection shared by two sessions.
#[test]
fn temporary_tables_pin_until_dropped() {
    let _serial = heavy();
    let _timer = Timer::start("temporary_tables_pin_until_dropped");
    let db = setup();
    let (p, mut a, mut b) = one_shared_connection(db, "127.0.0.22");
    a.query_drop("CREATE TEMPORARY TABLE pl_tmp1 (a INT)")
        .unwrap();
    a.query_drop("CREATE TEMPORARY TABLE rp.pl_tmp2 (a INT)")
        .unwrap();
    other_waits(&mut b, "two temporary tables");
    a.query_drop("DROP TEMPORARY TABLE pl_tmp1").unwrap();
    other_waits(&mut b, "one temporary table left");
    assert_eq!(value(&mut a, "SELECT COUNT(*) FROM pl_tmp2"), some("0"));
    a.query_drop("DROP TABLE pl_tmp2").unwrap();
    other_runs(&mut b, "after both were dropped");
    other_runs(&mut b, "still");
    drop((a, b));
    p.finish();
}

/// With one backend connection, sessions of two users take turns on it: COM_CHANGE_USER logs it
/// in as each in turn (same server thread), each sees its own user and state.
#[test]
fn another_users_idle_connection_changes_user() {
    let _serial = heavy();
    let _timer = Timer::start("another_users_idle_connection_changes_user");
    let db = setup();
    let toml = user_toml("pl_clear", "clear-pw", None) + &user_toml("pl_hash", "hash-pw", None);
    let args = ["--workers", "1", "--max-backend-connections", "1"];
    let p = Pooled::start(db, "127.0.0.23", &toml, &args);
    let mut a = connect(p.port(), "pl_clear", "clear-pw", Some("rp"));
    let mut b = connect(p.port(), "pl_hash", "hash-pw", Some("pl_a"));
    a.query_drop("SET @mine = 'a'").unwrap();
    b.query_drop("SET @mine = 'b'").unwrap();
    let mut threads = BTreeSet::new();
    for round in 0..5 {
        for (c, user, schema, mine) in [
            (&mut a, "pl_clear@%", "rp", "a"),
            (&mut b, "pl_hash@%", "pl_a", "b"),
        ] {
            let row = row_of(
                c,
                "SELECT CURRENT_USER(), DATABASE(), @mine, CONNECTION_ID()",
            )
            .unwrap_or_else(|e| panic!("round {round}, {user}: {e}"));
            assert_eq!(
                row[..3],
                [some(user), some(schema), some(mine)],
                "round {round}"
            );
            threads.insert(row[3].clone());
        }
    }
    assert_eq!(
        threads.len(),
        1,
        "one server connection throughout: {threads:?}"
    );
    let now = proxy_conns(db, p.source);
    assert!(now.total <= 1, "{}", now.summary);
    drop((a, b));
    p.finish();
}

/// Fewer pooled connections allowed than workers (4 workers, at most 2 connections): every
/// worker's sessions still get served (connections go to the workers whose sessions starve)
/// instead of the workers without one waiting until pool_wait_timeout_ms.
#[test]
fn fewer_connections_than_workers_rotate_without_starving() {
    let _serial = heavy();
    let _timer = Timer::start("fewer_connections_than_workers_rotate_without_starving");
    let db = setup();
    let toml = user_toml("pl_pin", "pin-pw", None);
    let source = "127.0.0.24";
    let p = Pooled::start(
        db,
        source,
        &toml,
        &["--workers", "4", "--max-backend-connections", "2"],
    );
    let port = p.port();
    let most = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (most, stop) = (Arc::clone(&most), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(proxy_conns(db, source).total, Ordering::Relaxed);
                sleep(Duration::from_millis(20));
            }
        })
    };
    // 24 clients back to back: SO_REUSEPORT spreads them over the 4 workers, and a worker
    // holding a connection always has sessions of its own waiting for it.
    let clients: Vec<JoinHandle<Result<(), String>>> = (0..24)
        .map(|k| {
            thread::spawn(move || {
                let mut c = Conn::new(opts(port, "pl_pin", "pin-pw", Some("rp")))
                    .map_err(|e| format!("client {k}: log in: {e}"))?;
                for i in 0..50u32 {
                    let got: Option<u32> = c
                        .query_first(format!("SELECT {i} + {k}"))
                        .map_err(|e| format!("client {k} query {i}: {e}"))?;
                    if got != Some(i + k) {
                        return Err(format!("client {k} query {i}: {got:?}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .collect();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    p.finish();
    assert!(
        errors.is_empty(),
        "{} clients failed: {errors:?}",
        errors.len()
    );
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 2,
        "the backend saw {most} connections from the proxy (limit 2)"
    );
}

// ---------------------------------------------------------------------------------------------
// Pipelined multiplexing
// ---------------------------------------------------------------------------------------------

/// One client of the pipelining test: plain SELECTs (text and prepared) that name the client,
/// so an answer meant for another session shows; every 8th round a transaction that inserts a
/// row only it may see until it rolls back; and a user variable of its own.
fn pipe_client(port: u16, i: usize, stop: &AtomicBool) -> Result<usize, String> {
    let mut conn = Conn::new(opts(port, "pl_pipe", "pipe-pw", Some("rp")))
        .map_err(|e| format!("client {i}: log in: {e}"))?;
    let stmt = conn
        .prep("SELECT v, ? FROM pl_ps WHERE id = ?")
        .map_err(|e| format!("client {i}: prepare: {e}"))?;
    conn.query_drop(format!("SET @mine = {i}"))
        .map_err(|e| format!("client {i}: SET: {e}"))?;
    let mut queries = 0;
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let k = (i * 7 + round) % 100 + 1;
        let want = vec![some(&format!("v{k}")), some(&i.to_string())];
        let got = row_of(
            &mut conn,
            &format!("SELECT v, {i} FROM pl_ps WHERE id = {k}"),
        )
        .map_err(|e| format!("client {i} round {round}: text SELECT: {e}"))?;
        if got != want {
            return Err(format!(
                "client {i} round {round}: text SELECT got {got:?}, want {want:?}"
            ));
        }
        let row: Option<mysql::Row> = conn
            .exec_first(&stmt, (i as i64, k as i64))
            .map_err(|e| format!("client {i} round {round}: EXECUTE: {e}"))?;
        let got = row.map(texts).unwrap_or_default();
        if got != want {
            return Err(format!(
                "client {i} round {round}: EXECUTE got {got:?}, want {want:?}"
            ));
        }
        let others = value(
            &mut conn,
            "SELECT COUNT(*) FROM pl_pin_t WHERE tag LIKE 'pipe-%'",
        );
        if others != some("0") {
            return Err(format!(
                "client {i} round {round}: saw {others:?} uncommitted rows of other sessions' transactions"
            ));
        }
        queries += 3;
        if round % 8 == 0 {
            let tag = format!("pipe-{i}");
            conn.query_drop("BEGIN")
                .and_then(|_| {
                    conn.query_drop(format!("INSERT INTO pl_pin_t (tag) VALUES ('{tag}')"))
                })
                .map_err(|e| format!("client {i} round {round}: transaction: {e}"))?;
            let own = value(
                &mut conn,
                &format!("SELECT COUNT(*) FROM pl_pin_t WHERE tag = '{tag}'"),
            );
            conn.query_drop("ROLLBACK")
                .map_err(|e| format!("client {i} round {round}: ROLLBACK: {e}"))?;
            if own != some("1") {
                return Err(format!(
                    "client {i} round {round}: own uncommitted row: {own:?}"
                ));
            }
            let mine = value(&mut conn, "SELECT @mine");
            if mine != some(&i.to_string()) {
                return Err(format!("client {i} round {round}: @mine = {mine:?}"));
            }
            queries += 5;
        }
    }
    Ok(queries)
}

/// A pooled proxy for user pl_pipe with 2 backend connections (one per worker: fewer would
/// rotate between the workers), pipelines 8 deep, and a stats file (in the returned directory).
fn pipelining_proxy(
    db: &MariaDb,
    source: &'static str,
) -> (Pooled, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let stats = dir.path().join("stats.json");
    let toml = user_toml("pl_pipe", "pipe-pw", None);
    let args = [
        "--max-backend-connections",
        "2",
        "--pipeline-depth",
        "8",
        "--stats-file",
        stats.to_str().expect("utf-8 path"),
    ];
    (Pooled::start(db, source, &toml, &args), dir, stats)
}

/// The counter `name` of a `--stats-file` JSON.
fn stat(path: &std::path::Path, name: &str) -> u64 {
    let text = fs::read_to_string(path).unwrap_or_default();
    let at = text
        .find(&format!("\"{name}\":"))
        .unwrap_or_else(|| panic!("{name} not in the stats file: {text}"));
    let digits: String = text[at + name.len() + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().expect("a number")
}

#[test]
fn pipelined_selects_answer_each_client_its_own_rows() {
    let _serial = heavy();
    let _timer = Timer::start("pipelined_selects_answer_each_client_its_own_rows");
    let db = setup();
    const CLIENTS: usize = 48;
    let (p, _stats_dir, stats) = pipelining_proxy(db, "127.0.0.25");
    let port = p.port();
    // 6 s at least, until 5,000 queries were pipelined (the stats file is written about once a
    // second; a debug build pipelines a few hundred a second), 40 s at most.
    const PIPELINED: u64 = 5_000;
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || pipe_client(port, i, &stop))
        })
        .collect();
    let start = Instant::now();
    let enough = || fs::metadata(&stats).is_ok() && stat(&stats, "pool_pipelined") >= PIPELINED;
    while start.elapsed() < Duration::from_secs(40)
        && (start.elapsed() < Duration::from_secs(6) || !enough())
    {
        sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    let mut queries = 0;
    for t in threads {
        match t.join().expect("client thread") {
            Ok(n) => queries += n,
            Err(e) => failures.push(e),
        }
    }
    let log = p.log_tail();
    p.finish();
    let pipelined = stat(&stats, "pool_pipelined");
    eprintln!("pipelined: {queries} queries by {CLIENTS} clients over 2 connections, {pipelined} pipelined");
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients failed; first: {}\nproxy log tail:\n{log}",
        failures.len(),
        failures[0]
    );
    assert!(
        pipelined >= PIPELINED,
        "only {pipelined} of {queries} queries were pipelined in 40 s"
    );
}

/// One client of the kill test: text SELECTs naming it, until `stop`; returns (queries,
/// errors) or the first wrong answer. An error (its pipeline's connection was killed) is
/// counted and the session goes on.
fn pipe_client_under_kills(port: u16, i: usize, stop: &AtomicBool) -> Result<(u64, u64), String> {
    let mut conn = Conn::new(opts(port, "pl_pipe", "pipe-pw", Some("rp")))
        .map_err(|e| format!("client {i}: log in: {e}"))?;
    let (mut queries, mut errors) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let k = (i * 13 + queries as usize) % 100 + 1;
        let want = vec![some(&format!("v{k}")), some(&i.to_string())];
        match row_of(
            &mut conn,
            &format!("SELECT v, {i} FROM pl_ps WHERE id = {k}"),
        ) {
            Ok(got) if got == want => queries += 1,
            Ok(got) => return Err(format!("client {i}: got {got:?}, want {want:?}")),
            Err(e) => {
                // Only the query whose connection died may fail: 2013 from the proxy (its
                // response was being read), or the server's own answer to a killed query.
                let lost = e.contains("ERROR 2013") || e.contains("ERROR 1927");
                if !lost {
                    return Err(format!("client {i}: an error other than a lost query: {e}"));
                }
                errors += 1
            }
        }
    }
    Ok((queries, errors))
}

#[test]
fn a_pipelined_connection_killed_mid_stream_costs_at_most_one_query_per_kill() {
    let _serial = heavy();
    let _timer =
        Timer::start("a_pipelined_connection_killed_mid_stream_costs_at_most_one_query_per_kill");
    let db = setup();
    const CLIENTS: usize = 16;
    let source = "127.0.0.26";
    let (p, _stats_dir, stats) = pipelining_proxy(db, source);
    let port = p.port();
    // The query's shape is learned on a connection of its own first.
    let mut first = connect(port, "pl_pipe", "pipe-pw", Some("rp"));
    assert_eq!(
        row_of(&mut first, "SELECT v, 0 FROM pl_ps WHERE id = 1"),
        Ok(vec![some("v1"), some("0")])
    );
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || pipe_client_under_kills(port, i, &stop))
        })
        .collect();
    // Every 250 ms, the proxy's backend connections are killed on the server: for 3 s at least,
    // until 8 kills landed and a pipelined query was sent again (the stats file is written
    // about once a second), or for 30 s at most.
    let (start, mut kills) = (Instant::now(), 0u64);
    let enough = |kills: u64| {
        kills >= 8 && fs::metadata(&stats).is_ok() && stat(&stats, "pool_pipeline_retries") > 0
    };
    while start.elapsed() < Duration::from_secs(30)
        && (start.elapsed() < Duration::from_secs(3) || !enough(kills))
    {
        sleep(Duration::from_millis(250));
        let ids = db.root_sql(&format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'pl_pipe' \
             AND HOST LIKE '{source}:%'"
        ));
        for id in ids.split_whitespace() {
            let out = db.root_sql_output(&format!("KILL {id}"));
            kills += u64::from(out.status.success());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut queries, mut errors, mut failures) = (0, 0, Vec::new());
    for t in threads {
        match t.join().expect("client thread") {
            Ok((q, e)) => (queries, errors) = (queries + q, errors + e),
            Err(e) => failures.push(e),
        }
    }
    assert_eq!(
        row_of(&mut first, "SELECT v, 0 FROM pl_ps WHERE id = 2"),
        Ok(vec![some("v2"), some("0")]),
        "an idle session after the kills"
    );
    drop(first);
    let log = p.log_tail();
    p.finish();
    let (pipelined, retries) = (
        stat(&stats, "pool_pipelined"),
        stat(&stats, "pool_pipeline_retries"),
    );
    eprintln!(
        "kills: {kills}, {queries} answers, {errors} errors, {pipelined} pipelined, {retries} sent again"
    );
    assert!(failures.is_empty(), "wrong answers: {failures:?}\n{log}");
    assert!(kills >= 8, "only {kills} kills landed in 30 s");
    assert!(queries > 1000, "only {queries} answers\n{log}");
    assert!(
        errors <= kills,
        "{errors} errors for {kills} killed connections: pipelined queries behind the one \
         running were not sent again\n{log}"
    );
    assert!(retries > 0, "no pipelined query was sent again\n{log}");
}
