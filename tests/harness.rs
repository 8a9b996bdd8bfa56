//! The test harness itself: a dedicated MariaDB (`MariaDb::start_with`) gets its extra server
//! options and the standard users, leaves the shared server alone, and is gone (process and
//! directory) once dropped.

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use mysql::prelude::Queryable;

#[test]
fn dedicated_server_takes_extra_options_and_goes_away_on_drop() {
    let shared = MariaDb::shared();
    let db = MariaDb::start_with(&["--skip-name-resolve=OFF", "--max-connect-errors=10"]);
    assert_ne!(db.port, shared.port);
    assert_ne!(db.pid, shared.pid);
    assert!(db.is_running());
    assert_eq!(
        db.root_sql("SELECT @@skip_name_resolve, @@max_connect_errors")
            .trim(),
        "0\t10"
    );
    // The shared server keeps the standard options.
    assert_eq!(
        shared
            .root_sql("SELECT @@skip_name_resolve, @@max_connect_errors")
            .trim(),
        "1\t100"
    );
    // The standard users work, over TCP (127.0.0.1 now resolves to a host name) and through the
    // proxy; no anonymous user shadows them.
    let mut conn = db.conn(db.port);
    let who: Option<String> = conn.query_first("SELECT CURRENT_USER()").unwrap();
    assert_eq!(who.as_deref(), Some("rp_native@%"));
    let proxy = Proxy::start(db.port, &[]);
    let mut conn = db.conn(proxy.port);
    let one: Option<u32> = conn.query_first("SELECT 1").unwrap();
    assert_eq!(one, Some(1));
    drop(conn);
    let out = mariadb_cli(db.port, APP_USER, APP_PASS, &["-e", "SELECT 1"]);
    assert!(out.status.success(), "{out:?}");
    drop(proxy);

    let (pid, root) = (db.pid, db.root.clone());
    drop(db);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() || root.exists() {
        assert!(
            Instant::now() < deadline,
            "dedicated mariadbd {pid} or {} still there after drop",
            root.display()
        );
        sleep(Duration::from_millis(50));
    }
    assert!(shared.is_running());
}
