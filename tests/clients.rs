//! Regression tests that need real client libraries: PyMySQL and mysql-connector-python (from
//! PyPI, in the harness's virtualenv), libmariadb (through Python's ctypes) and the mariadb CLI,
//! each named after the hardening item it covers. The scripts live in tests/py/.

mod common;
mod raw;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{
    mariadb_cli, python_env, MariaDb, Proxy, DB, NATIVE_PASS as PASS, NATIVE_USER as USER,
};
use ringproxy::protocol::constants::*;

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// Runs tests/py/`name` with the harness's Python; returns its standard output.
fn python(name: &str, args: &[String]) -> String {
    let out = Command::new(python_env())
        .arg(script(name))
        .args(args)
        .output()
        .expect("run the test virtualenv's python");
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn target(port: u16) -> Vec<String> {
    ["127.0.0.1", &port.to_string(), USER, PASS, DB]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Item 1: statements over 32 MiB (PyMySQL doubles a blob in hex: a 48 MiB blob is a 96 MiB
/// statement), payloads of exactly 2 and 3 × 0xFFFFFF, both directions.
#[test]
fn item1_statements_over_32_mib_both_directions() {
    let db = MariaDb::shared();
    let proxy = Proxy::start(db.port, &[]);
    let out = python("big_statements.py", &target(proxy.port));
    let cases = [
        "blob 17825792 ",
        "blob 34603008 ",
        "blob 41943040 ",
        "blob 50331648 ",
        "statement payload of exactly 33554430 ",
        "row payload of exactly 33554430 ",
        "statement payload of exactly 50331645 ",
        "row payload of exactly 50331645 ",
    ];
    for case in cases {
        assert!(out.contains(case), "{case} missing from:\n{out}");
    }
}

/// Item 2: a connection killed while busy in a statement reports what it reports direct
/// (2013, or ER_CONNECTION_KILLED), never "malformed packet" (2027), in both protocols.
#[test]
fn item2_kill_of_a_busy_connection_text_and_binary() {
    let db = MariaDb::shared();
    let proxy = Proxy::start(db.port, &[]);
    let run = |port: u16| {
        let mut args = target(port);
        args.insert(2, db.port.to_string());
        python("kill_busy.py", &args)
    };
    let errnos = |out: &str| -> Vec<(String, u32)> {
        out.lines()
            .map(|l| {
                let mut w = l.split_whitespace();
                let mode = w.next().unwrap_or("").to_string();
                (mode, w.next().and_then(|e| e.parse().ok()).unwrap_or(0))
            })
            .collect()
    };
    let direct = errnos(&run(db.port));
    let proxied = errnos(&run(proxy.port));
    assert_eq!(direct.len(), 2, "{direct:?}");
    for ((mode, d), (_, p)) in direct.iter().zip(&proxied) {
        assert!([1927, 2013].contains(d), "{mode} direct: {d}");
        assert!([1927, 2013].contains(p), "{mode} through the proxy: {p}");
        assert_ne!(*p, 2027, "{mode}: malformed packet");
    }
}

/// Item 3: a client that asks for compression gets it, relayed as it is, with the same answers
/// as direct (mysql-connector-python, text and binary protocol; the mariadb CLI).
#[test]
fn item3_compression_is_relayed() {
    let db = MariaDb::shared();
    let proxy = Proxy::start(db.port, &[]);
    let direct = python("compression.py", &target(db.port));
    let proxied = python("compression.py", &target(proxy.port));
    assert!(proxied.contains("compression ON"), "{proxied}");
    assert_eq!(proxied, direct);
    let sql = "SHOW STATUS LIKE 'Compression'; \
               SELECT SUM(LENGTH(REPEAT('x', seq))) FROM seq_1_to_20000";
    let cli = |port| {
        let out = mariadb_cli(port, USER, PASS, &["--compress", "--batch", "-e", sql]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (d, p) = (cli(db.port), cli(proxy.port));
    assert!(p.contains("Compression\tON"), "{p}");
    assert_eq!(p, d);
}

/// Item 3: a corrupt compressed packet ends that session only.
#[test]
fn item3_a_corrupt_compressed_packet_ends_only_its_session() {
    let db = MariaDb::shared();
    let proxy = Proxy::start(db.port, &[]);
    let mut other = raw::RawConn::login(proxy.port, USER, PASS, Some(DB)).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let g = raw::read_greeting_from(&mut s);
    let pkt = raw::handshake_response(&g, USER, PASS, None, CLIENT_COMPRESS);
    s.write_all(&pkt).unwrap();
    let (_, ok) = raw::read_packet_from(&mut s).unwrap();
    assert_eq!(ok[0], 0, "login OK");
    // A compressed packet announcing 100 bytes of zlib data that is garbage.
    let mut bad = vec![10, 0, 0, 0, 100, 0, 0];
    bad.extend_from_slice(&[0x13; 10]);
    s.write_all(&bad).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.len() < 200,
        "the session ended (at most an ERR): {rest:02x?}"
    );
    assert_eq!(
        other.query_value("SELECT 'still here'").unwrap(),
        "still here"
    );
}
