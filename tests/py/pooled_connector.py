"""mysql-connector-python through a pooled listener (tests/pooled_clients.rs).

usage: pooled_connector.py MODE PORT USER PASSWORD DB OTHER_USER OTHER_PASSWORD
MODE:
  prepared     the binary protocol: one statement executed many times with parameters of changing
               types (int, str, None, float, bytes), from several sessions at once; typed rows
               inserted and read back through prepared statements
  compress     compress=True sessions: many queries (small results), long statements the
               client compresses, user variables, a prepared statement
  reset        cmd_reset_connection() and reset_session(): variables, temporary tables, an open
               transaction and prepared statements are gone afterwards
  change_user  cmd_change_user() to OTHER_USER and back; a wrong password gets 1045

Each mode runs with the pure-Python implementation (use_pure=True) and, when the C extension
loads, with it too. Prints one line per check (the same direct and through the proxy: the caller
compares); a failed check raises (traceback on stderr, exit 1).
"""
import hashlib
import sys

import mysql.connector
from mysql.connector import errors

HOST = "127.0.0.1"


def short(v):
    text = repr(v)
    return text if len(text) <= 300 else text[:300] + f"... ({len(text)} characters)"


def check(name, got, want):
    if got != want:
        raise AssertionError(f"{name}: got {short(got)}, want {short(want)}")
    print("ok", name, flush=True)


def norm(v):
    """Values as compared: bytearray as bytes."""
    if isinstance(v, bytearray):
        return bytes(v)
    if isinstance(v, (tuple, list)):
        return tuple(norm(x) for x in v)
    return v


def error_code(fn):
    try:
        fn()
    except errors.Error as e:
        return e.errno
    return None


class Cfg:
    def __init__(self, argv):
        self.port, self.user, self.password, self.db = int(argv[2]), argv[3], argv[4], argv[5]
        self.other_user, self.other_password = argv[6], argv[7]

    def connect(self, use_pure, user=None, password=None, **kw):
        return mysql.connector.connect(host=HOST, port=self.port, user=user or self.user,
                                       password=self.password if password is None else password,
                                       database=self.db, use_pure=use_pure, ssl_disabled=True,
                                       connection_timeout=10, autocommit=True, **kw)


def run(conn, sql, args=None):
    cur = conn.cursor()
    cur.execute(sql, args)
    cur.close()


def one(conn, sql, args=None):
    cur = conn.cursor()
    cur.execute(sql, args)
    row = cur.fetchone()
    cur.fetchall()
    cur.close()
    return norm(row)


# ---------------------------------------------------------------------------------------------


def prepared(cfg, pure, tag):
    sessions = [cfg.connect(pure) for _ in range(3)]
    curs = [s.cursor(prepared=True) for s in sessions]
    pool = [7, -(2 ** 63), 2 ** 63 - 1, 0, "text", "ünïcødé ☃", "", None, 1.5, -2.25e300,
            b"\x00\xff\x01bytes", b""]
    sql = "SELECT %s, %s, %s"
    for n in range(300):
        cur = curs[n % 3]
        params = tuple(pool[(n * 5 + k * 7) % len(pool)] for k in range(3))
        cur.execute(sql, params)
        got = norm(cur.fetchall())
        # An empty BLOB parameter comes back as '' (the connector decodes it), direct too.
        want = tuple("" if p == b"" and g == "" else p for p, g in zip(params, got[0]))
        if got != (want,):
            raise AssertionError(f"{tag} execution {n} of {sql} with {params!r}: got {got!r}")
    print("ok", tag, "one statement, 300 executions with parameter types changing", flush=True)

    s0 = sessions[0]
    c = s0.cursor()
    c.execute("DROP TABLE IF EXISTS pooled_ps")
    c.execute("CREATE TABLE pooled_ps (id INT PRIMARY KEY, i BIGINT, s VARCHAR(100), "
              "f DOUBLE, b VARBINARY(100))")
    rows = []
    for n in range(400):
        rows.append((n,
                     None if n % 11 == 0 else n * 1000003 - 2 ** 40,
                     None if n % 13 == 0 else f"s{n}-é",
                     None if n % 17 == 0 else n / 8.0,
                     None if n % 19 == 0 else bytes([n % 256, 0, 255 - n % 256])))
    for n, r in enumerate(rows):
        curs[n % 3].execute("INSERT INTO pooled_ps VALUES (%s, %s, %s, %s, %s)", r)
    print("ok", tag, "400 prepared inserts", flush=True)
    for n, r in enumerate(rows):
        cur = curs[(n + 1) % 3]
        cur.execute("SELECT id, i, s, f, b FROM pooled_ps WHERE id = %s", (r[0],))
        got = norm(cur.fetchall())
        if got != (r,):
            raise AssertionError(f"{tag} row {n}: got {got!r}, want {r!r}")
    print("ok", tag, "400 rows read back through a prepared SELECT", flush=True)
    c.execute("SELECT COUNT(*), SUM(i), COUNT(s), SUM(f), COUNT(b) FROM pooled_ps")
    print(tag, "table summary", norm(c.fetchone()), flush=True)
    # Two statements alive on one session, executed alternately.
    a, b = s0.cursor(prepared=True), s0.cursor(prepared=True)
    for n in range(50):
        a.execute("SELECT %s * 2", (n,))
        got_a = a.fetchall()
        b.execute("SELECT CONCAT('b', %s)", (str(n),))
        check(f"{tag} two statements, round {n}", (got_a, b.fetchall()),
              ([(n * 2,)], [(f"b{n}",)]))
    # A larger binary resultset (about 60 KB).
    cur = curs[1]
    cur.execute("SELECT seq, CONCAT('v', seq), seq / 3 FROM seq_1_to_9000 WHERE seq % %s = 0",
                (2,))
    h = hashlib.sha1(repr(norm(cur.fetchall())).encode()).hexdigest()
    print(tag, "binary rows", h, flush=True)
    c.execute("DROP TABLE pooled_ps")
    for s in sessions:
        s.close()


def compress(cfg, pure, tag):
    sessions = [cfg.connect(pure, compress=True) for _ in range(3)]
    if pure:
        broker = type(sessions[0]._socket._netbroker).__name__
        check(f"{tag} compressed protocol in use", broker, "NetworkBrokerCompressed")
    for j, s in enumerate(sessions):
        run(s, "SET @who = %s", (j,))
    for n in range(200):
        for j, s in enumerate(sessions):
            got = one(s, "SELECT %s, %s, REPEAT('z', %s), @who", (n, "x" * (n % 200), n % 300))
            if got != (n, "x" * (n % 200), "z" * (n % 300), j):
                raise AssertionError(f"{tag} query {n} on session {j}: {got!r}")
    print("ok", tag, "600 queries on 3 compressed sessions", flush=True)
    long_text = "".join(chr(97 + (k * 7) % 26) for k in range(5000))
    for j, s in enumerate(sessions):
        # A statement of 5 KB: compressed by the client.
        check(f"{tag} long statement {j}", one(s, f"SELECT MD5('{long_text}'), @who"),
              (hashlib.md5(long_text.encode()).hexdigest(), j))
    cur = sessions[0].cursor()
    cur.execute("SELECT seq, REPEAT(CHAR(65 + seq % 26 USING utf8mb4), seq % 20) "
                "FROM seq_1_to_500")
    rows = cur.fetchall()
    check(f"{tag} 500 small rows", rows,
          [(k, chr(65 + k % 26) * (k % 20)) for k in range(1, 501)])
    pcur = sessions[1].cursor(prepared=True)
    for n in range(200):
        pcur.execute("SELECT %s + 1, %s, @who", (n, f"p{n}"))
        got = norm(pcur.fetchall())
        if got != ((n + 1, f"p{n}", 1),):
            raise AssertionError(f"{tag} prepared execution {n}: {got!r}")
    print("ok", tag, "prepared statement executed 200 times, compressed", flush=True)
    for s in sessions:
        s.close()


def reset(cfg, pure, tag):
    conn = cfg.connect(pure)
    other = cfg.connect(pure)
    c = conn.cursor()
    c.execute("DROP TABLE IF EXISTS pooled_reset")
    c.execute("CREATE TABLE pooled_reset (id INT PRIMARY KEY) ENGINE=InnoDB")
    c.execute("SET @a = 5")
    c.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
    c.execute("CREATE TEMPORARY TABLE pooled_tmp (x INT)")
    c.execute("BEGIN")
    c.execute("INSERT INTO pooled_reset VALUES (1)")
    p = conn.cursor(prepared=True)
    p.execute("SELECT %s + 40", (2,))
    check(f"{tag} prepared before the reset", p.fetchall(), [(42,)])
    check(f"{tag} state before the reset", one(conn, "SELECT @a, @@sql_mode"), (5, "ANSI_QUOTES"))
    check(f"{tag} cmd_reset_connection()", conn.cmd_reset_connection(), True)
    default_mode = one(other, "SELECT @@sql_mode")[0]
    check(f"{tag} after the reset: variables", one(conn, "SELECT @a, @@sql_mode"),
          (None, default_mode))
    check(f"{tag} after the reset: no temporary table",
          error_code(lambda: one(conn, "SELECT * FROM pooled_tmp")), 1146)
    check(f"{tag} after the reset: the open transaction was rolled back",
          one(other, "SELECT COUNT(*) FROM pooled_reset"), (0,))
    check(f"{tag} after the reset: autocommit as the connector set it",
          one(conn, "SELECT @@autocommit"), (1,))
    code = error_code(lambda: (p.execute("SELECT %s + 40", (2,)), p.fetchall()))
    print(tag, "old prepared statement after the reset: error", code, flush=True)
    p2 = conn.cursor(prepared=True)
    p2.execute("SELECT %s * 3", (5,))
    check(f"{tag} a new prepared statement", p2.fetchall(), [(15,)])
    conn.reset_session(user_variables={"x": 7}, session_variables={"autocommit": 0})
    check(f"{tag} reset_session()", one(conn, "SELECT @x, @a, @@autocommit"), (7, None, 0))
    c = conn.cursor()
    c.execute("INSERT INTO pooled_reset VALUES (2)")
    conn.rollback()
    check(f"{tag} autocommit=0 after reset_session", one(other, "SELECT COUNT(*) FROM pooled_reset"),
          (0,))
    other.cursor().execute("DROP TABLE pooled_reset")
    conn.close()
    other.close()


def change_user(cfg, pure, tag):
    conn = cfg.connect(pure)
    me, them = f"{cfg.user}@%", f"{cfg.other_user}@%"
    run(conn, "SET @a = 1")
    p = conn.cursor(prepared=True)
    p.execute("SELECT %s", (1,))
    p.fetchall()
    check(f"{tag} logged in as", one(conn, "SELECT CURRENT_USER(), @a"), (me, 1))
    conn.cmd_change_user(username=cfg.other_user, password=cfg.other_password, database=cfg.db)
    check(f"{tag} after change_user: the other user, state gone",
          one(conn, "SELECT CURRENT_USER(), USER() LIKE %s, @a, DATABASE()",
              (cfg.other_user + "@%",)),
          (them, 1, None, cfg.db))
    for n in range(20):
        check(f"{tag} query {n} as the other user", one(conn, "SELECT %s, CURRENT_USER()", (n,)),
              (n, them))
    p = conn.cursor(prepared=True)
    p.execute("SELECT %s, CURRENT_USER()", (9,))
    check(f"{tag} prepared statement as the other user", norm(p.fetchall()), ((9, them),))
    conn.cmd_change_user(username=cfg.user, password=cfg.password, database="app")
    check(f"{tag} changed back", one(conn, "SELECT CURRENT_USER(), DATABASE()"), (me, "app"))
    code = error_code(lambda: conn.cmd_change_user(username=cfg.other_user,
                                                   password=cfg.other_password + "-wrong",
                                                   database=cfg.db))
    check(f"{tag} change_user with a wrong password", code, 1045)
    conn.close()
    # The session is usable again after a successful change following nothing else.
    conn = cfg.connect(pure)
    conn.cmd_change_user(username=cfg.other_user, password=cfg.other_password, database=cfg.db)
    conn.cmd_change_user(username=cfg.other_user, password=cfg.other_password, database=cfg.db)
    check(f"{tag} change_user twice in a row", one(conn, "SELECT CURRENT_USER()"), (them,))
    conn.close()


MODES = {"prepared": prepared, "compress": compress, "reset": reset, "change_user": change_user}


def main():
    mode = sys.argv[1]
    cfg = Cfg(sys.argv)
    MODES[mode](cfg, True, "pure")
    if mysql.connector.HAVE_CEXT:
        MODES[mode](cfg, False, "cext")
        print("cext: ran", flush=True)
    else:
        # Not an error: the extension needs a newer OpenSSL than some systems have.
        try:
            import _mysql_connector  # noqa: F401
            why = "HAVE_CEXT is false"
        except ImportError as e:
            why = str(e).split(":")[-1].strip()
        print("cext: not available (" + why + ")", file=sys.stderr, flush=True)
        print("cext: not available", flush=True)


if __name__ == "__main__":
    main()
