//! Lua scripts with MySQL Proxy's hook API, end to end: a real `ringproxy` with
//! `--proxy-lua-script`, the private MariaDB behind it, and real clients (the mariadb CLI, the
//! Rust `mysql` crate, PyMySQL and mysql-connector-python). Scripts report what they saw with
//! `print()`, which reaches the proxy's log at once; the tests read the log.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use mysql::prelude::Queryable;

/// A script written to a temporary directory (kept as long as the value lives).
struct Script {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Script {
    fn new(text: &str) -> Script {
        let dir = tempfile::Builder::new()
            .prefix("ringproxy-lua-")
            .tempdir()
            .expect("temp dir for a script");
        let path = dir.path().join("script.lua");
        std::fs::write(&path, text).expect("write script");
        Script { dir, path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// Replaces the script's text (the proxy reloads it within about a second).
    fn rewrite(&self, text: &str) {
        let tmp = self.dir.path().join("next.lua");
        std::fs::write(&tmp, text).expect("write script");
        std::fs::rename(&tmp, &self.path).expect("replace script");
    }
}

/// A shipped script of scripts/lua/.
fn shipped(name: &str) -> String {
    let path = workspace_root().join("scripts/lua").join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path.to_string_lossy().into_owned()
}

fn start(db: &MariaDb, script: &str, extra: &[&str]) -> Proxy {
    let mut args = vec!["--proxy-lua-script", script];
    args.extend_from_slice(extra);
    Proxy::start(db.port, &args)
}

/// Waits until the proxy's log has a line containing `needle` (scripts print asynchronously to
/// the client's view: the line may land just after the answer).
fn wait_for_log(proxy: &Proxy, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = proxy.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the proxy's log:\n{}",
            tail(&log, 60)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn cli_ok(port: u16, sql: &str) -> String {
    let out = mariadb_cli(port, NATIVE_USER, NATIVE_PASS, &["-e", sql]);
    assert!(
        out.status.success(),
        "mariadb -e {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_mock_server_script_answers_everything_with_no_backend() {
    // Nothing listens on port 1: the script is the whole server.
    let proxy = Proxy::start(1, &["--proxy-lua-script", &shipped("mock-server.lua")]);
    let out = mariadb_cli(proxy.port, "anyone", "anything", &["-e", "SELECT 42"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "query\tlength\nSELECT 42\t9\nnull below\tNULL\n");

    let opts = mysql::OptsBuilder::new()
        .ip_or_hostname(Some("127.0.0.1"))
        .tcp_port(proxy.port)
        .user(Some("x"))
        .pass(Some("y"))
        .prefer_socket(false);
    let mut conn = mysql::Conn::new(opts).expect("log in to the Lua server");
    let rows: Vec<(String, Option<u32>)> = conn.query("SELECT 'typed'").unwrap();
    assert_eq!(
        rows,
        vec![
            ("SELECT 'typed'".into(), Some(14)),
            ("null below".into(), None)
        ]
    );
    let err = server_error(conn.query_drop("FAIL please"));
    assert_eq!((err.code, err.state.as_str()), (1064, "42000"));
    assert_eq!(err.message, "you asked for it");
    conn.query_drop("SET @x = 1")
        .expect("an OK the script made");
    drop(conn);
    proxy.finish();
}

const INJECT: &str = r#"
function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local q = packet:sub(2)
  if q:find("^SELECT 'inject'") then
    proxy.queries:append(2, string.char(proxy.COM_QUERY) .. "SELECT CONNECTION_ID(), 'hidden'",
                         { resultset_is_needed = true })
    proxy.queries:append(1, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
  end
  if q == "SELECT 'rewrite me'" then
    proxy.queries:append(1, string.char(proxy.COM_QUERY) .. "SELECT 'rewritten', 2 + 2")
    return proxy.PROXY_SEND_QUERY
  end
  if q == "SELECT 'replace result'" then
    proxy.queries:append(3, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
  end
end

function read_query_result(inj)
  local rs = inj.resultset
  if inj.id == 2 then
    for row in rs.rows do print("hidden-row", row[1], row[2]) end
    print("hidden-meta", #rs.fields, rs.fields[2].name, rs.row_count, rs.query_status,
          rs.flags.auto_commit, inj.query_time >= 0, inj.response_time >= inj.query_time)
    return proxy.PROXY_IGNORE_RESULT
  end
  if inj.id == 3 then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK,
      resultset = { fields = { { name = "seen_rows" } }, rows = { { rs.row_count } } } }
    return proxy.PROXY_SEND_RESULT
  end
  print("forwarded", inj.id, inj.query:sub(2), rs.row_count)
end
"#;

#[test]
fn injected_queries_are_hidden_rewritten_or_replaced() {
    let db = MariaDb::shared();
    let script = Script::new(INJECT);
    let proxy = start(db, script.arg(), &[]);
    let mut conn = db.conn(proxy.port);
    let id: u64 = conn.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();
    // One result reaches the client: the injected one is hidden.
    let rows: Vec<(String, i64)> = conn.query("SELECT 'inject', 7").unwrap();
    assert_eq!(rows, vec![("inject".into(), 7)]);
    let log = wait_for_log(&proxy, "hidden-meta");
    assert!(
        log.contains(&format!("hidden-row\t{id}\thidden")),
        "{}",
        tail(&log, 20)
    );
    assert!(
        log.contains("hidden-meta\t2\thidden\t1\t0\ttrue\ttrue\ttrue"),
        "{}",
        tail(&log, 20)
    );
    wait_for_log(&proxy, "forwarded\t1\tSELECT 'inject', 7\t1");
    // The same connection goes on normally.
    let rows: Vec<(String, i64)> = conn.query("SELECT 'rewrite me'").unwrap();
    assert_eq!(rows, vec![("rewritten".into(), 4)]);
    let rows: Vec<u64> = conn.query("SELECT 'replace result'").unwrap();
    assert_eq!(rows, vec![1]);
    // A statement the script does not touch, and a prepared statement (binary protocol).
    let n: u64 = conn
        .query_first("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'rp'")
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    let v: Option<i64> = conn.exec_first("SELECT ? + 1", (41,)).unwrap();
    assert_eq!(v, Some(42));
    drop(conn);
    proxy.finish();
}

const HOOKS: &str = r#"
function connect_server()
  if not proxy.global.config.hooks_test then
    proxy.global.config.hooks_test = { connects = 0 }
  end
  proxy.global.config.hooks_test.connects = proxy.global.config.hooks_test.connects + 1
  print("connect_server", proxy.connection.client.src.address, #proxy.global.backends,
        proxy.global.backends[1].dst.name, proxy.global.config.hooks_test.connects > 0)
end
function read_handshake()
  local s = proxy.connection.server
  print("read_handshake", s.thread_id, s.mysqld_version, #s.scramble_buffer, s.dst.name)
end
function read_auth()
  local c = proxy.connection.client
  print("read_auth", c.username, c.default_db, #c.scrambled_password)
end
function read_auth_result(auth)
  print("read_auth_result", auth.packet:byte())
end
function read_query(packet)
  if packet:byte() == proxy.COM_QUERY then
    print("read_query", packet:sub(2), proxy.connection.server.thread_id, proxy.connection.backend_ndx)
  end
end
function disconnect_client()
  print("disconnect_client", proxy.connection.client.username)
end
"#;

#[test]
fn every_hook_runs_in_its_phase_and_sees_the_connection() {
    let db = MariaDb::shared();
    let script = Script::new(HOOKS);
    let proxy = start(db, script.arg(), &[]);
    let mut conn = db.conn(proxy.port);
    let id: u64 = conn.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();
    // print() is flushed at once: the line is there while the client is still connected.
    let log = wait_for_log(&proxy, "read_query\tSELECT CONNECTION_ID()");
    let backend = format!("127.0.0.1:{}", db.port);
    assert!(
        log.contains(&format!("connect_server\t127.0.0.1\t1\t{backend}\ttrue")),
        "{}",
        tail(&log, 20)
    );
    let version = db.version.split('-').next().unwrap();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    let number = parts[0] * 10_000 + parts[1] * 100 + parts[2];
    assert!(
        log.contains(&format!("read_handshake\t{id}\t{number}\t20\t{backend}")),
        "{}",
        tail(&log, 20)
    );
    assert!(
        log.contains(&format!("read_auth\t{NATIVE_USER}\t{DB}\t20")),
        "{}",
        tail(&log, 20)
    );
    assert!(log.contains("read_auth_result\t0"), "{}", tail(&log, 20));
    assert!(
        log.contains(&format!("read_query\tSELECT CONNECTION_ID()\t{id}\t1")),
        "{}",
        tail(&log, 20)
    );
    // (the harness's probe connection ended already: its username is nil)
    let gone = format!("disconnect_client\t{NATIVE_USER}");
    assert!(!log.contains(&gone), "{}", tail(&log, 20));
    drop(conn);
    wait_for_log(&proxy, &format!("disconnect_client\t{NATIVE_USER}"));
    proxy.finish();
}

const GATE: &str = r#"
function read_auth()
  if proxy.connection.client.username == "rp_other" then
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "rp_other may not log in here",
                       errcode = 1045, sqlstate = "28000" }
    return proxy.PROXY_SEND_RESULT
  end
end
function read_handshake()
  if proxy.connection.client.src.address == "127.0.0.9" then
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "not from there", errcode = 1130 }
    return proxy.PROXY_SEND_RESULT
  end
end
"#;

#[test]
fn a_script_can_refuse_a_login() {
    let db = MariaDb::shared();
    let script = Script::new(GATE);
    let proxy = start(db, script.arg(), &[]);
    let err = mysql::Conn::new(db.opts(proxy.port, OTHER_USER, OTHER_PASS)).unwrap_err();
    match err {
        mysql::Error::MySqlError(e) => {
            assert_eq!((e.code, e.state.as_str()), (1045, "28000"));
            assert_eq!(e.message, "rp_other may not log in here");
        }
        other => panic!("expected the script's ERR, got {other}"),
    }
    // Others log in, and a wrong password still gets the server's own answer.
    let mut conn = db.conn(proxy.port);
    assert_eq!(conn.query_first::<u8, _>("SELECT 1").unwrap(), Some(1));
    let err = mysql::Conn::new(db.opts(proxy.port, NATIVE_USER, "wrong")).unwrap_err();
    assert!(err.to_string().contains("1045"), "{err}");
    drop(conn);
    proxy.finish();
}

const FAULTY: &str = r#"
function read_query(packet)
  local q = packet:sub(2)
  if q == "SELECT 'boom'" then
    error("the script broke on purpose")
  elseif q == "SELECT 'spin'" then
    local n = 0
    while true do n = n + 1 end
  elseif q == "SELECT 'hog'" then
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 1000) .. i end
  elseif q == "SELECT 'bad response'" then
    proxy.response = { type = 77 }
    return proxy.PROXY_SEND_RESULT
  end
end
"#;

#[test]
fn script_errors_runaways_and_hogs_leave_the_proxy_serving() {
    let db = MariaDb::shared();
    let script = Script::new(FAULTY);
    let proxy = start(
        db,
        script.arg(),
        &[
            "--lua-max-instructions",
            "5000000",
            "--lua-memory-limit",
            "32MiB",
        ],
    );
    let mut bystander = db.conn(proxy.port);
    let mut conn = db.conn(proxy.port);
    // Each failed hook counts as no decision: the query goes to the server unchanged.
    for q in ["boom", "spin", "hog", "bad response"] {
        let sql = format!("SELECT '{q}'");
        let got: Option<String> = conn.query_first(&sql).unwrap();
        assert_eq!(got.as_deref(), Some(q), "{sql}");
        assert_eq!(bystander.query_first::<u8, _>("SELECT 1").unwrap(), Some(1));
    }
    let log = proxy.log();
    let file_line = format!("{}:5: the script broke on purpose", script.path.display());
    assert!(log.contains(&file_line), "{}", tail(&log, 20));
    assert!(
        log.contains("lua_max_instructions = 5000000"),
        "{}",
        tail(&log, 20)
    );
    assert!(log.contains("not enough memory"), "{}", tail(&log, 20));
    assert!(log.contains("proxy.response.type 77"), "{}", tail(&log, 20));
    drop((conn, bystander));
    proxy.finish();
}

fn version_script(tag: &str) -> String {
    format!(
        r#"
function read_query(packet)
  if packet:sub(2) == "SELECT 'version'" then
    proxy.response = {{ type = proxy.MYSQLD_PACKET_OK,
      resultset = {{ fields = {{ {{ name = "v" }} }}, rows = {{ {{ "{tag}" }} }} }} }}
    return proxy.PROXY_SEND_RESULT
  end
end
"#
    )
}

/// Clients query without pause, reconnecting every few queries, while the script changes twice
/// (a file change, then SIGHUP): no query fails, and new connections see each new version.
fn reload_under_load(extra: &[&str]) {
    let db = MariaDb::shared();
    let script = Script::new(&version_script("v1"));
    let proxy = start(db, script.arg(), extra);
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, queries) = (Arc::clone(&stop), Arc::clone(&queries));
            let opts = db.opts(proxy.port, NATIVE_USER, NATIVE_PASS);
            thread::spawn(move || -> Result<(), String> {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = mysql::Conn::new(opts.clone()).map_err(|e| e.to_string())?;
                    for _ in 0..5 {
                        let v: Option<String> = c
                            .query_first("SELECT 'version'")
                            .map_err(|e| e.to_string())?;
                        if !matches!(v.as_deref(), Some("v1" | "v2" | "v3")) {
                            return Err(format!("unexpected answer {v:?}"));
                        }
                        let one: Option<u8> =
                            c.query_first("SELECT 1").map_err(|e| e.to_string())?;
                        if one != Some(1) {
                            return Err("SELECT 1 went wrong".into());
                        }
                        queries.fetch_add(2, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    let sees = |tag: &str| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut c = db.conn(proxy.port);
            let v: Option<String> = c.query_first("SELECT 'version'").unwrap();
            if v.as_deref() == Some(tag) {
                return;
            }
            assert!(Instant::now() < deadline, "still {v:?}, not {tag}");
            thread::sleep(Duration::from_millis(100));
        }
    };
    thread::sleep(Duration::from_millis(300));
    script.rewrite(&version_script("v2"));
    sees("v2");
    // SIGHUP: reloaded even when the modification time says nothing new.
    let mtime = std::fs::metadata(&script.path).unwrap().modified().unwrap();
    script.rewrite(&version_script("v3"));
    let f = std::fs::File::options()
        .write(true)
        .open(&script.path)
        .unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    thread::sleep(Duration::from_millis(1500));
    signal(proxy.pid as i32, libc::SIGHUP);
    sees("v3");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join()
            .expect("client thread")
            .expect("a query failed during the reloads");
    }
    assert!(
        queries.load(Ordering::Relaxed) > 100,
        "the load was too light"
    );
    let log = proxy.log();
    assert!(log.contains("SIGHUP: reloading"), "{}", tail(&log, 20));
    proxy.finish();
}

#[test]
fn reload_under_load_inline() {
    reload_under_load(&[]);
}

#[test]
fn reload_under_load_executor_thread() {
    reload_under_load(&["--lua-executor-thread"]);
}

#[test]
fn the_executor_thread_runs_hooks_and_injections() {
    let db = MariaDb::shared();
    let script = Script::new(INJECT);
    let proxy = start(
        db,
        script.arg(),
        &["--lua-executor-thread", "--lua-queue-depth", "2"],
    );
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let opts = db.opts(proxy.port, NATIVE_USER, NATIVE_PASS);
            thread::spawn(move || {
                let mut c = mysql::Conn::new(opts).unwrap();
                for j in 0..50 {
                    let rows: Vec<(String, i64)> = c
                        .query(format!("SELECT 'inject', {}", i * 1000 + j))
                        .unwrap();
                    assert_eq!(rows, vec![("inject".into(), i * 1000 + j)]);
                    let rows: Vec<(String, i64)> = c.query("SELECT 'rewrite me'").unwrap();
                    assert_eq!(rows, vec![("rewritten".into(), 4)]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let log = proxy.log();
    assert_eq!(
        log.matches("hidden-meta").count(),
        400,
        "{}",
        tail(&log, 10)
    );
    // The hooks ran on the workers' executor threads.
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", proxy.pid))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(names.iter().any(|n| n == "rp-worker-0-lua"), "{names:?}");
    proxy.finish();
}

#[test]
fn proxy_global_is_shared_by_every_worker() {
    let db = MariaDb::shared();
    let proxy = start(db, &shipped("latency-histogram.lua"), &["--workers", "2"]);
    let clients = 12;
    let per_client = 20;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let opts = db.opts(proxy.port, NATIVE_USER, NATIVE_PASS);
            thread::spawn(move || {
                let mut c = mysql::Conn::new(opts).unwrap();
                for _ in 0..per_client {
                    assert_eq!(c.query_first::<u8, _>("SELECT 1").unwrap(), Some(1));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let mut conn = db.conn(proxy.port);
    let rows: Vec<(u64, u64)> = conn.query("SELECT * FROM ringproxy.latency").unwrap();
    let total: u64 = rows.iter().map(|r| r.1).sum();
    // Every statement counted once, whichever worker ran it: each connection's, plus the
    // `SELECT @@max_allowed_packet` the mysql crate sends after its login (this one's too).
    assert_eq!(total, (clients * (per_client + 1) + 1) as u64, "{rows:?}");
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "{rows:?}");
    conn.query_drop("TRUNCATE ringproxy.latency").unwrap();
    let rows: Vec<(u64, u64)> = conn.query("SELECT * FROM ringproxy.latency").unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    drop(conn);
    proxy.finish();
}

#[test]
fn shipped_examples_firewall_audit_rewrite_admin() {
    let db = MariaDb::shared();
    // Firewall.
    let proxy = start(db, &shipped("firewall.lua"), &[]);
    let mut conn = db.conn(proxy.port);
    for sql in [
        "DROP DATABASE rp",
        "truncate   rp_lua_t",
        "DELETE FROM rp_lua_t",
        "update rp_lua_t set a = 1",
    ] {
        let err = server_error(conn.query_drop(sql));
        assert_eq!(err.code, 1142, "{sql}");
        assert!(
            err.message.starts_with("ringproxy firewall: "),
            "{sql}: {}",
            err.message
        );
    }
    conn.query_drop("CREATE TABLE IF NOT EXISTS rp_lua_t (a INT)")
        .unwrap();
    conn.query_drop("DELETE FROM rp_lua_t WHERE a = 1").unwrap();
    drop(conn);
    proxy.finish();

    // Audit log.
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("audit.log");
    let audit_script = shipped("audit-log.lua");
    let proxy = Proxy::start_with_env(
        db.port,
        &["--proxy-lua-script", &audit_script],
        &[("RINGPROXY_AUDIT_LOG", log_path.to_str().unwrap())],
    );
    let mut conn = db.conn(proxy.port);
    conn.query_drop("SELECT 1").unwrap();
    let _ = conn.query_drop("SELECT * FROM no_such_table");
    conn.query_drop("INSERT INTO rp_lua_t VALUES (5), (6)")
        .unwrap();
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    let audit = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.lines().count() >= 4 || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(20));
    };
    // (the mysql crate's own `SELECT @@max_allowed_packet` after its login is logged too)
    let lines: Vec<&str> = audit
        .lines()
        .filter(|l| !l.ends_with("@@max_allowed_packet"))
        .collect();
    assert_eq!(lines.len(), 3, "{audit}");
    assert!(
        lines[0].contains(&format!("\t{NATIVE_USER}\t{DB}\tOK 1 rows\t")),
        "{audit}"
    );
    assert!(lines[0].ends_with("\tSELECT 1"), "{audit}");
    assert!(lines[1].contains("\tERR 1146\t"), "{audit}");
    assert!(lines[2].contains("\tOK 2 affected\t"), "{audit}");
    proxy.finish();

    // Rewrite and admin.
    let proxy = start(db, &shipped("rewrite.lua"), &[]);
    let mut conn = db.conn(proxy.port);
    conn.query_drop("CREATE TABLE IF NOT EXISTS orders (id INT)")
        .unwrap();
    conn.query_drop("DELETE FROM orders").unwrap();
    conn.query_drop("INSERT INTO orders VALUES (1), (2), (3)")
        .unwrap();
    let n: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM legacy_orders")
        .unwrap();
    assert_eq!(n, Some(3));
    drop(conn);
    proxy.finish();
    let proxy = start(db, &shipped("admin.lua"), &[]);
    let out = cli_ok(proxy.port, "SHOW PROXY BACKENDS");
    assert_eq!(
        out,
        format!(
            "ndx\taddress\tstate\ttype\tconnected_clients\n1\t127.0.0.1:{}\tup\trw\t1\n",
            db.port
        )
    );
    let out = cli_ok(proxy.port, "show proxy connection");
    assert!(
        out.contains(&format!("client.username\t{NATIVE_USER}\n")),
        "{out}"
    );
    assert!(out.contains("backend_ndx\t1\n"), "{out}");
    proxy.finish();
}

#[test]
fn python_clients_see_generated_and_injected_results() {
    let python = python_env();
    let db = MariaDb::shared();
    let script = Script::new(INJECT);
    let proxy = start(db, script.arg(), &[]);
    const PY: &str = r#"
import sys, pymysql, mysql.connector
port, user, password, db = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
conn = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password, database=db)
with conn.cursor() as cur:
    cur.execute("SELECT 'inject', 5")
    print("pymysql", cur.fetchall())
    cur.execute("SELECT 'rewrite me'")
    print("pymysql", cur.fetchall())
conn.close()
conn = mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=password,
                               database=db, use_pure=True, ssl_disabled=True)
cur = conn.cursor()
cur.execute("SELECT 'inject', 6")
print("connector", cur.fetchall())
cur.execute("SELECT 'rewrite me'")
print("connector", cur.fetchall())
conn.close()
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(PY)
        .arg(proxy.port.to_string())
        .args([NATIVE_USER, NATIVE_PASS, DB])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout,
        "pymysql (('inject', 5),)\npymysql (('rewritten', 4),)\n\
         connector [('inject', 6)]\nconnector [('rewritten', 4)]\n"
    );
    proxy.finish();
}

#[test]
fn bad_input_on_a_scripted_listener_ends_only_that_client() {
    let db = MariaDb::shared();
    let script = Script::new(HOOKS);
    let proxy = start(db, script.arg(), &["--max-packet-size", "1MiB"]);
    let mut bystander = db.conn(proxy.port);
    // Garbage instead of a handshake response.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut greeting).unwrap();
    s.write_all(&[5, 0, 0, 1, 1, 2, 3, 4, 5]).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    assert!(
        rest.windows(b"bad handshake response".len())
            .any(|w| w == b"bad handshake response"),
        "{rest:?}"
    );
    // An oversized command: ERR, then the connection ends; the bystander is unharmed.
    let mut conn = db.conn(proxy.port);
    let big = format!("SELECT '{}'", "x".repeat(2 << 20));
    assert!(conn.query_drop(&big).is_err());
    // A client that vanishes in the middle of a large result.
    let mut vanishing = Command::new(require_binary("mariadb"))
        .args(["--no-defaults", "-h127.0.0.1", "--protocol=TCP", &format!("-P{}", proxy.port)])
        .args([&format!("-u{NATIVE_USER}"), &format!("-p{NATIVE_PASS}"), DB, "-e"])
        .arg("SELECT REPEAT('y', 1000) FROM information_schema.COLUMNS a, information_schema.COLUMNS b LIMIT 200000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 4096];
    let mut out = vanishing.stdout.take().unwrap();
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    vanishing.kill().unwrap();
    let _ = vanishing.wait();
    assert_eq!(bystander.query_first::<u8, _>("SELECT 1").unwrap(), Some(1));
    let mut again = db.conn(proxy.port);
    assert_eq!(again.query_first::<u8, _>("SELECT 2").unwrap(), Some(2));
    drop((bystander, again));
    proxy.finish();
}

/// A configuration file in `dir` with rp_native as the one `[[users]]` entry of pooled listeners.
fn users_config(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("pooled.toml");
    let text = format!("[[users]]\nname = \"{NATIVE_USER}\"\npassword = \"{NATIVE_PASS}\"\n");
    std::fs::write(&path, text).expect("write the configuration");
    path
}

const POOLED_SCRIPT: &str = r#"
function connect_server() print("connect_server must not run on pooled listeners") end
function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  local q = packet:sub(2)
  print("pooled read_query", proxy.connection.client.username, proxy.connection.client.default_db, q)
  if q == "SELECT 'who'" then
    proxy.response = { type = proxy.MYSQLD_PACKET_OK, resultset = {
      fields = { { name = "user" }, { name = "db" } },
      rows = { { proxy.connection.client.username, proxy.connection.client.default_db } } } }
    return proxy.PROXY_SEND_RESULT
  end
  if q == "SELECT 'two'" then
    proxy.queries:append(1, string.char(proxy.COM_QUERY) .. "SELECT 2")
    return proxy.PROXY_SEND_QUERY
  end
  if q:find("^DROP") then
    proxy.response = { type = proxy.MYSQLD_PACKET_ERR, errmsg = "no drops", errcode = 1142 }
    return proxy.PROXY_SEND_RESULT
  end
  if q == "SELECT 'hidden'" then
    proxy.queries:append(2, string.char(proxy.COM_QUERY) .. "SELECT 'secret', @mine",
                         { resultset_is_needed = true })
    proxy.queries:append(1, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
  end
end
function read_query_result(inj)
  if inj.id == 2 then
    for row in inj.resultset.rows do print("pooled hidden", row[1], row[2]) end
    return proxy.PROXY_IGNORE_RESULT
  end
end
function disconnect_client() print("pooled disconnect", proxy.connection.client.username) end
"#;

#[test]
fn read_query_runs_on_pooled_listeners_and_state_stays_per_session() {
    let db = MariaDb::shared();
    let script = Script::new(POOLED_SCRIPT);
    let config = users_config(script.dir.path());
    let proxy = Proxy::start_pooled(
        db.port,
        &[
            "--config",
            config.to_str().unwrap(),
            "--proxy-lua-script",
            script.arg(),
            "--max-backend-connections",
            "2",
        ],
    );
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let opts = db.opts(proxy.port, NATIVE_USER, NATIVE_PASS);
            thread::spawn(move || {
                let mut c = mysql::Conn::new(opts).unwrap();
                c.query_drop(format!("SET @mine = {i}")).unwrap();
                for _ in 0..20 {
                    let who: Vec<(String, String)> = c.query("SELECT 'who'").unwrap();
                    assert_eq!(who, vec![(NATIVE_USER.to_string(), DB.to_string())]);
                    let two: Option<u8> = c.query_first("SELECT 'two'").unwrap();
                    assert_eq!(two, Some(2));
                    let mine: Option<i64> = c.query_first("SELECT @mine").unwrap();
                    assert_eq!(mine, Some(i), "session state moved with the session");
                    let err = server_error(c.query_drop("DROP TABLE nothing"));
                    assert_eq!(err.code, 1142);
                    // An injected query's result, hidden by read_query_result.
                    let shown: Vec<String> = c.query("SELECT 'hidden'").unwrap();
                    assert_eq!(shown, vec!["hidden".to_string()]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    let log = wait_for_log(&proxy, "pooled disconnect");
    assert!(
        !log.contains("connect_server must not run"),
        "{}",
        tail(&log, 20)
    );
    for i in 0..6 {
        let seen = log
            .matches(&format!("pooled hidden\tsecret\t{i}\n"))
            .count();
        assert_eq!(seen, 20, "session {i}'s hidden rows:\n{}", tail(&log, 20));
    }
    assert!(
        log.contains(&format!(
            "pooled read_query\t{NATIVE_USER}\t{DB}\tSELECT 'who'"
        )),
        "{}",
        tail(&log, 20)
    );
    proxy.finish();
}

const AUTO_CONFIG: &str = r#"
local commands = require("proxy.commands")
require("proxy.auto-config")
require("mysql.tokenizer")
if not proxy.global.config.demo then proxy.global.config.demo = { limit = 10 } end
function read_query(packet)
  local r = proxy.global.config:handle(commands.parse(packet))
  if r then return r end
  if packet:sub(2) == "SELECT 'demo'" then
    local all = {}
    for k, v in pairs(proxy.global.config.demo) do all[#all + 1] = k .. "=" .. tostring(v) end
    table.sort(all)
    proxy.response.type = proxy.MYSQLD_PACKET_OK
    proxy.response.resultset = {
      fields = { { name = "limit" }, { name = "all" }, { name = "idle" }, { name = "normalized" } },
      rows = { { proxy.global.config.demo.limit, table.concat(all, ","),
                 proxy.global.backends[1].pool.users["anyone"].cur_idle_connections,
                 tokenizer.normalize("select a from t where b = 'x'") } } }
    return proxy.PROXY_SEND_RESULT
  end
end
"#;

#[test]
fn auto_config_pairs_over_proxy_global_and_mysql_proxy_globals() {
    let db = MariaDb::shared();
    let script = Script::new(AUTO_CONFIG);
    let proxy = start(db, script.arg(), &["--workers", "2"]);
    let demo = |port| -> (String, String, String, String) {
        let mut c = db.conn(port);
        c.query_first("SELECT 'demo'").unwrap().unwrap()
    };
    let (limit, all, idle, normalized) = demo(proxy.port);
    assert_eq!(
        (limit.as_str(), all.as_str(), idle.as_str()),
        ("10", "limit=10", "0")
    );
    assert_eq!(normalized, "SELECT `a` FROM `t` WHERE `b` = ? ");
    let mut c = db.conn(proxy.port);
    c.query_drop("PROXY SET GLOBAL demo.limit = 42").unwrap();
    c.query_drop("PROXY SET GLOBAL demo.name = 'x y'").unwrap();
    let shown: Vec<(String, String, String, String)> = c.query("PROXY SHOW CONFIG").unwrap();
    assert_eq!(
        shown,
        vec![
            ("demo".into(), "limit".into(), "number".into(), "42".into()),
            ("demo".into(), "name".into(), "string".into(), "x y".into()),
        ]
    );
    let saved = script.dir.path().join("saved.conf");
    c.query_drop(format!("PROXY SAVE CONFIG INTO '{}'", saved.display()))
        .unwrap();
    c.query_drop("PROXY SET GLOBAL demo.limit = 7").unwrap();
    c.query_drop(format!("PROXY LOAD CONFIG FROM '{}'", saved.display()))
        .unwrap();
    let err = server_error(c.query_drop("PROXY FROB"));
    assert!(
        err.message.starts_with("PROXY: expected"),
        "{}",
        err.message
    );
    // Every connection, whichever worker, sees the shared settings.
    for _ in 0..6 {
        let (limit, all, _, _) = demo(proxy.port);
        assert_eq!((limit.as_str(), all.as_str()), ("42", "limit=42,name=x y"));
    }
    drop(c);
    proxy.finish();
}

/// The port of the server that runs it, in a form rw-split.lua sends to a replica (no `@`).
const SERVER_PORT: &str =
    "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME = 'PORT'";

#[test]
fn rw_split_routes_reads_to_the_replica_outside_transactions() {
    let primary = MariaDb::shared();
    let replica = MariaDb::start_with(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = users_config(dir.path());
    let ro = format!("127.0.0.1:{}", replica.port);
    let proxy = Proxy::start_pooled(
        primary.port,
        &[
            "--config",
            config.to_str().unwrap(),
            "--read-only-backends",
            &ro,
            "--proxy-lua-script",
            &shipped("rw-split.lua"),
        ],
    );
    let mut c = primary.conn(proxy.port);
    let port =
        |c: &mut mysql::Conn, sql: &str| -> u16 { c.query_first::<u16, _>(sql).unwrap().unwrap() };
    c.query_drop("CREATE TABLE IF NOT EXISTS rp_split (id INT PRIMARY KEY, port INT)")
        .unwrap();
    // Statements that read session values (here @@port) stay on the primary.
    assert_eq!(port(&mut c, "SELECT @@port"), primary.port);
    // Reads outside a transaction: the replica.
    let replica_port: u16 = c.query_first(SERVER_PORT).unwrap().unwrap();
    assert_eq!(
        replica_port, replica.port,
        "a plain SELECT ran on the replica"
    );
    // Writes and locking reads: the primary.
    c.query_drop(format!(
        "REPLACE INTO rp_split VALUES (1, {})",
        primary.port
    ))
    .unwrap();
    let in_primary: Option<u16> = c
        .query_first("SELECT port FROM rp_split WHERE id = 1 FOR UPDATE")
        .unwrap();
    assert_eq!(in_primary, Some(primary.port));
    // A transaction, reads included: the primary until COMMIT.
    c.query_drop("BEGIN").unwrap();
    let p: u16 = c.query_first(SERVER_PORT).unwrap().unwrap();
    assert_eq!(
        p, primary.port,
        "a read inside a transaction ran on the primary"
    );
    c.query_drop("COMMIT").unwrap();
    let p: u16 = c.query_first(SERVER_PORT).unwrap().unwrap();
    assert_eq!(
        p, replica.port,
        "after COMMIT reads go to the replica again"
    );
    // Session state follows the session to either server.
    c.query_drop("SET @who = 'me'").unwrap();
    let who: Option<String> = c.query_first("SELECT @who").unwrap();
    assert_eq!(who.as_deref(), Some("me"));
    drop(c);
    proxy.finish();
}

/// A login alias: the client logs in as `alias` / `alias-pw` (checked by the script with
/// mysql.password), the server sees rp_native with its own password (a replacement handshake
/// response queued from read_auth).
fn alias_script() -> String {
    format!(
        r#"
local proto = require("mysql.proto")
local password = require("mysql.password")
function read_auth()
  local c = proxy.connection.client
  if c.username ~= "alias" then return end
  local challenge = proxy.connection.server.scramble_buffer
  local stored = password.hash(password.hash("alias-pw"))
  if not password.check(challenge, c.scrambled_password, stored) then
    proxy.response = {{ type = proxy.MYSQLD_PACKET_ERR, errmsg = "alias: wrong password",
                        errcode = 1045, sqlstate = "28000" }}
    return proxy.PROXY_SEND_RESULT
  end
  assert(password.unscramble(challenge, c.scrambled_password, stored) == password.hash("alias-pw"))
  proxy.queries:append(1, proto.to_response_packet({{
    username = "{NATIVE_USER}",
    response = password.scramble(challenge, password.hash("{NATIVE_PASS}")),
    database = c.default_db,
  }}))
  return proxy.PROXY_SEND_QUERY
end
"#
    )
}

#[test]
fn read_auth_can_log_in_with_other_credentials() {
    let db = MariaDb::shared();
    let script = Script::new(&alias_script());
    let proxy = start(db, script.arg(), &[]);
    let mut c = mysql::Conn::new(db.opts(proxy.port, "alias", "alias-pw")).unwrap();
    let user: Option<String> = c.query_first("SELECT CURRENT_USER()").unwrap();
    assert_eq!(user, Some(format!("{NATIVE_USER}@%")));
    let schema: Option<String> = c.query_first("SELECT DATABASE()").unwrap();
    assert_eq!(schema.as_deref(), Some(DB));
    let err = mysql::Conn::new(db.opts(proxy.port, "alias", "nope")).unwrap_err();
    assert!(err.to_string().contains("alias: wrong password"), "{err}");
    drop(c);
    proxy.finish();
}

const INJ_FIELDS: &str = r#"
function read_query(packet)
  if packet:byte() ~= proxy.COM_QUERY then return end
  proxy.queries:append(7, packet, { resultset_is_needed = true })
  return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
  local rs = inj.resultset
  print("inj", inj.id, inj.query:sub(2), rs.query_status, tostring(rs.affected_rows),
        tostring(rs.insert_id), rs.warning_count, rs.bytes > 0, rs.raw:byte(),
        tostring(rs.row_count), tostring(rs.errcode), tostring(rs.errmsg))
end
"#;

#[test]
fn inj_resultset_fields_of_ok_err_and_warnings() {
    let db = MariaDb::shared();
    let script = Script::new(INJ_FIELDS);
    let proxy = start(db, script.arg(), &[]);
    let mut c = db.conn(proxy.port);
    c.query_drop("CREATE TABLE IF NOT EXISTS rp_lua_ai (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        .unwrap();
    c.query_drop("INSERT INTO rp_lua_ai (v) VALUES (1), (2)")
        .unwrap();
    let first = c.last_insert_id();
    let null: Option<Option<u8>> = c.query_first("SELECT 1/0").unwrap();
    assert_eq!(null, Some(None));
    let err = server_error(c.query_drop("SELECT * FROM rp_no_such_table"));
    assert_eq!(err.code, 1146);
    let log = wait_for_log(&proxy, "inj\t7\tSELECT * FROM rp_no_such_table");
    let has = |line: &str| assert!(log.contains(line), "{line:?} not in:\n{}", tail(&log, 12));
    has(&format!(
        "inj\t7\tINSERT INTO rp_lua_ai (v) VALUES (1), (2)\t0\t2\t{first}\t0\ttrue\t0\tnil\tnil\tnil\n"
    ));
    has("inj\t7\tSELECT 1/0\t0\tnil\tnil\t1\ttrue\t1\t1\tnil\tnil\n");
    has("inj\t7\tSELECT * FROM rp_no_such_table\t255\tnil\tnil\t0\ttrue\t255\tnil\t1146\tTable 'rp.rp_no_such_table' doesn't exist\n");
    drop(c);
    proxy.finish();
}

const STMT_LOG: &str = r#"
local proto = require("mysql.proto")
local params = {}
function read_query(packet)
  local cmd = packet:byte()
  if cmd == proxy.COM_STMT_PREPARE then
    print("prepare", proto.from_stmt_prepare_packet(packet).stmt_text)
    proxy.queries:append(1, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
  elseif cmd == proxy.COM_STMT_EXECUTE then
    local id = proto.stmt_id_from_stmt_execute_packet(packet)
    local e = proto.from_stmt_execute_packet(packet, params[id] or 0)
    local shown = {}
    for i, p in ipairs(e.params or {}) do shown[i] = p.type .. "=" .. tostring(p.value) end
    print("execute", e.stmt_id == id, tostring(e.new_params_bound), table.concat(shown, ","))
    proxy.queries:append(2, packet, { resultset_is_needed = true })
    return proxy.PROXY_SEND_QUERY
  elseif cmd == proxy.COM_STMT_CLOSE then
    print("close", proto.from_stmt_close_packet(packet).stmt_id)
  end
end
function read_query_result(inj)
  if inj.id == 2 then
    for row in inj.resultset.rows do
      print("binary row", row[1], row[2], row[3], tostring(row[4]), inj.resultset.fields[1].type)
    end
    return
  end
  local ok = proto.from_stmt_prepare_ok_packet(inj.resultset.raw)
  params[ok.stmt_id] = ok.num_params
  print("prepared", ok.num_params, ok.num_columns)
end
"#;

#[test]
fn mysql_proto_decodes_prepared_statement_packets_and_binary_rows() {
    let db = MariaDb::shared();
    let script = Script::new(STMT_LOG);
    let proxy = start(db, script.arg(), &[]);
    let mut c = db.conn(proxy.port);
    let stmt = c.prep("SELECT ?, ?, ?, ?").unwrap();
    let row: Option<(Option<i64>, f64, String, Option<String>)> = c
        .exec_first(&stmt, (-5i64, 2.5f64, "text", None::<String>))
        .unwrap();
    assert_eq!(row, Some((Some(-5), 2.5, "text".into(), None)));
    c.close(stmt).unwrap();
    let log = wait_for_log(&proxy, "close\t");
    for line in [
        "prepare\tSELECT ?, ?, ?, ?\n",
        "prepared\t4\t4\n",
        "execute\ttrue\ttrue\t8=-5,5=2.5,253=text,6=nil\n",
        "binary row\t-5\t2.5\ttext\tnil\t8\n",
    ] {
        assert!(log.contains(line), "{line:?} not in:\n{}", tail(&log, 10));
    }
    drop(c);
    proxy.finish();
}

const QUEUE_AND_MODULES: &str = r#"
local helper = require("rp_helper")        -- from the script's own directory
local extra = require("rp_extra")          -- from --lua-path
function read_query(packet)
  if packet:sub(2) ~= "SELECT 'queue'" then return end
  proxy.queries:append(1, string.char(proxy.COM_QUERY) .. "SELECT 'dropped'")
  proxy.queries:reset()
  proxy.queries:append(3, string.char(proxy.COM_QUERY) .. "SELECT 'third'", { resultset_is_needed = true })
  proxy.queries:prepend(2, string.char(proxy.COM_QUERY) .. "SELECT 'second'", { resultset_is_needed = true })
  print("queue", proxy.queries:len(), helper.name, extra.name)
  return proxy.PROXY_SEND_QUERY
end
function read_query_result(inj)
  print("result of", inj.id)
  if inj.id == 2 then return proxy.PROXY_IGNORE_RESULT end
end
"#;

#[test]
fn queue_methods_and_modules_from_the_script_dir_and_lua_path() {
    let db = MariaDb::shared();
    let script = Script::new(QUEUE_AND_MODULES);
    std::fs::write(
        script.dir.path().join("rp_helper.lua"),
        "return { name = 'helper' }\n",
    )
    .unwrap();
    let lib = tempfile::tempdir().unwrap();
    std::fs::write(
        lib.path().join("rp_extra.lua"),
        "return { name = 'extra' }\n",
    )
    .unwrap();
    let lua_path = format!("{}/?.lua", lib.path().display());
    let proxy = start(db, script.arg(), &["--lua-path", &lua_path]);
    let mut c = db.conn(proxy.port);
    let got: Vec<String> = c.query("SELECT 'queue'").unwrap();
    assert_eq!(got, vec!["third".to_string()]);
    let log = wait_for_log(&proxy, "result of\t3");
    assert!(
        log.contains("queue\t2\thelper\textra\n"),
        "{}",
        tail(&log, 10)
    );
    let order: Vec<&str> = log.lines().filter(|l| l.starts_with("result of")).collect();
    assert_eq!(order, ["result of\t2", "result of\t3"]);
    drop(c);
    proxy.finish();
}
