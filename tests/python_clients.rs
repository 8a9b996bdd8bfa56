//! Real Python clients through the proxy: proves the harness's Python environment (`python_env()`,
//! a venv in target/test-venv with PyMySQL and mysql-connector-python) works end to end.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Connects through `port` with PyMySQL and with mysql-connector-python and runs `SELECT 1` with
/// each; prints one line per client.
const SCRIPT: &str = r#"
import sys
import pymysql
import mysql.connector

port, user, password, db = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

conn = pymysql.connect(host="127.0.0.1", port=port, user=user, password=password, database=db,
                       connect_timeout=10, read_timeout=60)
with conn.cursor() as cur:
    cur.execute("SELECT 1")
    print("pymysql", pymysql.VERSION_STRING, cur.fetchone()[0])
conn.close()

conn = mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=password,
                               database=db, connection_timeout=10, use_pure=True,
                               ssl_disabled=True)
cur = conn.cursor()
cur.execute("SELECT 1")
print("mysql.connector", mysql.connector.__version__, cur.fetchone()[0])
cur.close()
conn.close()
"#;

#[test]
fn python_clients_select_1_through_the_proxy() {
    let python = python_env();
    let endpoint = Endpoint::from_env();
    let out = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(endpoint.port.to_string())
        .args([NATIVE_USER, NATIVE_PASS, DB])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        python.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("pymysql ") && lines[0].ends_with(" 1"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("mysql.connector ") && lines[1].ends_with(" 1"),
        "{stdout}"
    );
    endpoint.finish();
}
