//! The users loader of pooled listeners (`ringproxy::session::users`) against a real MariaDB,
//! through its public API: the monitor account logs in, `mysql.global_priv` is read, every
//! account comes back with the credential the proxy can check (native hash, ed25519 key) or none
//! (pam), locked accounts and roles are left out, and a refresh on request brings a new account.

mod common;

use std::net::{IpAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::MariaDb;
use ringproxy::config::Config;
use ringproxy::protocol::auth::ed25519_public_key;
use ringproxy::protocol::auth_server::Stored;
use ringproxy::session::users::{UserEntry, Users};
use sha1::{Digest, Sha1};

const REFRESH_MS: u64 = 300;

/// Installs the auth plugin `name` from `soname` unless it is active already.
fn install_plugin(db: &MariaDb, name: &str, soname: &str) {
    let active = db.root_sql(&format!(
        "SELECT COUNT(*) FROM information_schema.PLUGINS \
         WHERE PLUGIN_NAME = '{name}' AND PLUGIN_STATUS = 'ACTIVE'"
    ));
    if active.trim() == "0" {
        db.root_sql(&format!("INSTALL SONAME '{soname}'"));
    }
}

fn create_accounts(db: &MariaDb) {
    install_plugin(db, "ed25519", "auth_ed25519");
    install_plugin(db, "pam", "auth_pam");
    db.root_sql(
        "CREATE USER IF NOT EXISTS ul_mon@'%' IDENTIFIED BY 'mon pw'; \
         GRANT SELECT ON mysql.* TO ul_mon@'%'; \
         CREATE USER IF NOT EXISTS ul_native@'%' IDENTIFIED BY 'native pw'; \
         CREATE USER IF NOT EXISTS ul_two@'%' IDENTIFIED BY 'two pw'; \
         CREATE USER IF NOT EXISTS ul_two@'10.9.%' IDENTIFIED BY 'office pw'; \
         CREATE USER IF NOT EXISTS ul_ed@'%' IDENTIFIED VIA ed25519 USING PASSWORD('ed pw'); \
         CREATE USER IF NOT EXISTS ul_pam@'%' IDENTIFIED VIA pam USING 'mariadb'; \
         CREATE USER IF NOT EXISTS ul_locked@'%' IDENTIFIED BY 'x' ACCOUNT LOCK; \
         CREATE ROLE IF NOT EXISTS ul_role;",
    );
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Backends: first one that refuses (the loader goes on to the next), then the MariaDB.
fn config(db: &MariaDb) -> Config {
    let text = format!(
        "[proxy]\nbackends = [\"127.0.0.1:{}\", \"{}\"]\n\
         [monitor]\nuser = \"ul_mon\"\npassword = \"mon pw\"\nusers_refresh_ms = {REFRESH_MS}\n\
         [[users]]\nname = \"ul_native\"\npassword = \"from the config\"\n",
        closed_port(),
        db.target()
    );
    Config::from_toml_str(&text).expect("valid configuration")
}

/// Waits (bounded) until the loader has completed a load after `generation`.
fn wait_for_load(users: &Users, generation: u64) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while users.generation() <= generation {
        assert!(Instant::now() < deadline, "no load completed in 8 s");
        sleep(Duration::from_millis(20));
    }
}

fn native_hash(password: &str) -> Stored {
    Stored::NativeHash(Sha1::digest(Sha1::digest(password.as_bytes())).into())
}

fn loaded(users: &Users, user: &str, ip: Option<IpAddr>) -> UserEntry {
    let entry = (users.lookup(user, ip)).unwrap_or_else(|| panic!("{user} not loaded"));
    assert!(!entry.from_config && entry.active, "{entry:?}");
    entry
}

fn assert_accounts(users: &Users) {
    let office: Option<IpAddr> = Some("10.9.1.2".parse().unwrap());
    // The configuration's user of the same name wins.
    let from_config = users.lookup("ul_native", None).unwrap();
    assert!(from_config.from_config);
    assert_eq!(
        from_config.stored,
        Some(Stored::Cleartext(b"from the config".to_vec()))
    );
    // Native accounts: SHA1(SHA1(password)), the most specific host first.
    let two = loaded(users, "ul_two", None);
    assert_eq!(two.plugin, "mysql_native_password");
    assert_eq!(two.stored, Some(native_hash("two pw")));
    assert_eq!(
        loaded(users, "ul_two", office).stored,
        Some(native_hash("office pw"))
    );
    let elsewhere = Some("10.8.1.2".parse().unwrap());
    assert_eq!(
        loaded(users, "ul_two", elsewhere).stored,
        Some(native_hash("two pw"))
    );
    let ed = loaded(users, "ul_ed", None);
    assert_eq!(ed.plugin, "ed25519");
    assert_eq!(
        ed.stored,
        Some(Stored::Ed25519(ed25519_public_key(b"ed pw")))
    );
    assert!(ed.stored.unwrap().matches_password(b"ed pw"));
    let pam = loaded(users, "ul_pam", office);
    assert_eq!((pam.plugin.as_str(), pam.stored), ("pam", None));
    let mon = loaded(users, "ul_mon", None);
    assert_eq!(mon.plugin, "mysql_native_password");
    assert_eq!(mon.stored, Some(native_hash("mon pw")));
    assert_eq!(
        users.lookup("ul_locked", None),
        None,
        "locked accounts are left out"
    );
    assert_eq!(users.lookup("ul_role", None), None, "roles are left out");
    assert_eq!(users.lookup("ul_nobody", None), None);
}

#[test]
fn the_loader_reads_every_kind_of_account_and_refreshes_on_request() {
    let started = Instant::now();
    let db = MariaDb::shared();
    create_accounts(db);
    let config = config(db);
    let users = Users::new(&config);
    let shutdown = Arc::new(AtomicBool::new(false));
    let loader = (users.start_loader(&config, Arc::clone(&shutdown))).expect("a monitor account");
    wait_for_load(&users, 0);
    let version = users.server_version().expect("the greeting's version");
    assert!(version.contains("MariaDB"), "{version}");
    assert_accounts(&users);

    // A new account appears after a refresh, no sooner than users_refresh_ms after the load.
    db.root_sql("CREATE USER IF NOT EXISTS ul_new@'10.9.%' IDENTIFIED BY 'new pw'");
    let office: Option<IpAddr> = Some("10.9.0.1".parse().unwrap());
    assert_eq!(users.lookup("ul_new", office), None);
    let generation = users.generation();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !users.request_refresh() {
        assert!(Instant::now() < deadline, "request_refresh never accepted");
        sleep(Duration::from_millis(20));
    }
    wait_for_load(&users, generation);
    let new = loaded(&users, "ul_new", office);
    assert_eq!(new.stored, Some(native_hash("new pw")));
    assert_eq!(users.lookup("ul_new", None), None, "only from 10.9.%");
    assert_accounts(&users);

    let stopping = Instant::now();
    shutdown.store(true, Ordering::Relaxed);
    loader.join().expect("the loader ends cleanly");
    assert!(stopping.elapsed() < Duration::from_secs(1));
    assert!(!users.request_refresh(), "no loader after shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// A monitor account that may read MariaDB's `mysql.user` view but not `mysql.global_priv`: the
/// fallback (MySQL's query) needs `account_locked`, which that view lacks, so the load fails and
/// nothing is loaded rather than a locked account unlocked; the failed load still counts.
#[test]
fn a_load_that_fails_loads_nothing_and_still_counts() {
    let db = MariaDb::shared();
    db.root_sql(
        "CREATE USER IF NOT EXISTS ul_mon2@'%' IDENTIFIED BY 'mon2 pw'; \
         GRANT SELECT ON mysql.user TO ul_mon2@'%'; \
         CREATE USER IF NOT EXISTS ul_viewed@'%' IDENTIFIED BY 'viewed pw';",
    );
    let text = format!(
        "[proxy]\nbackends = [\"{}\"]\n\
         [monitor]\nuser = \"ul_mon2\"\npassword = \"mon2 pw\"\n",
        db.target()
    );
    let config = Config::from_toml_str(&text).unwrap();
    let users = Users::new(&config);
    let shutdown = Arc::new(AtomicBool::new(false));
    let loader = (users.start_loader(&config, Arc::clone(&shutdown))).unwrap();
    wait_for_load(&users, 0);
    shutdown.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    assert_eq!(users.lookup("ul_viewed", None), None);
    assert_eq!(users.generation(), 1);
    // The login itself worked: the greeting was seen.
    assert!(users.server_version().is_some());
}
