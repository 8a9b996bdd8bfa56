//! Concurrency tests through ringproxy: many simultaneous client sessions must each stay bound
//! to their own server session (no cross-talk, no mixed-up resultsets), and connection churn
//! must not break later logins. `RINGPROXY_TEST_TARGET=direct` runs them against MariaDB alone.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::thread;

use common::*;
use mysql::prelude::*;

/// Per-session checks for `rounds` rounds: CONNECTION_ID() equals the handshake's id, and a
/// session variable and a prepared-statement parameter come back as this session's own values.
fn own_session_rounds(conn: &mut mysql::Conn, who: usize, rounds: usize) -> Result<(), String> {
    let handshake_id = conn.connection_id();
    for round in 0..rounds {
        let mine = format!("conn-{who}-round-{round}");
        conn.exec_drop("SET @mine = ?", (&mine,))
            .map_err(|e| format!("session {who}: SET: {e}"))?;
        let (id, var, echo): (u32, String, u64) = conn
            .exec_first(
                "SELECT CONNECTION_ID(), @mine, ? + 0",
                (who as u64 * 1000 + round as u64,),
            )
            .map_err(|e| format!("session {who}: SELECT: {e}"))?
            .ok_or_else(|| format!("session {who}: no row"))?;
        if id != handshake_id {
            return Err(format!(
                "session {who} round {round}: CONNECTION_ID() {id} != handshake id {handshake_id}"
            ));
        }
        if var != mine {
            return Err(format!(
                "session {who} round {round}: @mine = {var:?}, want {mine:?}"
            ));
        }
        if echo != who as u64 * 1000 + round as u64 {
            return Err(format!(
                "session {who} round {round}: parameter echoed as {echo}"
            ));
        }
        let text: Option<String> = conn
            .query_first(format!("SELECT CONCAT('text-', {who}, '-', {round})"))
            .map_err(|e| format!("session {who}: text query: {e}"))?;
        if text.as_deref() != Some(format!("text-{who}-{round}").as_str()) {
            return Err(format!(
                "session {who} round {round}: text query gave {text:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn five_hundred_concurrent_sessions_stay_their_own() {
    const CLIENTS: usize = 500;
    const ROUNDS: usize = 5;
    let ep = Endpoint::from_env();
    let opts = ep.opts(NATIVE_USER, NATIVE_PASS);
    let mut admin = ep.db.conn(ep.db.port);
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));

    let handles: Vec<_> = (0..CLIENTS)
        .map(|who| {
            let opts = opts.clone();
            let barrier = Arc::clone(&barrier);
            thread::Builder::new()
                .name(format!("client-{who}"))
                .stack_size(512 * 1024)
                .spawn(move || -> Result<u32, String> {
                    // No early return before the barriers: every thread must reach both.
                    let conn = mysql::Conn::new(opts).map_err(|e| format!("connect {who}: {e}"));
                    barrier.wait(); // all sessions open at once
                    let result = conn.and_then(|mut conn| {
                        own_session_rounds(&mut conn, who, ROUNDS)?;
                        Ok((conn.connection_id(), conn))
                    });
                    barrier.wait(); // hold every session until all are done
                    result.map(|(id, conn)| {
                        drop(conn);
                        id
                    })
                })
                .expect("spawn client thread")
        })
        .collect();

    barrier.wait();
    // While every client is connected, MariaDB must hold at least as many sessions.
    let connected: Option<(String, u64)> = admin
        .query_first("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        .unwrap();
    barrier.wait();

    let mut ids = HashSet::new();
    let mut failures = Vec::new();
    for handle in handles {
        match handle.join().expect("client thread panicked") {
            Ok(id) => {
                assert!(ids.insert(id), "connection id {id} handed to two clients");
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} sessions failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(ids.len(), CLIENTS);
    let connected = connected.unwrap().1;
    assert!(
        connected > CLIENTS as u64,
        "only {connected} server sessions while {CLIENTS} clients were connected"
    );
    drop(admin);
    ep.finish();
}

#[test]
fn connection_churn() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 60;
    let ep = Endpoint::from_env();
    let opts = ep.opts(NATIVE_USER, NATIVE_PASS);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let opts = opts.clone();
            thread::spawn(move || -> Result<(), String> {
                for n in 0..PER_THREAD {
                    let who = t * PER_THREAD + n;
                    let mut conn = mysql::Conn::new(opts.clone())
                        .map_err(|e| format!("connect {who}: {e}"))?;
                    own_session_rounds(&mut conn, who, 1)?;
                }
                Ok(())
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("churn thread panicked").unwrap();
    }
    // The proxy still takes new sessions afterwards.
    let mut conn = ep.conn();
    own_session_rounds(&mut conn, 999_999, 3).unwrap();
    drop(conn);
    ep.finish();
}

#[test]
fn concurrent_resultsets_do_not_mix() {
    const THREADS: usize = 16;
    const ROWS: u64 = 20_000;
    let ep = Endpoint::from_env();
    let db = ep.db;
    // Each thread's query differs, so a resultset delivered to the wrong client shows up.
    let query = |t: usize| {
        format!(
            "SELECT seq, SHA1(seq * {m}), REPEAT('{c}', seq % 64) FROM seq_1_to_{ROWS}",
            m = t + 1,
            c = (b'a' + t as u8) as char
        )
    };
    let mut direct = db.conn(db.port);
    let expected: Vec<(u64, [u8; 20])> = (0..THREADS)
        .map(|t| hash_query(&mut direct, &query(t)))
        .collect();
    assert!(expected.iter().all(|e| e.0 == ROWS));
    assert_eq!(
        expected.iter().map(|e| e.1).collect::<HashSet<_>>().len(),
        THREADS,
        "queries must differ"
    );

    let opts = ep.opts(NATIVE_USER, NATIVE_PASS);
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let opts = opts.clone();
            let sql = query(t);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let conn = mysql::Conn::new(opts);
                barrier.wait();
                let mut conn = conn.unwrap_or_else(|e| panic!("connect {t}: {e}"));
                (0..3)
                    .map(|_| hash_query(&mut conn, &sql))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (t, handle) in handles.into_iter().enumerate() {
        for got in handle.join().expect("resultset thread panicked") {
            assert_eq!(got, expected[t], "thread {t} got another resultset");
        }
    }
    drop(direct);
    ep.finish();
}
