//! Integration tests for bad input and failures: an unreachable or dying backend, malformed and
//! oversized packets, clients that vanish or read slowly, wrong passwords, the connection limit, a
//! fixed-file table capped by RLIMIT_NOFILE, SIGTERM drain, and connection churn without leaks.
//!
//! Every test runs against the shared MariaDB of `common` through its own ringproxy process, on
//! loopback only, with socket timeouts so that a misbehaving proxy fails a test instead of hanging it.
//! The tests hold one lock while they run because several count the backend connections of the
//! shared `rp_native` user, which a concurrent test would disturb.

mod common;
mod raw;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, MariaDb, Proxy, DB, NATIVE_PASS as PASS, NATIVE_USER as USER};
use mysql::prelude::Queryable;
use raw::{RawConn, RawError, ServerError};

/// MySQL error codes the tests expect.
const ER_CON_COUNT_ERROR: u16 = 1040;
const ER_ACCESS_DENIED_ERROR: u16 = 1045;
const ER_HANDSHAKE_ERROR: u16 = 1043;
const ER_NET_PACKET_TOO_LARGE: u16 = 1153;

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs tests one at a time (a failed test must not block the others, so poisoning is ignored).
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Harness options plus timeouts, and never a switch to the Unix socket (that would bypass the proxy).
fn opts(db: &MariaDb, port: u16, user: &str, pass: &str) -> mysql::Opts {
    mysql::OptsBuilder::from_opts(db.opts(port, user, pass))
        .prefer_socket(false)
        .tcp_connect_timeout(Some(Duration::from_secs(5)))
        .read_timeout(Some(Duration::from_secs(30)))
        .write_timeout(Some(Duration::from_secs(30)))
        .into()
}

fn connect(db: &MariaDb, port: u16) -> mysql::Conn {
    mysql::Conn::new(opts(db, port, USER, PASS))
        .unwrap_or_else(|e| panic!("connecting as {USER} to port {port}: {e}"))
}

/// A connection straight to MariaDB, for KILL and PROCESSLIST.
fn direct(db: &MariaDb) -> mysql::Conn {
    connect(db, db.port)
}

/// Asserts that `conn` answers a query with the right value.
fn assert_serves(conn: &mut mysql::Conn, n: u64, context: &str) {
    let got: Option<u64> = conn
        .query_first(format!("SELECT {n}"))
        .unwrap_or_else(|e| panic!("{context}: healthy connection failed: {e}"));
    assert_eq!(got, Some(n), "{context}: wrong answer");
}

/// Asserts that the proxy process is still running, showing its log if not.
fn assert_alive(proxy: &mut Proxy, context: &str) {
    assert!(
        proxy.is_running(),
        "{context}: ringproxy died; log:\n{}",
        proxy.log()
    );
}

/// Backend sessions of `rp_native` that MariaDB currently has (including `direct` itself).
fn backend_count(direct: &mut mysql::Conn) -> u64 {
    direct
        .query_first(format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{USER}'"
        ))
        .expect("PROCESSLIST query")
        .expect("COUNT(*) row")
}

/// Waits until MariaDB shows at most `limit` `rp_native` sessions; returns the last count seen.
fn wait_backend_count(direct: &mut mysql::Conn, limit: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = backend_count(direct);
        if n <= limit || Instant::now() >= deadline {
            return n;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until connection `id` is running a statement that starts with `prefix`.
fn wait_running(direct: &mut mysql::Conn, id: u64, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: Option<u64> = direct
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ? AND INFO LIKE ?",
                (id, format!("{prefix}%")),
            )
            .expect("PROCESSLIST query");
        if n == Some(1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connection {id} never started running {prefix:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads what a refused or broken connection gets: at most one ERR packet, then end of stream.
/// Panics on a timeout (a hang) or on any packet other than ERR. Returns the ERR, if one came.
fn expect_err_or_close(conn: &mut RawConn, context: &str) -> Option<ServerError> {
    let mut err = None;
    loop {
        match conn.read_packet() {
            Ok((_, p)) => match raw::parse_err(&p) {
                Some(e) if err.is_none() => err = Some(e),
                Some(e) => panic!("{context}: a second ERR after {err:?}: {e}"),
                None => panic!(
                    "{context}: expected ERR or close, got a packet starting {:02x?}",
                    &p[..p.len().min(16)]
                ),
            },
            Err(e) => {
                let e = RawError::Io(e);
                assert!(
                    !e.is_timeout(),
                    "{context}: the proxy neither answered nor closed within the read timeout \
                     (ERR so far: {err:?})"
                );
                assert!(e.is_closed(), "{context}: expected ERR or close, got {e}");
                return err;
            }
        }
    }
}

/// Logs in through `port` with the raw client.
fn raw_login(port: u16) -> raw::Result<RawConn> {
    let conn = RawConn::login(port, USER, PASS, Some(DB))?;
    conn.set_read_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

#[test]
fn backend_unreachable_answers_err_packet_and_proxy_survives() {
    let _serial = serial();
    let db = MariaDb::shared();
    // Nothing listens on this port: every backend connect is refused.
    let dead_port = free_port();
    let mut proxy = Proxy::start(dead_port, &[]);

    for round in 0..2 {
        let mut conn = RawConn::connect(proxy.port).expect("TCP connect to the proxy");
        conn.set_read_timeout(Duration::from_secs(10)).unwrap();
        match conn.read_greeting() {
            Err(RawError::Server(e)) => assert!(
                e.message.to_lowercase().contains("backend"),
                "round {round}: the ERR should say the backend could not be reached: {e}"
            ),
            Ok(g) => panic!("round {round}: greeting {g:?} although no backend is reachable"),
            Err(e) => panic!("round {round}: expected an ERR packet, got {e}"),
        }
        assert_eq!(
            expect_err_or_close(&mut conn, "after the backend ERR"),
            None,
            "round {round}: the connection should close after the ERR"
        );

        match mysql::Conn::new(opts(db, proxy.port, USER, PASS)) {
            Err(mysql::Error::MySqlError(e)) => assert!(
                e.message.to_lowercase().contains("backend"),
                "round {round}: mysql crate got ERR without saying why: {e}"
            ),
            Err(e) => panic!("round {round}: mysql crate expected a server error, got {e}"),
            Ok(_) => {
                panic!("round {round}: mysql crate connected although no backend is reachable")
            }
        }
        assert_alive(&mut proxy, &format!("round {round}"));
    }
}

#[test]
fn backend_killed_mid_query_fails_only_that_client() {
    let _serial = serial();
    let db = MariaDb::shared();
    let mut proxy = Proxy::start(db.port, &[]);
    let mut direct = direct(db);

    let mut a = connect(db, proxy.port);
    let a_id: u64 = a
        .query_first("SELECT CONNECTION_ID()")
        .unwrap()
        .expect("CONNECTION_ID row");

    // Phase 0: before A's query; 1: while it runs on the backend, up to the KILL; 2: after A failed.
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2u64)
        .map(|w| {
            let mut conn = connect(db, proxy.port);
            let phase = Arc::clone(&phase);
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut ok = [0u32; 3];
                let mut errors = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let p = phase.load(Ordering::SeqCst);
                    let want = w * 1_000_000 + i;
                    match conn.query_first::<u64, _>(format!("SELECT {want}")) {
                        Ok(Some(v)) if v == want => ok[p] += 1,
                        other => errors.push(format!("phase {p}: {other:?}")),
                    }
                    i += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                (ok, errors)
            })
        })
        .collect();

    thread::sleep(Duration::from_millis(300));
    let sleeper = thread::spawn(move || {
        let started = Instant::now();
        let result = a.query_first::<u64, _>("SELECT SLEEP(20)");
        (result, started.elapsed())
    });
    wait_running(&mut direct, a_id, "SELECT SLEEP");
    phase.store(1, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(300));
    direct
        .query_drop(format!("KILL {a_id}"))
        .expect("KILL the backend connection of A");

    let (result, elapsed) = sleeper.join().expect("client A thread");
    assert!(
        result.is_err(),
        "A's backend was killed, yet A got a result: {result:?}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "A learned of its dead backend only after {elapsed:?}"
    );
    phase.store(2, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);

    for (w, handle) in workers.into_iter().enumerate() {
        let (ok, errors) = handle.join().expect("worker thread");
        assert!(errors.is_empty(), "worker {w} saw failures: {errors:?}");
        for (p, n) in ok.iter().enumerate() {
            assert!(*n > 0, "worker {w} completed no query in phase {p}: {ok:?}");
        }
    }
    assert_alive(&mut proxy, "end of test");
    let mut fresh = connect(db, proxy.port);
    assert_serves(&mut fresh, 7, "new connection after the kill");
}

#[test]
fn malformed_packets_end_only_the_offending_client() {
    let _serial = serial();
    let db = MariaDb::shared();
    let mut proxy = Proxy::start(db.port, &["--max-packet-size", "1MiB"]);
    let mut direct = direct(db);
    let mut healthy = connect(db, proxy.port);
    assert_serves(&mut healthy, 1, "before any fault");
    // rp_native sessions with no fault in progress: `direct` and `healthy`'s backend.
    let baseline = wait_backend_count(&mut direct, 2, Duration::from_secs(10));
    assert_eq!(baseline, 2, "unexpected rp_native sessions before the test");

    // 1. Unframed garbage instead of a HandshakeResponse. Its first bytes ("GAR") read as a header
    //    announcing 5.4 MB, beyond --max-packet-size, so the proxy itself must refuse it at once.
    //    The 5 s timeout is below MariaDB's connect_timeout (10 s): a proxy that just waits for the
    //    rest of the packet would otherwise pass only because the backend gives up first.
    {
        let mut c = RawConn::connect(proxy.port).unwrap();
        c.set_read_timeout(Duration::from_secs(5)).unwrap();
        c.read_greeting().expect("greeting");
        let garbage: Vec<u8> = b"GARBAGE! not a mysql packet at all \xff\xfe\x00\x01"
            .iter()
            .copied()
            .cycle()
            .take(200)
            .collect();
        // The proxy may close before taking all of it; only the reply matters.
        let _ = c.write_raw(&garbage);
        let e = expect_err_or_close(&mut c, "unframed garbage handshake (announcing 5.4 MB)");
        eprintln!("unframed garbage handshake: {e:?}");
        if let Some(e) = e {
            assert!(
                [ER_NET_PACKET_TOO_LARGE, ER_HANDSHAKE_ERROR].contains(&e.code),
                "a handshake packet beyond --max-packet-size answered with the wrong error: {e}"
            );
        }
    }
    assert_serves(&mut healthy, 2, "after unframed garbage");

    // 2. A well-framed HandshakeResponse whose payload is garbage.
    {
        let mut c = RawConn::connect(proxy.port).unwrap();
        c.set_read_timeout(Duration::from_secs(10)).unwrap();
        c.read_greeting().expect("greeting");
        let payload: Vec<u8> = (0..48u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let _ = c.write_packet(1, &payload);
        let e = expect_err_or_close(&mut c, "framed garbage handshake");
        eprintln!("framed garbage handshake: {e:?}");
    }
    assert_serves(&mut healthy, 3, "after framed garbage");

    // 3. A truncated HandshakeResponse, then the client closes.
    {
        let mut c = RawConn::connect(proxy.port).unwrap();
        c.read_greeting().expect("greeting");
        c.write_raw(&[100, 0, 0, 1, 0x85, 0xa6, 0x3f, 0x20, 0, 0, 0, 1])
            .unwrap();
        drop(c);
    }
    assert_serves(&mut healthy, 4, "after a truncated handshake");

    // 4. After login, a COM_QUERY whose header announces 8 MiB, beyond --max-packet-size 1MiB.
    {
        let mut c = raw_login(proxy.port).expect("raw login through the proxy");
        assert_eq!(c.query_value("SELECT 41").unwrap(), "41");
        let mut bytes = vec![0x00, 0x00, 0x80, 0x00, raw::COM_QUERY];
        bytes.extend(std::iter::repeat_n(b'x', 64 * 1024));
        let _ = c.write_raw(&bytes);
        let e = expect_err_or_close(&mut c, "8 MiB packet header");
        eprintln!("8 MiB packet header: {e:?}");
        if let Some(e) = e {
            assert_eq!(
                e.code, ER_NET_PACKET_TOO_LARGE,
                "oversized packet answered with the wrong error: {e}"
            );
        }
    }
    assert_serves(&mut healthy, 5, "after an oversized packet");
    let n = wait_backend_count(&mut direct, baseline, Duration::from_secs(10));
    assert_eq!(
        n, baseline,
        "the oversized client's backend connection was not closed"
    );

    // 5. After login, half a COM_QUERY packet, then the client vanishes.
    {
        let mut c = raw_login(proxy.port).expect("raw login through the proxy");
        assert_eq!(c.query_value("SELECT 42").unwrap(), "42");
        let mut bytes = vec![50, 0, 0, 0, raw::COM_QUERY];
        bytes.extend_from_slice(b"SELECT 'only half of th");
        c.write_raw(&bytes).unwrap();
        drop(c);
    }
    assert_serves(&mut healthy, 6, "after a client vanished mid-command");
    let n = wait_backend_count(&mut direct, baseline, Duration::from_secs(10));
    assert_eq!(
        n, baseline,
        "the vanished client's backend connection was not closed"
    );

    assert_alive(&mut proxy, "end of test");
    let mut fresh = connect(db, proxy.port);
    assert_serves(&mut fresh, 7, "new connection after all faults");
}

#[test]
fn slow_reader_bounds_proxy_memory_and_loses_nothing() {
    let _serial = serial();
    let db = MariaDb::shared();
    const ROWS: u64 = 200_000;
    const ROW_WIDTH: usize = 1000;
    // Each row: a 0xfc length prefix (3 bytes) and the 1000-byte value.
    const ROW_PAYLOAD: u64 = 3 + ROW_WIDTH as u64;
    let mut proxy = Proxy::start(
        db.port,
        &["--send-high-water", "256KiB", "--buffer-count", "256"],
    );
    let mut c = raw_login(proxy.port).expect("raw login through the proxy");
    c.set_read_timeout(Duration::from_secs(30)).unwrap();

    // Warm up at full speed so buffers the proxy touches anyway count in the baseline.
    let warm = c
        .query(&format!(
            "SELECT REPEAT('x', {ROW_WIDTH}) FROM seq_1_to_5000"
        ))
        .expect("warm-up query");
    assert_eq!(warm.rows, 5000);
    let baseline_kib = proxy.rss_kib();

    c.send_query(&format!(
        "SELECT REPEAT('x', {ROW_WIDTH}) FROM seq_1_to_{ROWS}"
    ))
    .unwrap();
    c.set_throttle(Some((4096, Duration::from_millis(5))));
    assert_eq!(c.read_result_header().expect("resultset header"), 1);

    let mut out = raw::QueryOutcome::default();
    let slow_until = Instant::now() + Duration::from_secs(8);
    let mut next_sample = Instant::now();
    let mut peak_kib = baseline_kib;
    while Instant::now() < slow_until {
        if Instant::now() >= next_sample {
            peak_kib = peak_kib.max(proxy.rss_kib());
            next_sample += Duration::from_millis(200);
        }
        let row = c
            .next_row()
            .expect("slow row read")
            .expect("the resultset ended while still reading slowly");
        assert_eq!(
            row.len() as u64,
            ROW_PAYLOAD,
            "row {} has the wrong size",
            out.rows
        );
        assert!(
            row[3..].iter().all(|&b| b == b'x'),
            "row {} is corrupted",
            out.rows
        );
        out.rows += 1;
        out.row_bytes += row.len() as u64;
    }
    peak_kib = peak_kib.max(proxy.rss_kib());
    let slow_rows = out.rows;
    assert!(slow_rows > 0, "no row arrived while reading slowly");
    assert!(
        slow_rows < ROWS / 2,
        "the slow phase read {slow_rows} rows: not slow enough to test backpressure"
    );

    c.set_throttle(None);
    c.read_rest(&mut out)
        .expect("reading the rest at full speed");
    assert_eq!(out.rows, ROWS, "rows were lost");
    assert_eq!(out.row_bytes, ROWS * ROW_PAYLOAD, "row bytes were lost");

    let growth_kib = peak_kib.saturating_sub(baseline_kib);
    eprintln!(
        "slow reader: {slow_rows} rows read slowly; proxy RSS baseline {baseline_kib} KiB, \
         peak {peak_kib} KiB"
    );
    assert!(
        growth_kib < 64 * 1024,
        "proxy RSS grew by {growth_kib} KiB (baseline {baseline_kib} KiB) while a ~{} MB resultset \
         waited for a slow reader",
        ROWS * ROW_PAYLOAD / 1_000_000
    );
    assert_eq!(
        c.query_value("SELECT 'still in sync'").unwrap(),
        "still in sync"
    );
    assert_alive(&mut proxy, "end of test");
}

#[test]
fn wrong_password_gets_server_err_and_proxy_stays_fine() {
    let _serial = serial();
    let db = MariaDb::shared();
    let mut proxy = Proxy::start(db.port, &[]);
    let mut direct = direct(db);

    match RawConn::login(proxy.port, USER, "not-the-password", Some(DB)) {
        Err(RawError::Server(e)) => assert_eq!(e.code, ER_ACCESS_DENIED_ERROR, "{e}"),
        Err(e) => panic!("raw client: expected ERR 1045, got {e}"),
        Ok(_) => panic!("raw client logged in with a wrong password"),
    }
    match mysql::Conn::new(opts(db, proxy.port, USER, "not-the-password")) {
        Err(mysql::Error::MySqlError(e)) => {
            assert_eq!(e.code, ER_ACCESS_DENIED_ERROR, "{e}")
        }
        Err(e) => panic!("mysql crate: expected ERR 1045, got {e}"),
        Ok(_) => panic!("mysql crate logged in with a wrong password"),
    }

    assert_alive(&mut proxy, "end of test");
    let mut good = connect(db, proxy.port);
    assert_serves(&mut good, 11, "right password after wrong ones");
    let mut raw_good = raw_login(proxy.port).expect("raw login after wrong passwords");
    assert_eq!(raw_good.query_value("SELECT 12").unwrap(), "12");
    raw_good.quit();
    drop(good);
    // Only `direct` should remain once the good sessions have gone.
    let n = wait_backend_count(&mut direct, 1, Duration::from_secs(10));
    assert_eq!(n, 1, "backend sessions leaked after failed logins");
}

#[test]
fn connection_limit_refuses_with_err_1040_and_recovers() {
    let _serial = serial();
    let db = MariaDb::shared();
    let mut proxy = Proxy::start(db.port, &["--max-connections", "5"]);

    let mut held: Vec<mysql::Conn> = (0..5).map(|_| connect(db, proxy.port)).collect();
    for (i, c) in held.iter_mut().enumerate() {
        assert_serves(c, i as u64, "held connection");
    }

    let mut sixth = RawConn::connect(proxy.port).expect("TCP connect for the 6th client");
    sixth.set_read_timeout(Duration::from_secs(10)).unwrap();
    match sixth.read_greeting() {
        Err(RawError::Server(e)) => assert_eq!(e.code, ER_CON_COUNT_ERROR, "{e}"),
        Err(e) => panic!("6th client: expected ERR 1040, got {e}"),
        Ok(g) => panic!("6th client got a greeting beyond --max-connections 5: {g:?}"),
    }
    expect_err_or_close(&mut sixth, "6th client after ERR 1040");
    drop(sixth);
    match mysql::Conn::new(opts(db, proxy.port, USER, PASS)) {
        Err(mysql::Error::MySqlError(e)) => assert_eq!(e.code, ER_CON_COUNT_ERROR, "{e}"),
        Err(e) => panic!("mysql crate 6th client: expected ERR 1040, got {e}"),
        Ok(_) => panic!("mysql crate connected beyond --max-connections 5"),
    }

    // Free one slot: a new client must get in (the proxy may need a moment to see the close).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut replacement = loop {
        match mysql::Conn::new(opts(db, proxy.port, USER, PASS)) {
            Ok(c) => break c,
            Err(mysql::Error::MySqlError(e)) if e.code == ER_CON_COUNT_ERROR => {
                assert!(
                    Instant::now() < deadline,
                    "the freed slot never became available"
                );
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connecting after freeing a slot: {e}"),
        }
    };
    assert_serves(&mut replacement, 42, "replacement connection");
    for (i, c) in held.iter_mut().enumerate() {
        assert_serves(c, 100 + i as u64, "held connection after the refusals");
    }
    // Five again: the limit still holds.
    match RawConn::connect(proxy.port).map(|mut c| c.read_greeting()) {
        Ok(Err(RawError::Server(e))) => assert_eq!(e.code, ER_CON_COUNT_ERROR, "{e}"),
        other => panic!("after refilling, a 6th client should get ERR 1040: {other:?}"),
    }
    assert_alive(&mut proxy, "end of test");
}

/// A ringproxy started by hand with a small RLIMIT_NOFILE; killed on drop.
struct LimitedProxy {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LimitedProxy {
    /// Starts the proxy with RLIMIT_NOFILE = `nofile`; `Err((status, log))` if it exits at start
    /// (a rejected configuration).
    fn start(
        backend_port: u16,
        nofile: u64,
        max_connections: usize,
    ) -> Result<LimitedProxy, (std::process::ExitStatus, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("ringproxy.log");
        let port = free_port();
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringproxy"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--backend", &format!("127.0.0.1:{backend_port}")])
            .args(["--workers", "2"])
            .args(["--max-connections", &max_connections.to_string()])
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let limit = libc::rlimit {
            rlim_cur: nofile,
            rlim_max: nofile,
        };
        // SAFETY: the closure runs in the forked child before exec; it only calls setrlimit(2), an
        // async-signal-safe system call, on a value captured by copy, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn().expect("spawn ringproxy");
        let mut proxy = LimitedProxy {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Some(status) = proxy.child.try_wait().expect("try_wait") {
                return Err((status, proxy.log_text()));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(proxy);
            }
            assert!(
                Instant::now() < deadline,
                "ringproxy never listened; log:\n{}",
                proxy.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running (not exited, not crashed).
    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LimitedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn fixed_file_table_exhaustion_refuses_cleanly_and_recovers() {
    let _serial = serial();
    let db = MariaDb::shared();
    const NOFILE: u64 = 64;
    // Find the largest connection limit the proxy accepts with this RLIMIT_NOFILE (it caps each
    // ring's fixed-file table, and validation refuses limits the tables cannot hold, saying so).
    // The limit fits the two workers' tables together, but SO_REUSEPORT may spread clients
    // unevenly, so one worker's table can fill first: either refusal must be clean and explained.
    let mut rejected = Vec::new();
    let (mut proxy, max_connections) = [256usize, 128, 64, 60, 48, 32, 24, 16]
        .into_iter()
        .find_map(|m| match LimitedProxy::start(db.port, NOFILE, m) {
            Ok(p) => Some((p, m)),
            Err((status, log)) => {
                // Exit code 2 is the binary's "configuration refused".
                assert_eq!(
                    status.code(),
                    Some(2),
                    "--max-connections {m}: ringproxy failed at start:\n{log}"
                );
                assert!(
                    log.contains("RLIMIT_NOFILE"),
                    "--max-connections {m} was rejected without naming RLIMIT_NOFILE:\n{log}"
                );
                rejected.push(m);
                None
            }
        })
        .unwrap_or_else(|| panic!("ringproxy rejected every --max-connections in {rejected:?}"));

    let mut held = Vec::new();
    let refusal = loop {
        assert!(
            held.len() <= max_connections,
            "{} connections held, beyond --max-connections {max_connections}",
            held.len()
        );
        match raw_login(proxy.port) {
            Ok(mut c) => {
                let n = held.len();
                assert_eq!(
                    c.query_value(&format!("SELECT {n}")).unwrap(),
                    n.to_string()
                );
                held.push(c);
            }
            Err(e) => break e,
        }
    };
    let log = proxy.log_text();
    eprintln!(
        "--max-connections {max_connections} (rejected {rejected:?}): connection {} refused: {refusal}",
        held.len() + 1
    );
    assert!(
        proxy.is_running(),
        "ringproxy died after {} connections ({refusal}); log:\n{log}",
        held.len()
    );
    match &refusal {
        RawError::Server(e) => {
            if e.code == ER_CON_COUNT_ERROR && held.len() == max_connections {
                // The tables held every allowed connection: the limit refused the next one.
            } else {
                let lower = log.to_lowercase();
                assert!(
                    lower.contains("rlimit_nofile")
                        || lower.contains("fixed-file")
                        || lower.contains("fixed file"),
                    "refused after {} connections ({e}) but the log does not say why:\n{log}",
                    held.len()
                );
            }
        }
        e if e.is_closed() => {
            let lower = log.to_lowercase();
            assert!(
                lower.contains("rlimit_nofile")
                    || lower.contains("fixed-file")
                    || lower.contains("fixed file"),
                "closed after {} connections but the log does not say why:\n{log}",
                held.len()
            );
        }
        e => panic!(
            "connection {} was neither refused with ERR nor closed: {e}\nlog:\n{log}",
            held.len() + 1
        ),
    }
    assert!(
        !held.is_empty(),
        "not even one connection fit with RLIMIT_NOFILE {NOFILE}"
    );

    // The held connections still work, and freeing some lets new clients in.
    for (i, c) in held.iter_mut().enumerate() {
        assert_eq!(
            c.query_value(&format!("SELECT {i}")).unwrap(),
            i.to_string()
        );
    }
    let keep = held.len() / 2;
    for c in held.drain(keep..) {
        c.quit();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fresh = loop {
        match raw_login(proxy.port) {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no new connection fits after freeing half: {e}\nlog:\n{}",
                    proxy.log_text()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(
        fresh.query_value("SELECT 'recovered'").unwrap(),
        "recovered"
    );
}

#[test]
fn sigterm_drains_in_flight_query_and_exits_zero() {
    let _serial = serial();
    let db = MariaDb::shared();
    const DRAIN_MS: u64 = 10_000;
    let proxy = Proxy::start(db.port, &["--drain-timeout-ms", &DRAIN_MS.to_string()]);
    let proxy_port = proxy.port;
    let mut direct = direct(db);

    let mut a = connect(db, proxy_port);
    let a_id: u64 = a.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();
    let sleeper = thread::spawn(move || {
        let result = a.query_first::<u64, _>("SELECT SLEEP(2)");
        drop(a);
        result
    });
    wait_running(&mut direct, a_id, "SELECT SLEEP");

    let (done_tx, done_rx) = mpsc::channel();
    let signalled = Instant::now();
    thread::spawn(move || {
        let status = proxy.terminate();
        let _ = done_tx.send((status, signalled.elapsed()));
    });
    // Let the signal land, then try to get in while the query is still running.
    thread::sleep(Duration::from_millis(300));
    match RawConn::connect(proxy_port) {
        Err(_) => {} // listener closed: refused at TCP level
        Ok(mut c) => {
            c.set_read_timeout(Duration::from_secs(5)).unwrap();
            match c.read_greeting() {
                Ok(g) => panic!("a new client got a greeting while draining: {g:?}"),
                Err(RawError::Server(_)) => {}
                Err(e) => assert!(e.is_closed(), "new client during drain: {e}"),
            }
        }
    }

    let result = sleeper.join().expect("sleeper thread");
    assert_eq!(
        result.expect("the in-flight query failed during drain"),
        Some(0),
        "SLEEP(2) should complete with 0"
    );

    match done_rx.recv_timeout(Duration::from_millis(DRAIN_MS + 5_000)) {
        Ok((status, elapsed)) => {
            assert!(status.success(), "proxy exited with {status} after SIGTERM");
            assert!(
                elapsed < Duration::from_millis(DRAIN_MS + 1_000),
                "proxy took {elapsed:?} to exit, drain timeout is {DRAIN_MS} ms"
            );
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // Proxy::terminate kills the process itself once its own 30 s wait runs out.
            panic!("proxy still running {DRAIN_MS} ms + 5 s after SIGTERM");
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!("Proxy::terminate panicked (see its message above)")
        }
    }
}

#[test]
fn connection_churn_leaves_no_backend_connections() {
    let _serial = serial();
    let db = MariaDb::shared();
    const THREADS: usize = 8;
    const CYCLES: usize = 250;
    let mut proxy = Proxy::start(db.port, &[]);
    let mut direct = direct(db);
    let baseline = wait_backend_count(&mut direct, 1, Duration::from_secs(10));
    assert_eq!(baseline, 1, "unexpected rp_native sessions before the test");

    let port = proxy.port;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let o = opts(db, port, USER, PASS);
            thread::spawn(move || {
                let mut failures = Vec::new();
                for i in 0..CYCLES {
                    let want = (t * CYCLES + i) as u64;
                    if t % 2 == 0 {
                        // mysql crate: sends COM_QUIT on drop.
                        let r = mysql::Conn::new(o.clone())
                            .and_then(|mut c| c.query_first::<u64, _>(format!("SELECT {want}")));
                        if !matches!(r, Ok(Some(v)) if v == want) {
                            failures.push(format!("cycle {i}: {r:?}"));
                        }
                    } else {
                        // Raw client: every other cycle leaves without COM_QUIT.
                        let r = raw_login(port).and_then(|mut c| {
                            c.query_value(&format!("SELECT {want}")).map(|v| (c, v))
                        });
                        match r {
                            Ok((c, v)) if v == want.to_string() => {
                                if i % 2 == 0 {
                                    c.quit();
                                }
                            }
                            Ok((_, v)) => failures.push(format!("cycle {i}: got {v}")),
                            Err(e) => failures.push(format!("cycle {i}: {e}")),
                        }
                    }
                }
                failures
            })
        })
        .collect();
    for (t, h) in handles.into_iter().enumerate() {
        let failures = h.join().expect("churn thread");
        assert!(
            failures.is_empty(),
            "thread {t}: {} of {CYCLES} cycles failed, first: {:?}",
            failures.len(),
            failures.first()
        );
    }
    let n = wait_backend_count(&mut direct, baseline, Duration::from_secs(15));
    assert_eq!(
        n,
        baseline,
        "{} backend connections leaked after {} short-lived clients",
        n - baseline,
        THREADS * CYCLES
    );
    assert_alive(&mut proxy, "end of test");
}
