//! Functional pass-through tests: each protocol phase and command a real client uses, through
//! ringproxy in front of a private MariaDB (or straight to MariaDB with
//! `RINGPROXY_TEST_TARGET=direct`), with the `mysql` crate and the `mariadb` CLI.
//! Where the answer must equal MariaDB's own, the test asks MariaDB directly too and compares.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use mysql::prelude::*;
use mysql::{ChangeUserOpts, LocalInfileHandler, Value};

const BIG_ROWS: u64 = 200_000;

/// `rp.big`: 200,000 rows of mixed types (ints, strings of varying length, decimals, dates,
/// NULLs), created once per test binary straight on MariaDB.
fn big_table() {
    static CREATED: OnceLock<()> = OnceLock::new();
    CREATED.get_or_init(|| {
        let db = MariaDb::shared();
        let mut conn = db.conn(db.port);
        conn.query_drop(
            "CREATE TABLE big (
                id INT UNSIGNED PRIMARY KEY,
                n INT NOT NULL,
                h CHAR(40) NOT NULL,
                s VARCHAR(200) NOT NULL,
                d DECIMAL(14,4) NOT NULL,
                maybe BIGINT NULL,
                ts DATETIME(6) NOT NULL
            ) ENGINE=InnoDB",
        )
        .unwrap();
        conn.query_drop(format!(
            "INSERT INTO big
             SELECT seq, CAST((seq * 7919) % 100003 AS SIGNED) - 50000, SHA1(seq),
                    REPEAT(CHAR(65 + seq % 26), seq % 150), seq / 7,
                    IF(seq % 10 = 0, NULL, seq * seq),
                    FROM_UNIXTIME(1600000000 + seq) + INTERVAL (seq % 1000) MICROSECOND
             FROM seq_1_to_{BIG_ROWS}"
        ))
        .unwrap();
        let count: u64 = conn
            .query_first("SELECT COUNT(*) FROM big")
            .unwrap()
            .unwrap();
        assert_eq!(count, BIG_ROWS);
    });
}

#[test]
fn plain_queries() {
    let ep = Endpoint::from_env();
    let mut conn = ep.conn();

    let v: Option<(i64, String, Option<i32>)> = conn
        .query_first("SELECT 1 + 1, CONCAT('ring', 'proxy'), NULL")
        .unwrap();
    assert_eq!(v, Some((2, "ringproxy".to_string(), None)));

    conn.query_drop("CREATE TABLE plain (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(20))")
        .unwrap();
    conn.query_drop("INSERT INTO plain (name) VALUES ('a'), ('b'), ('c')")
        .unwrap();
    assert_eq!(conn.affected_rows(), 3);
    assert_eq!(conn.last_insert_id(), 1);
    conn.query_drop("UPDATE plain SET name = UPPER(name) WHERE id >= 2")
        .unwrap();
    assert_eq!(conn.affected_rows(), 2);
    let names: Vec<(u32, String)> = conn
        .query("SELECT id, name FROM plain ORDER BY id")
        .unwrap();
    assert_eq!(
        names,
        vec![(1, "a".into()), (2, "B".into()), (3, "C".into())]
    );

    // An empty resultset and a statement with a warning.
    let none: Vec<u32> = conn.query("SELECT id FROM plain WHERE id > 100").unwrap();
    assert!(none.is_empty());
    conn.query_drop("SELECT 1/0").unwrap();
    assert_eq!(conn.warnings(), 1);

    // A server error reaches the client intact and the session stays usable.
    let err = server_error(conn.query_drop("SELEC oops"));
    assert_eq!(err.code, 1064, "{err}");
    let err = server_error(conn.query_drop("SELECT * FROM no_such_table"));
    assert_eq!(err.code, 1146, "{err}");
    assert!(err.message.contains("no_such_table"), "{err}");
    let after: Option<u8> = conn.query_first("SELECT 7").unwrap();
    assert_eq!(after, Some(7));

    // Many small round trips on one connection.
    for i in 0..500u32 {
        let echoed: Option<u32> = conn.query_first(format!("SELECT {i}")).unwrap();
        assert_eq!(echoed, Some(i));
    }
    drop(conn);
    ep.finish();
}

#[test]
fn large_resultset_checksum_matches_direct() {
    big_table();
    let ep = Endpoint::from_env();
    let db = ep.db;
    let sql = "SELECT * FROM big ORDER BY id";

    let mut direct = db.conn(db.port);
    let mut proxied = ep.conn();
    let want = hash_query(&mut direct, sql);
    assert_eq!(want.0, BIG_ROWS);
    let got = hash_query(&mut proxied, sql);
    assert_eq!(
        got, want,
        "text-protocol resultset differs through the proxy"
    );

    // The same rows in the binary protocol (server-side prepared statement).
    let want_bin = hash_exec(&mut direct, sql);
    assert_eq!(want_bin.0, BIG_ROWS);
    assert_ne!(
        want_bin.1, want.1,
        "binary and text encodings hash alike: weak hash"
    );
    let got_bin = hash_exec(&mut proxied, sql);
    assert_eq!(
        got_bin, want_bin,
        "binary-protocol resultset differs through the proxy"
    );

    // An aggregate agrees too, and the connection still answers after the big transfers.
    let sum: Option<(u64, i64)> = proxied
        .query_first("SELECT COUNT(*), SUM(n) FROM big")
        .unwrap();
    let sum_direct: Option<(u64, i64)> = direct
        .query_first("SELECT COUNT(*), SUM(n) FROM big")
        .unwrap();
    assert_eq!(sum, sum_direct);
    drop((direct, proxied));
    ep.finish();
}

#[test]
fn blob_20mib_round_trip() {
    let ep = Endpoint::from_env();
    let mut conn = ep.conn();
    conn.query_drop("CREATE TABLE blobs (id INT PRIMARY KEY, b LONGBLOB NOT NULL)")
        .unwrap();
    let payload = pseudo_random_bytes(20 * 1024 * 1024 + 17, 0xb10b);

    conn.exec_drop(
        "INSERT INTO blobs (id, b) VALUES (?, ?)",
        (1, payload.clone()),
    )
    .unwrap();
    assert_eq!(conn.affected_rows(), 1);

    let expected_sha1 = {
        use sha1::Digest;
        let digest: [u8; 20] = sha1::Sha1::digest(&payload).into();
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (len, server_sha1): (u64, String) = conn
        .query_first("SELECT LENGTH(b), SHA1(b) FROM blobs WHERE id = 1")
        .unwrap()
        .unwrap();
    assert_eq!(len, payload.len() as u64);
    assert_eq!(server_sha1, expected_sha1, "server stored different bytes");

    // Back through the text protocol and through the binary protocol (> 16 MiB: multi-packet).
    let text: Vec<u8> = conn
        .query_first("SELECT b FROM blobs WHERE id = 1")
        .unwrap()
        .unwrap();
    assert!(text == payload, "text-protocol BLOB differs");
    let binary: Vec<u8> = conn
        .exec_first("SELECT b FROM blobs WHERE id = ?", (1,))
        .unwrap()
        .unwrap();
    assert!(binary == payload, "binary-protocol BLOB differs");

    // A payload of exactly 16 MiB - 1 bytes in a row fills one packet to the brim.
    let edge = pseudo_random_bytes(0xff_ffff - 32, 7);
    conn.exec_drop("INSERT INTO blobs VALUES (2, ?)", (edge.clone(),))
        .unwrap();
    let back: Vec<u8> = conn
        .exec_first("SELECT b FROM blobs WHERE id = ?", (2,))
        .unwrap()
        .unwrap();
    assert!(back == edge, "16 MiB-edge BLOB differs");
    drop(conn);
    ep.finish();
}

const TYPES_DDL: &str = "CREATE TABLE types (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
    bi BIGINT, biu BIGINT UNSIGNED,
    f FLOAT, d DOUBLE, dec1 DECIMAL(30,8),
    dt DATE, tm TIME(3), dtm DATETIME(6), ts TIMESTAMP(3) NULL, y YEAR,
    c CHAR(10), vc VARCHAR(100), tx TEXT, bl BLOB, bn BINARY(4),
    e ENUM('red','green','blue'), st SET('a','b','c'), bt BIT(12), js JSON
)";

fn type_rows() -> Vec<Vec<Value>> {
    use Value::*;
    let bytes = |s: &str| Bytes(s.as_bytes().to_vec());
    vec![
        vec![
            Int(1),
            Int(-128),
            UInt(0),
            Int(-32768),
            UInt(0),
            Int(-8388608),
            UInt(0),
            Int(i32::MIN as i64),
            UInt(0),
            Int(i64::MIN),
            UInt(0),
            Float(-1.5e-30),
            Double(-1.7976931348623157e308),
            bytes("-9999999999999999999999.99999999"),
            Date(1000, 1, 1, 0, 0, 0, 0),
            Time(true, 34, 22, 59, 59, 0),
            Date(1000, 1, 1, 0, 0, 0, 0),
            Date(1970, 1, 2, 0, 0, 0, 0),
            UInt(1901),
            bytes(""),
            bytes(""),
            bytes(""),
            Bytes(vec![]),
            Bytes(vec![0, 0, 0, 0]),
            bytes("red"),
            bytes(""),
            UInt(0),
            bytes("[]"),
        ],
        vec![
            Int(2),
            Int(127),
            UInt(255),
            Int(32767),
            UInt(65535),
            Int(8388607),
            UInt(16777215),
            Int(i32::MAX as i64),
            UInt(u32::MAX as u64),
            Int(i64::MAX),
            UInt(u64::MAX),
            Float(3.25e38),
            Double(2.2250738585072014e-308),
            bytes("9999999999999999999999.99999999"),
            Date(9999, 12, 31, 0, 0, 0, 0),
            Time(false, 34, 22, 59, 59, 999_000),
            Date(9999, 12, 31, 23, 59, 59, 999_999),
            Date(2038, 1, 18, 3, 14, 7, 999_000),
            UInt(2155),
            bytes("ten chars!"),
            bytes("ünïcødé ✓ 漢字 🚀"),
            Bytes("long text ".repeat(5000).into_bytes()),
            Bytes((0..=255u8).collect()),
            Bytes(vec![0xff, 0, 0x7f, 0x80]),
            bytes("blue"),
            bytes("a,b,c"),
            UInt(0xfff),
            bytes(r#"{"k": [1, 2.5, "x", null, true], "nested": {"a": {}}}"#),
        ],
        {
            let mut nulls = vec![Int(3)];
            nulls.resize(28, NULL);
            nulls
        },
        vec![
            Int(4),
            Int(-1),
            UInt(1),
            Int(-2),
            UInt(2),
            Int(-3),
            UInt(3),
            Int(-4),
            UInt(4),
            Int(-5),
            UInt(5),
            Float(0.1),
            Double(std::f64::consts::PI),
            bytes("0.00000001"),
            Date(2024, 2, 29, 0, 0, 0, 0),
            Time(false, 0, 12, 34, 56, 789_000),
            Date(2024, 2, 29, 23, 59, 58, 123_456),
            Date(2024, 2, 29, 12, 0, 0, 500_000),
            UInt(2024),
            bytes("x"),
            bytes("it's \"quoted\" \\ back"),
            bytes("line1\nline2\r\n\ttab\0nul"),
            Bytes(vec![0]),
            Bytes(b"ab\0\0".to_vec()),
            bytes("green"),
            bytes("a,c"),
            UInt(0b1010_0101_0011),
            bytes(r#"{"id": 4}"#),
        ],
    ]
}

fn select_types(conn: &mut mysql::Conn) -> (Vec<SetSummary>, Vec<SetSummary>) {
    let sql = "SELECT * FROM types ORDER BY id";
    let binary = collect_sets(conn.exec_iter(sql, ()).unwrap()).unwrap();
    let text = collect_sets(conn.query_iter(sql).unwrap()).unwrap();
    (binary, text)
}

#[test]
fn prepared_statements_every_column_type() {
    let ep = Endpoint::from_env();
    let db = ep.db;
    let mut conn = ep.conn();
    conn.query_drop("SET time_zone = '+00:00'").unwrap();
    conn.query_drop(TYPES_DDL).unwrap();
    let insert = conn
        .prep(format!(
            "INSERT INTO types VALUES ({})",
            vec!["?"; 28].join(", ")
        ))
        .unwrap();
    assert_eq!(insert.num_params(), 28);
    for row in type_rows() {
        conn.exec_drop(&insert, row).unwrap();
        assert_eq!(conn.affected_rows(), 1);
    }
    conn.close(insert).unwrap();

    let (binary, text) = select_types(&mut conn);
    let mut direct = db.conn(db.port);
    direct.query_drop("SET time_zone = '+00:00'").unwrap();
    let (binary_direct, text_direct) = select_types(&mut direct);
    assert_eq!(
        binary, binary_direct,
        "binary-protocol rows differ from direct"
    );
    assert_eq!(text, text_direct, "text-protocol rows differ from direct");

    // Spot checks on the decoded binary values (so equal-but-wrong answers can't pass).
    let rows = &binary[0].rows;
    assert_eq!(rows.len(), 4);
    let col = |name: &str| {
        binary[0]
            .columns
            .iter()
            .position(|(n, _)| n == name)
            .unwrap()
    };
    assert_eq!(rows[0][col("bi")], Value::Int(i64::MIN));
    assert_eq!(rows[1][col("biu")], Value::UInt(u64::MAX));
    assert_eq!(rows[0][col("tm")], Value::Time(true, 34, 22, 59, 59, 0));
    assert_eq!(
        rows[3][col("dtm")],
        Value::Date(2024, 2, 29, 23, 59, 58, 123_456)
    );
    assert_eq!(rows[1][col("vc")], Value::from("ünïcødé ✓ 漢字 🚀"));
    assert_eq!(rows[1][col("bl")], Value::Bytes((0..=255u8).collect()));
    assert_eq!(rows[3][col("d")], Value::Double(std::f64::consts::PI));
    assert_eq!(rows[3][col("dec1")], Value::from("0.00000001"));
    assert_eq!(rows[3][col("st")], Value::from("a,c"));
    assert_eq!(rows[3][col("bt")], Value::Bytes(vec![0x0a, 0x53]));
    assert!(rows[2][1..].iter().all(|v| *v == Value::NULL));
    assert_eq!(
        text[0].rows[1][col("biu")],
        Value::from(u64::MAX.to_string())
    );

    // Parameters in WHERE, re-executed (statement cache) and re-prepared after a close.
    let by_id = conn.prep("SELECT vc, e FROM types WHERE id = ?").unwrap();
    for (id, want) in [(2, "blue"), (4, "green"), (1, "red")] {
        let got: Option<(Option<String>, String)> = conn.exec_first(&by_id, (id,)).unwrap();
        assert_eq!(got.unwrap().1, want);
    }
    let missing: Option<(String, String)> = conn.exec_first(&by_id, (99,)).unwrap();
    assert!(missing.is_none());
    conn.close(by_id).unwrap();
    let count: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM types WHERE id > ? AND tx IS NOT NULL",
            (1,),
        )
        .unwrap();
    assert_eq!(count, Some(2));

    // A prepare error is an ERR packet and the session survives it.
    let err = server_error(conn.prep("SELECT * FROM types WHERE"));
    assert_eq!(err.code, 1064, "{err}");
    let ok: Option<u8> = conn.exec_first("SELECT ?", (5u8,)).unwrap();
    assert_eq!(ok, Some(5));
    drop((conn, direct));
    ep.finish();
}

#[test]
fn multi_statements_and_procedure_result_sets() {
    let ep = Endpoint::from_env();
    let mut conn = ep.conn();
    conn.query_drop("CREATE TABLE multi (id INT PRIMARY KEY, v INT)")
        .unwrap();
    conn.query_drop("INSERT INTO multi VALUES (1, 10), (2, 20), (3, 30)")
        .unwrap();

    let sets = collect_sets(
        conn.query_iter("SELECT 1; SELECT 2, 3; UPDATE multi SET v = v + 1 WHERE id <= 2")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sets.len(), 3, "{sets:?}");
    assert_eq!(sets[0].rows, vec![vec![Value::from("1")]]);
    assert_eq!(sets[1].rows, vec![vec![Value::from("2"), Value::from("3")]]);
    assert!(sets[2].columns.is_empty());
    assert_eq!(sets[2].affected_rows, 2);
    let v: Vec<u32> = conn.query("SELECT v FROM multi ORDER BY id").unwrap();
    assert_eq!(v, vec![11, 21, 30]);

    // An error in the middle ends the batch; what came before stands; the session survives.
    let mut result = conn
        .query_iter("SELECT 'first'; SELECT * FROM nope; SELECT 'never'")
        .unwrap();
    let first: Vec<String> = result
        .iter()
        .unwrap()
        .map(|r| mysql::from_row(r.unwrap()))
        .collect();
    assert_eq!(first, vec!["first".to_string()]);
    let mut failure = None;
    let mut later_rows = 0;
    while let Some(set) = result.iter() {
        for row in set {
            match row {
                Ok(_) => later_rows += 1,
                Err(e) => failure = Some(e),
            }
        }
    }
    drop(result);
    assert_eq!(later_rows, 0, "statements after the failing one ran");
    match failure {
        Some(mysql::Error::MySqlError(e)) => assert_eq!(e.code, 1146, "{e}"),
        other => panic!("expected ERR 1146 for the second statement, got {other:?}"),
    }
    let alive: Option<String> = conn.query_first("SELECT 'alive'").unwrap();
    assert_eq!(alive.as_deref(), Some("alive"));

    conn.query_drop(
        "CREATE PROCEDURE three_sets(IN lim INT)
         BEGIN
           SELECT COUNT(*) AS n FROM multi;
           SELECT id, v FROM multi WHERE id <= lim ORDER BY id;
           SELECT 'x' AS a, NULL AS b, 2.5 AS c;
         END",
    )
    .unwrap();
    for round in 0..3 {
        let sets = collect_sets(conn.query_iter("CALL three_sets(2)").unwrap()).unwrap();
        // Three resultsets, then the procedure's own OK.
        assert_eq!(sets.len(), 4, "round {round}: {sets:?}");
        assert_eq!(sets[0].rows, vec![vec![Value::from("3")]]);
        assert_eq!(
            sets[1].rows,
            vec![
                vec![Value::from("1"), Value::from("11")],
                vec![Value::from("2"), Value::from("21")]
            ]
        );
        assert_eq!(
            sets[2]
                .columns
                .iter()
                .map(|c| c.0.as_str())
                .collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
        assert_eq!(
            sets[2].rows,
            vec![vec![Value::from("x"), Value::NULL, Value::from("2.5")]]
        );
        assert!(sets[3].columns.is_empty());
    }
    // The same CALL as a prepared statement (binary resultsets, PS_MULTI_RESULTS).
    let sets = collect_sets(conn.exec_iter("CALL three_sets(?)", (3,)).unwrap()).unwrap();
    assert_eq!(sets.len(), 4, "{sets:?}");
    assert_eq!(sets[0].rows, vec![vec![Value::Int(3)]]);
    assert_eq!(sets[1].rows.len(), 3);
    assert_eq!(sets[1].rows[2], vec![Value::Int(3), Value::Int(30)]);
    drop(conn);
    ep.finish();
}

#[test]
fn transactions_commit_and_rollback() {
    let ep = Endpoint::from_env();
    let mut a = ep.conn();
    let mut b = ep.conn();
    a.query_drop("CREATE TABLE tx (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB")
        .unwrap();
    let count =
        |c: &mut mysql::Conn| -> u64 { c.query_first("SELECT COUNT(*) FROM tx").unwrap().unwrap() };

    a.query_drop("BEGIN").unwrap();
    a.query_drop("INSERT INTO tx VALUES (1, 'rolled')").unwrap();
    assert_eq!(count(&mut a), 1, "own uncommitted row invisible");
    assert_eq!(
        count(&mut b),
        0,
        "uncommitted row leaked to another session"
    );
    a.query_drop("ROLLBACK").unwrap();
    assert_eq!(count(&mut a), 0);
    assert_eq!(count(&mut b), 0);

    a.query_drop("BEGIN").unwrap();
    a.query_drop("INSERT INTO tx VALUES (2, 'kept'), (3, 'kept')")
        .unwrap();
    let in_tx: Option<u8> = a.query_first("SELECT @@in_transaction").unwrap();
    assert_eq!(in_tx, Some(1));
    assert_eq!(count(&mut b), 0, "visible before COMMIT");
    a.query_drop("COMMIT").unwrap();
    let in_tx: Option<u8> = a.query_first("SELECT @@in_transaction").unwrap();
    assert_eq!(in_tx, Some(0));
    assert_eq!(count(&mut b), 2, "not visible after COMMIT");

    // The mysql crate's transaction API (START TRANSACTION ... COMMIT/ROLLBACK).
    {
        let mut t = a.start_transaction(mysql::TxOpts::default()).unwrap();
        t.exec_drop("INSERT INTO tx VALUES (?, ?)", (4, "api"))
            .unwrap();
        t.rollback().unwrap();
    }
    {
        let mut t = a.start_transaction(mysql::TxOpts::default()).unwrap();
        t.exec_drop("UPDATE tx SET v = ? WHERE id = 2", ("changed",))
            .unwrap();
        t.commit().unwrap();
    }
    let rows: Vec<(u32, String)> = b.query("SELECT id, v FROM tx ORDER BY id").unwrap();
    assert_eq!(rows, vec![(2, "changed".into()), (3, "kept".into())]);
    drop((a, b));
    ep.finish();
}

#[test]
fn init_db_and_use() {
    let ep = Endpoint::from_env();
    let mut conn = ep.conn();
    conn.query_drop("CREATE DATABASE IF NOT EXISTS rp_initdb")
        .unwrap();
    conn.query_drop("CREATE TABLE rp_initdb.marker (x INT)")
        .unwrap();
    let current = |c: &mut mysql::Conn| -> Option<String> {
        c.query_first::<Option<String>, _>("SELECT DATABASE()")
            .unwrap()
            .unwrap()
    };
    assert_eq!(current(&mut conn).as_deref(), Some("rp"));

    conn.select_db("rp_initdb").unwrap(); // COM_INIT_DB
    assert_eq!(current(&mut conn).as_deref(), Some("rp_initdb"));
    let tables: Vec<String> = conn.query("SHOW TABLES").unwrap();
    assert_eq!(tables, vec!["marker".to_string()]);

    conn.query_drop("USE rp").unwrap();
    assert_eq!(current(&mut conn).as_deref(), Some("rp"));

    let err = server_error(conn.select_db("rp_no_such_db"));
    assert_eq!(err.code, 1049, "{err}");
    assert_eq!(current(&mut conn).as_deref(), Some("rp"));
    drop(conn);
    ep.finish();
}

#[test]
fn ping() {
    let ep = Endpoint::from_env();
    let mut conn = ep.conn();
    for _ in 0..50 {
        conn.ping().unwrap(); // COM_PING
    }
    let v: Option<u8> = conn.query_first("SELECT 42").unwrap();
    assert_eq!(v, Some(42));
    conn.ping().unwrap();
    drop(conn);
    ep.finish();
}

#[test]
fn change_user() {
    let ep = Endpoint::from_env();
    let mut conn = ep.conn();
    let whoami = |c: &mut mysql::Conn| -> String {
        c.query_first("SELECT CURRENT_USER()").unwrap().unwrap()
    };
    assert_eq!(whoami(&mut conn), format!("{NATIVE_USER}@%"));
    conn.query_drop("SET @before_change = 'set'").unwrap();

    conn.change_user(
        ChangeUserOpts::default()
            .with_user(Some(OTHER_USER.into()))
            .with_pass(Some(OTHER_PASS.into())),
    )
    .unwrap();
    assert_eq!(whoami(&mut conn), format!("{OTHER_USER}@%"));
    let var: Option<Option<String>> = conn.query_first("SELECT @before_change").unwrap();
    assert_eq!(var, Some(None), "COM_CHANGE_USER must clear the session");
    let db: Option<Option<String>> = conn.query_first("SELECT DATABASE()").unwrap();
    assert_eq!(db, Some(Some(DB.to_string())));

    // And back again, then prepared statements still work on the new session.
    conn.change_user(
        ChangeUserOpts::default()
            .with_user(Some(NATIVE_USER.into()))
            .with_pass(Some(NATIVE_PASS.into())),
    )
    .unwrap();
    assert_eq!(whoami(&mut conn), format!("{NATIVE_USER}@%"));
    let v: Option<u32> = conn.exec_first("SELECT ? + 1", (41,)).unwrap();
    assert_eq!(v, Some(42));

    // A wrong password is refused with the server's own error.
    let err = server_error(
        conn.change_user(
            ChangeUserOpts::default()
                .with_user(Some(OTHER_USER.into()))
                .with_pass(Some("wrong".into())),
        ),
    );
    assert_eq!(err.code, 1045, "{err}");
    drop(conn);
    ep.finish();
}

#[test]
fn reset_connection() {
    let ep = Endpoint::from_env();
    let db = ep.db;
    let mut admin = db.conn(db.port);
    let mut conn = ep.conn();
    let backend_id: u32 = conn.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();

    conn.query_drop("SET @kept = 42, @@session.sql_mode = 'ANSI_QUOTES'")
        .unwrap();
    conn.query_drop("CREATE TEMPORARY TABLE tmp_reset (x INT)")
        .unwrap();
    let v: Option<u32> = conn.query_first("SELECT @kept").unwrap();
    assert_eq!(v, Some(42));

    // Record the session's commands so the test can tell COM_RESET_CONNECTION from the mysql
    // crate's silent COM_CHANGE_USER fallback: MariaDB's general log shows "Change user" for the
    // latter and nothing for the former; the two marker queries prove the log was recording.
    admin
        .query_drop("SET GLOBAL log_output = 'TABLE', GLOBAL general_log = 1")
        .unwrap();
    conn.query_drop("DO 'before reset'").unwrap();
    let reset = conn.reset();
    conn.query_drop("DO 'after reset'").unwrap();
    admin.query_drop("SET GLOBAL general_log = 0").unwrap();
    reset.unwrap();
    let logged: Vec<(String, String)> = admin
        .exec(
            "SELECT command_type, CAST(argument AS CHAR) FROM mysql.general_log
             WHERE thread_id = ? ORDER BY event_time",
            (backend_id,),
        )
        .unwrap();
    assert_eq!(
        logged,
        vec![
            ("Query".to_string(), "DO 'before reset'".to_string()),
            ("Query".to_string(), "DO 'after reset'".to_string()),
        ],
        "server session {backend_id} saw something other than COM_RESET_CONNECTION"
    );

    let v: Option<Option<u32>> = conn.query_first("SELECT @kept").unwrap();
    assert_eq!(v, Some(None), "user variable survived COM_RESET_CONNECTION");
    let mode: Option<String> = conn.query_first("SELECT @@session.sql_mode").unwrap();
    assert_ne!(mode.as_deref(), Some("ANSI_QUOTES"));
    let err = server_error(conn.query_drop("SELECT * FROM tmp_reset"));
    assert_eq!(err.code, 1146, "temporary table survived reset: {err}");
    let same_id: u32 = conn.query_first("SELECT CONNECTION_ID()").unwrap().unwrap();
    assert_eq!(
        same_id, backend_id,
        "reset must keep the same server session"
    );
    drop((conn, admin));
    ep.finish();
}

#[test]
fn load_data_local_infile() {
    const ROWS: u64 = 100_000;
    let ep = Endpoint::from_env();
    let mut conn = ep.conn();
    conn.query_drop(
        "CREATE TABLE loaded (id INT UNSIGNED PRIMARY KEY, v BIGINT NOT NULL, name VARCHAR(40))",
    )
    .unwrap();

    let requested: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&requested);
    conn.set_local_infile_handler(Some(LocalInfileHandler::new(move |name, stream| {
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(name).into_owned());
        for i in 1..=ROWS {
            writeln!(stream, "{i}\t{}\tname-{i:06}", i * 3)?;
        }
        Ok(())
    })));
    conn.query_drop(
        "LOAD DATA LOCAL INFILE 'generated-in-memory.tsv' INTO TABLE loaded
         FIELDS TERMINATED BY '\\t' LINES TERMINATED BY '\\n' (id, v, name)",
    )
    .unwrap();
    assert_eq!(conn.affected_rows(), ROWS);
    assert_eq!(
        *requested.lock().unwrap(),
        vec!["generated-in-memory.tsv".to_string()]
    );

    let (count, sum, last): (u64, u64, String) = conn
        .query_first("SELECT COUNT(*), SUM(v), MAX(name) FROM loaded")
        .unwrap()
        .unwrap();
    assert_eq!(count, ROWS);
    assert_eq!(sum, 3 * ROWS * (ROWS + 1) / 2);
    assert_eq!(last, format!("name-{ROWS:06}"));

    // The session is in a clean state afterwards.
    let v: Option<u8> = conn.query_first("SELECT 1").unwrap();
    assert_eq!(v, Some(1));
    drop(conn);
    ep.finish();
}

#[test]
fn wrong_password_gets_server_error() {
    let ep = Endpoint::from_env();
    let err = server_error(mysql::Conn::new(ep.opts(NATIVE_USER, "not-the-password")));
    assert_eq!(err.code, 1045, "{err}");
    assert_eq!(err.state, "28000", "{err}");
    assert!(
        err.message
            .contains(&format!("Access denied for user '{NATIVE_USER}'")),
        "{err}"
    );
    let err = server_error(mysql::Conn::new(ep.opts("rp_nobody", "x")));
    assert_eq!(err.code, 1045, "{err}");

    // The CLI sees the same refusal.
    let out = mariadb_cli(ep.port, NATIVE_USER, "bad", &["-e", "SELECT 1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR 1045"), "{stderr}");

    // A refused login doesn't hurt the next one.
    let mut conn = ep.conn();
    let v: Option<u8> = conn.query_first("SELECT 3").unwrap();
    assert_eq!(v, Some(3));
    drop(conn);
    ep.finish();
}

#[test]
fn mariadb_cli_through_proxy() {
    let ep = Endpoint::from_env();
    let out = mariadb_cli(
        ep.port,
        NATIVE_USER,
        NATIVE_PASS,
        &[
            "--batch",
            "-e",
            "SELECT 1 + 2 AS three, 'x y' AS txt, NULL AS n",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "three\ttxt\tn\n3\tx y\tNULL\n"
    );

    let script = "CREATE TABLE cli (id INT, s VARCHAR(10)); \
                  INSERT INTO cli VALUES (1, 'one'), (2, 'two'); \
                  SELECT s FROM cli ORDER BY id DESC; \
                  SELECT CURRENT_USER(), DATABASE()";
    let out = mariadb_cli(
        ep.port,
        NATIVE_USER,
        NATIVE_PASS,
        &["--batch", "--skip-column-names", "-e", script],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("two\none\n{NATIVE_USER}@%\trp\n")
    );

    // A server error through the CLI: exit status 1 and the server's message.
    let out = mariadb_cli(
        ep.port,
        NATIVE_USER,
        NATIVE_PASS,
        &["-e", "SELECT * FROM nope"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR 1146"), "{stderr}");
    ep.finish();
}

#[test]
fn ed25519_user_with_cli() {
    let ep = Endpoint::from_env();
    assert!(
        ep.db.has_ed25519,
        "INSTALL SONAME 'auth_ed25519' failed: Debian's mariadb-server ships it; see {}",
        ep.db.error_log.display()
    );
    let out = mariadb_cli(
        ep.port,
        ED_USER,
        ED_PASS,
        &[
            "--batch",
            "--skip-column-names",
            "-e",
            "select current_user()",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{ED_USER}@%\n")
    );

    let out = mariadb_cli(ep.port, ED_USER, "wrong", &["-e", "select 1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR 1045"), "{stderr}");
    ep.finish();
}
