"""PyMySQL through a pooled listener (tests/pooled_clients.rs).

usage:
  pooled_pymysql.py state PORT USER PASSWORD DB CAP
      Session state across queries while several sessions share at most CAP backend
      connections: user variables, SET NAMES, USE / COM_INIT_DB, transactions (commit and
      rollback, BEGIN and autocommit=0), LAST_INSERT_ID, executemany INSERT, 100,000-row results
      (buffered and unbuffered), LOAD DATA LOCAL INFILE. USER must be allowed to read the
      processlist (the script counts USER's backend connections).
  pooled_pymysql.py sha2 PORT USER PASSWORD DB
      USER's configured password is a caching_sha2_password hash: the first login must go
      through full authentication (the RSA public key exchange), the second through the fast
      path, both then run queries; a wrong password gets 1045.

Prints `ok <check>` per check passed; any failed check raises (traceback on stderr, exit 1).
"""
import hashlib
import os
import sys
import tempfile
import time
from decimal import Decimal

import pymysql
import pymysql.cursors
from pymysql import _auth

HOST = "127.0.0.1"


def connect(port, user, password, db, **kw):
    kw.setdefault("autocommit", True)
    return pymysql.connect(host=HOST, port=port, user=user, password=password, database=db,
                           connect_timeout=10, read_timeout=60, write_timeout=60, **kw)


def one(conn, sql, args=None):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def run(conn, sql, args=None):
    with conn.cursor() as cur:
        return cur.execute(sql, args)


def check(name, got, want):
    if got != want:
        raise AssertionError(f"{name}: got {got!r}, want {want!r}")
    print("ok", name, flush=True)


def expect_error(name, code, fn):
    try:
        fn()
    except pymysql.err.MySQLError as e:
        got = e.args[0] if e.args else None
        if got != code:
            raise AssertionError(f"{name}: error {e!r}, want error {code}") from e
        print("ok", name, flush=True)
        return e
    raise AssertionError(f"{name}: no error, want error {code}")


# ---------------------------------------------------------------------------------------------
# state


def backend_conns(conn, user):
    """USER's connections as the backend sees them (the proxy's pooled connections)."""
    return one(conn, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = %s",
               (user,))[0]


def state(port, user, password, db, cap):
    sessions = [connect(port, user, password, db) for _ in range(4)]
    s0, s1, s2, s3 = sessions

    def every(fn):
        # Round-robin twice, so that each session runs after the others touched the
        # connections.
        for _ in range(2):
            for i, s in enumerate(sessions):
                fn(i, s)

    for s in sessions:
        check("select 1", one(s, "SELECT 1"), (1,))
    n = backend_conns(s0, user)
    if not 1 <= n <= cap:
        raise AssertionError(f"4 sessions hold {n} backend connections, cap {cap}")
    print("ok backend connections within the cap", flush=True)

    # User variables: each session its own, one session none; assigned by SET, by SET from an
    # expression, and inside a SELECT.
    for i, s in enumerate(sessions[:3]):
        run(s, "SET @a = %s, @b = %s", (i * 10 + 1, f"str{i}"))
        run(s, "SET @c = @a * 2")
        check(f"select assigns @d ({i})", one(s, "SELECT @d := 100 + %s", (i,)), (100 + i,))

    def vars_ok(i, s):
        want = (i * 10 + 1, f"str{i}", (i * 10 + 1) * 2, 100 + i) if i < 3 else (None,) * 4
        check(f"user variables of session {i}", one(s, "SELECT @a, @b, @c, @d"), want)

    every(vars_ok)

    # SET NAMES (set_character_set: PyMySQL then encodes in latin1 too).
    s0.set_character_set("latin1")
    latin1 = ("latin1", "latin1", "latin1")
    utf8 = ("utf8mb4", "utf8mb4", "utf8mb4")
    cs = "SELECT @@character_set_client, @@character_set_connection, @@character_set_results"

    def names_ok(i, s):
        check(f"character sets of session {i}", one(s, cs), latin1 if i == 0 else utf8)
        # 'é' is E9 from the latin1 session, C3 A9 from the others; either way the server
        # must read it in the session's character set.
        check(f"HEX('é') of session {i}", one(s, "SELECT HEX('é')"),
              ("E9",) if i == 0 else ("C3A9",))
        check(f"'é' converted by session {i}",
              one(s, "SELECT HEX(CONVERT('é' USING utf8mb4)), 'é'"), ("C3A9", "é"))

    every(names_ok)

    # USE and COM_INIT_DB.
    s2.select_db("app")
    run(s3, "USE app")

    def db_ok(i, s):
        check(f"schema of session {i}", one(s, "SELECT DATABASE()"),
              ("app",) if i >= 2 else (db,))

    every(db_ok)
    run(s3, f"USE `{db}`")
    s2.select_db(db)
    every(lambda i, s: check(f"schema back ({i})", one(s, "SELECT DATABASE()"), (db,)))

    # Transactions.
    run(s0, "DROP TABLE IF EXISTS pooled_tx")
    run(s0, "CREATE TABLE pooled_tx (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
    count = "SELECT COUNT(*) FROM pooled_tx"
    run(s0, "BEGIN")
    run(s0, "INSERT INTO pooled_tx VALUES (1, 1)")
    check("own uncommitted row", one(s0, count), (1,))
    check("another session does not see it", one(s1, count), (0,))
    every(lambda i, s: one(s, "SELECT 1"))  # the others keep working meanwhile
    run(s0, "ROLLBACK")
    check("rolled back (own view)", one(s0, count), (0,))
    check("rolled back (other view)", one(s1, count), (0,))
    s0.begin()
    run(s0, "INSERT INTO pooled_tx VALUES (2, 2)")
    run(s0, "INSERT INTO pooled_tx VALUES (3, 3)")
    check("uncommitted, other view", one(s2, count), (0,))
    s0.commit()
    check("committed, other view", one(s2, count), (2,))
    run(s1, "START TRANSACTION")
    run(s1, "UPDATE pooled_tx SET v = 20 WHERE id = 2")
    s1.rollback()
    check("rollback() undoes the update", one(s3, "SELECT v FROM pooled_tx WHERE id = 2"), (2,))
    # autocommit=0 (PyMySQL's default): every statement is in a transaction.
    ac = connect(port, user, password, db, autocommit=False)
    check("autocommit off", one(ac, "SELECT @@autocommit"), (0,))
    run(ac, "INSERT INTO pooled_tx VALUES (4, 4)")
    check("autocommit=0 insert not visible", one(s1, count), (2,))
    ac.rollback()
    check("autocommit=0 rollback", one(ac, count), (2,))
    run(ac, "INSERT INTO pooled_tx VALUES (5, 5)")
    ac.commit()
    check("autocommit=0 commit visible", one(s1, count), (3,))
    ac.close()
    check("autocommit of the others untouched", one(s1, "SELECT @@autocommit"), (1,))

    # LAST_INSERT_ID after other sessions inserted.
    run(s0, "DROP TABLE IF EXISTS pooled_ai")
    run(s0, "CREATE TABLE pooled_ai (id INT AUTO_INCREMENT PRIMARY KEY, who INT)")
    ids = {}
    for i, s in enumerate(sessions):
        with s.cursor() as cur:
            cur.execute("INSERT INTO pooled_ai (who) VALUES (%s)", (i,))
            ids[i] = cur.lastrowid
    check("distinct insert ids", len(set(ids.values())), 4)
    every(lambda i, s: check(f"LAST_INSERT_ID of session {i}",
                             one(s, "SELECT LAST_INSERT_ID()"), (ids[i],)))

    # executemany: PyMySQL folds an INSERT into multi-row statements (max_stmt_length 1 MB:
    # these rows make several); an UPDATE runs once per row.
    run(s1, "DROP TABLE IF EXISTS pooled_many")
    run(s1, "CREATE TABLE pooled_many (id INT PRIMARY KEY, name VARCHAR(50), amount DOUBLE, "
            "note BLOB)")
    rows = [(i, f"name-{i}-ü", i * 1.5, bytes([i % 256]) * (i % 700)) for i in range(3000)]
    with s1.cursor() as cur:
        check("executemany insert rowcount",
              cur.executemany("INSERT INTO pooled_many VALUES (%s, %s, %s, %s)", rows), 3000)
    names = ",".join(r[1] for r in rows)
    # A system variable the sums below need (about 1 MB of notes), set in two sessions.
    for s in (s2, s3):
        run(s, "SET SESSION group_concat_max_len = 64 * 1024 * 1024")
    want = (3000, sum(r[0] for r in rows), sum(r[2] for r in rows),
            sum(len(r[3]) for r in rows), hashlib.md5(names.encode()).hexdigest(),
            hashlib.md5(b"".join(r[3] for r in rows)).hexdigest())
    got = one(s2, "SELECT COUNT(*), SUM(id), SUM(amount), SUM(LENGTH(note)), "
                  "MD5(GROUP_CONCAT(name ORDER BY id SEPARATOR ',')), "
                  "MD5(GROUP_CONCAT(note ORDER BY id SEPARATOR '')) FROM pooled_many")
    got = (got[0], int(got[1]), float(got[2]), int(got[3]), got[4], got[5])
    check("executemany rows read back", got, want)
    with s3.cursor() as cur:
        check("executemany update rowcount",
              cur.executemany("UPDATE pooled_many SET amount = amount + 1 WHERE id = %s",
                              [(i,) for i in range(0, 3000, 60)]), 50)

    # 100,000 rows, buffered, while the others keep running; then unbuffered (SSCursor).
    big = "SELECT seq, CONCAT('row-', seq), seq * 3 FROM seq_1_to_100000"
    with s0.cursor() as cur:
        check("100k rowcount", cur.execute(big), 100000)
        rows = cur.fetchall()
    bad = [r for i, r in enumerate(rows, 1) if r != (i, f"row-{i}", i * 3)]
    check("100k rows (buffered)", (len(rows), bad[:3]), (100000, []))
    with s1.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute(big)
        n, bad = 0, []
        for r in cur:
            n += 1
            if r != (n, f"row-{n}", n * 3) and len(bad) < 3:
                bad.append(r)
            if n == 50000:
                # Another session, mid-stream.
                check("other session during a stream", one(s2, "SELECT 2"), (2,))
    check("100k rows (unbuffered)", (n, bad), (100000, []))
    check("session after the stream", one(s1, "SELECT @a, DATABASE()"), (11, db))
    every(vars_ok)

    # LOAD DATA LOCAL INFILE (CLIENT_LOCAL_FILES makes other backend connections: the pool
    # must make room under its cap).
    loader = connect(port, user, password, db, local_infile=True)
    run(loader, "DROP TABLE IF EXISTS pooled_load")
    run(loader, "CREATE TABLE pooled_load (id INT PRIMARY KEY, name VARCHAR(50), "
                "amount DECIMAL(12,2))")
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".tsv", delete=False) as f:
        for i in range(20000):
            f.write(f"{i}\tload-{i}-ß\t{i}.25\n")
        path = f.name
    try:
        with loader.cursor() as cur:
            check("load data affected rows",
                  cur.execute("LOAD DATA LOCAL INFILE %s INTO TABLE pooled_load "
                              "CHARACTER SET utf8mb4 (id, name, amount)", (path,)), 20000)
    finally:
        os.unlink(path)
    names = ",".join(f"load-{i}-ß" for i in range(20000))
    got = one(s3, "SELECT COUNT(*), SUM(id), SUM(amount), "
                  "MD5(GROUP_CONCAT(name ORDER BY id SEPARATOR ',')) FROM pooled_load")
    check("load data rows read back", (got[0], int(got[1]), got[2], got[3]),
          (20000, sum(range(20000)), Decimal(sum(range(20000))) + Decimal("0.25") * 20000,
           hashlib.md5(names.encode()).hexdigest()))
    check("loader session goes on", one(loader, "SELECT COUNT(*) FROM pooled_load"), (20000,))
    n = backend_conns(loader, user)
    if not 1 <= n <= cap:
        raise AssertionError(f"{n} backend connections after LOAD DATA, cap {cap}")
    print("ok backend connections within the cap after LOAD DATA", flush=True)
    loader.close()
    every(vars_ok)
    every(lambda i, s: check(f"group_concat_max_len of session {i}",
                             one(s, "SELECT @@group_concat_max_len"),
                             (64 * 1024 * 1024 if i in (2, 3) else 1024 * 1024,)))
    every(names_ok)
    for s in sessions:
        s.close()
    print("state done", flush=True)


# ---------------------------------------------------------------------------------------------
# sha2


def sha2(port, user, password, db):
    if not _auth._have_cryptography:
        raise AssertionError("PyMySQL has no `cryptography`: full authentication cannot work")
    seen = {"switch": 0, "rsa": 0}
    switch, rsa = _auth.caching_sha2_password_auth, _auth.sha2_rsa_encrypt

    def counting_switch(conn, pkt):
        seen["switch"] += 1
        return switch(conn, pkt)

    def counting_rsa(*args):
        seen["rsa"] += 1
        return rsa(*args)

    _auth.caching_sha2_password_auth = counting_switch
    _auth.sha2_rsa_encrypt = counting_rsa

    def use(conn, tag):
        check(f"current user ({tag})", one(conn, "SELECT CURRENT_USER()"), (f"{user}@%",))
        check(f"query ({tag})", one(conn, "SELECT SUM(seq) FROM seq_1_to_1000"), (500500,))
        run(conn, "SET @x = %s", (tag,))
        check(f"state ({tag})", one(conn, "SELECT @x, DATABASE()"), (tag, db))

    first = connect(port, user, password, db)
    check("first login: switched to caching_sha2_password, full authentication over RSA",
          (seen["switch"], seen["rsa"]), (1, 1))
    use(first, "first")
    second = connect(port, user, password, db)
    check("second login: caching_sha2_password fast path (no RSA)",
          (seen["switch"], seen["rsa"]), (2, 1))
    use(second, "second")
    check("first session still there", one(first, "SELECT @x"), ("first",))
    first.close()
    second.close()
    e = expect_error("wrong password gets 1045", 1045,
                     lambda: connect(port, user, password + "-wrong", db))
    print("wrong password message:", e.args[1] if len(e.args) > 1 else e, flush=True)
    # After the failure (answered after auth_failure_delay_ms), the right password still works.
    started = time.monotonic()
    third = connect(port, user, password, db)
    use(third, "third")
    third.close()
    print(f"login after the failure took {time.monotonic() - started:.2f} s", flush=True)
    print("sha2 done", flush=True)


def main():
    mode = sys.argv[1]
    port, user, password, db = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    if mode == "state":
        state(port, user, password, db, int(sys.argv[6]))
    elif mode == "sha2":
        sha2(port, user, password, db)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
