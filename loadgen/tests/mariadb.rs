//! loadgen against a real MariaDB: every workload verifies its replies and reports sensible
//! numbers, and wrong credentials, wrong row expectations and bad arguments give the contract's
//! exit statuses. Each run lasts a second or two.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{loadgen, loadgen_cmd, MariaDb};

fn base<'a>(db: &'a str, workload: &'a str) -> Vec<&'a str> {
    vec![workload, "--target", db, "--threads", "2", "--json"]
}

fn assert_clean(v: &serde_json::Value, connections: u64) {
    for k in ["protocol", "mismatch", "connect", "server_err", "closed"] {
        assert_eq!(v["errors"][k], 0, "errors.{k} in {v}");
    }
    assert_eq!(v["connect"]["established"], connections, "{v}");
    assert_eq!(v["connect"]["failed"], 0, "{v}");
}

#[test]
fn qps_verifies_every_reply_and_reports_latency_and_cpu() {
    let db = MariaDb::shared();
    let target = db.target();
    let pid = db.pid.to_string();
    let before = db.status("Com_select");
    let mut args = base(&target, "qps");
    args.extend(["--connections", "8", "--duration", "1", "--pid", &pid]);
    let r = loadgen(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v = r.json();
    assert_clean(&v, 8);
    assert_eq!(v["workload"], "qps");
    assert_eq!(v["connections"], 8);
    let queries = v["queries"].as_u64().unwrap();
    assert!(queries > 100, "{v}");
    // The server ran at least as many SELECTs as loadgen counted in the measured phase.
    assert!(db.status("Com_select") - before >= queries, "{v}");
    let lat = &v["latency_us"];
    let (p50, p99, max) = (
        lat["p50"].as_f64().unwrap(),
        lat["p99"].as_f64().unwrap(),
        lat["max"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{v}");
    assert!(v["cpu_s"]["target"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["target_rss_kib"].as_u64().unwrap() > 1000, "{v}");
    assert!(v["sockstat_mem_pages_before"].is_u64(), "{v}");
}

#[test]
fn prepared_statements_run_through_com_stmt_execute() {
    let db = MariaDb::shared();
    let target = db.target();
    let before = db.status("Com_stmt_execute");
    let mut args = base(&target, "qps");
    args.extend([
        "--connections",
        "4",
        "--duration",
        "1",
        "--prepared",
        "--query",
        "SELECT * FROM seq_1_to_5",
        "--expect-rows",
        "5",
    ]);
    let r = loadgen(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v = r.json();
    assert_clean(&v, 4);
    let queries = v["queries"].as_u64().unwrap();
    assert!(queries > 100, "{v}");
    assert!(db.status("Com_stmt_execute") - before >= queries, "{v}");
}

#[test]
fn pipeline_keeps_queries_in_flight() {
    let db = MariaDb::shared();
    let target = db.target();
    let mut args = base(&target, "pipeline");
    args.extend([
        "--connections",
        "4",
        "--duration",
        "1",
        "--depth",
        "6",
        "--mix",
        "SELECT 1=3,SELECT 2=1",
        "--expect-rows",
        "1",
    ]);
    let r = loadgen(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v = r.json();
    assert_clean(&v, 4);
    assert_eq!(v["depth"], 6);
    assert!(v["queries"].as_u64().unwrap() > 100, "{v}");
}

#[test]
fn rate_follows_the_schedule() {
    let db = MariaDb::shared();
    let target = db.target();
    let mut args = base(&target, "rate");
    args.extend(["--connections", "8", "--duration", "2", "--rate", "400"]);
    let r = loadgen(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v = r.json();
    assert_clean(&v, 8);
    let queries = v["queries"].as_u64().unwrap();
    let duration = v["duration_s"].as_f64().unwrap();
    let expected = 400.0 * duration;
    // The schedule never sends ahead of time (one query per thread may be due at once), and
    // a server this idle keeps up with it.
    assert!(
        (queries as f64) <= expected + 3.0 && (queries as f64) >= 0.8 * expected,
        "{queries} queries in {duration} s at 400/s: {v}"
    );
    assert_eq!(v["rate"]["target_qps"], 400.0);
}

#[test]
fn connect_spreads_openings_over_the_ramp() {
    let db = MariaDb::shared();
    let target = db.target();
    let mut args = base(&target, "connect");
    args.extend(["--connections", "60", "--ramp", "0.6", "--duration", "10"]);
    let r = loadgen(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v = r.json();
    assert_clean(&v, 60);
    // The last connection may open only 59/60 of the ramp after the first.
    let t = v["connect"]["time_to_all_s"].as_f64().unwrap();
    assert!(t >= 0.55, "{v}");
    assert!(v["connect"]["rate_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["queries"], 0);
}

#[test]
fn idle_holds_the_connections_open_and_only_the_active_fraction_queries() {
    let db = MariaDb::shared();
    let target = db.target();
    let mut args = base(&target, "idle");
    args.extend([
        "--connections",
        "40",
        "--duration",
        "3",
        "--active-fraction",
        "0.25",
        "--user",
        "idler",
        "--password",
        "idle-pw",
    ]);
    db.root_sql(
        "CREATE USER IF NOT EXISTS idler@'%' IDENTIFIED BY 'idle-pw'; \
         GRANT ALL ON *.* TO idler@'%';",
    );
    let child = loadgen_cmd(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, the server sees all 40 sessions of that user.
    let count = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'idler'";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while Instant::now() < deadline && seen < 40 {
        seen = db.root_sql(count).trim().parse().unwrap();
        sleep(Duration::from_millis(50));
    }
    assert_eq!(seen, 40);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_clean(&v, 40);
    assert!(v["queries"].as_u64().unwrap() > 10, "{v}");
    // COM_QUIT closed every session.
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.root_sql(count).trim() != "0" {
        assert!(
            Instant::now() < deadline,
            "sessions left after loadgen exited"
        );
        sleep(Duration::from_millis(50));
    }

    // With no active fraction nobody queries.
    let mut args = base(&target, "idle");
    args.extend(["--connections", "10", "--duration", "1"]);
    let r = loadgen(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let v = r.json();
    assert_clean(&v, 10);
    assert_eq!(v["queries"], 0);
}

#[test]
fn wrong_password_exits_1_and_says_why() {
    let db = MariaDb::shared();
    let target = db.target();
    let mut args = base(&target, "qps");
    args.extend([
        "--connections",
        "3",
        "--duration",
        "5",
        "--password",
        "nope",
    ]);
    let started = Instant::now();
    let r = loadgen(&args);
    assert_eq!(r.code, 1, "stderr: {}", r.stderr);
    let v = r.json();
    assert_eq!(v["errors"]["connect"], 3);
    assert_eq!(v["connect"]["established"], 0);
    assert!(r.stderr.contains("Access denied"), "{}", r.stderr);
    // No measured phase without a single connection.
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// PAM accounts ask for the `dialog` client plugin, which loadgen does not speak: every
/// connection fails with an error naming it.
#[test]
fn auth_plugin_loadgen_cannot_speak_is_reported() {
    let db = MariaDb::shared();
    let target = db.target();
    db.root_sql("INSTALL SONAME 'auth_pam'");
    db.root_sql(
        "CREATE USER IF NOT EXISTS pamu@'%' IDENTIFIED VIA pam USING 'mariadb'; \
         GRANT ALL ON *.* TO pamu@'%';",
    );
    let mut args = base(&target, "qps");
    args.extend([
        "--connections",
        "2",
        "--duration",
        "1",
        "--user",
        "pamu",
        "--password",
        "pw",
    ]);
    let r = loadgen(&args);
    assert_eq!(r.code, 1, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("dialog"), "{}", r.stderr);
    assert_eq!(r.json()["errors"]["connect"], 2);
}

#[test]
fn wrong_expect_rows_exits_1() {
    let db = MariaDb::shared();
    let target = db.target();
    let mut args = base(&target, "qps");
    args.extend([
        "--connections",
        "2",
        "--duration",
        "1",
        "--query",
        "SELECT * FROM seq_1_to_3",
        "--expect-rows",
        "2",
    ]);
    let r = loadgen(&args);
    assert_eq!(r.code, 1, "stderr: {}", r.stderr);
    let v = r.json();
    assert!(v["errors"]["mismatch"].as_u64().unwrap() > 0, "{v}");
    assert!(r.stderr.contains("3 rows"), "{}", r.stderr);

    // ERR replies count as server errors.
    let mut args = base(&target, "qps");
    args.extend([
        "--connections",
        "2",
        "--duration",
        "1",
        "--query",
        "SELECT * FROM no_such_table",
    ]);
    let r = loadgen(&args);
    assert_eq!(r.code, 1, "stderr: {}", r.stderr);
    assert!(r.json()["errors"]["server_err"].as_u64().unwrap() > 0);
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["qps", "--rate", "10"][..],
        &["rate"],
        &["pipeline", "--depth", "0"],
        &["qps", "--source", "10.0.0.9-10.0.0.1"],
        &["qps", "--connections", "50000", "--threads", "2"],
        &["qps", "--no-such-flag"],
        &["idle", "--active-fraction", "2"],
    ] {
        let r = loadgen(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.is_empty());
    }
}

#[test]
fn refused_connection_exits_1() {
    let port = common::free_port().to_string();
    let target = format!("127.0.0.1:{port}");
    let r = loadgen(&[
        "qps",
        "--target",
        &target,
        "--connections",
        "2",
        "--duration",
        "1",
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.json()["errors"]["connect"], 2);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
}

/// The library's login answers MariaDB's ed25519 auth switch (client_ed25519): loadgen logs in
/// as an ed25519 account.
#[test]
fn ed25519_accounts_log_in() {
    let db = MariaDb::shared();
    assert!(db.has_ed25519, "Debian's MariaDB ships the ed25519 plugin");
    let target = db.target();
    let mut args = base(&target, "qps");
    args.extend([
        "--connections",
        "3",
        "--duration",
        "1",
        "--user",
        common::ED_USER,
        "--password",
        common::ED_PASS,
    ]);
    let r = loadgen(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_clean(&r.json(), 3);
}
