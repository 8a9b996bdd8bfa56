"""Issue 6, item 2: KILL of a connection busy in a statement, through libmariadb (the C client
MariaDB's own test tool uses), text and binary protocol.

usage: kill_busy.py HOST PORT DIRECT_PORT USER PASSWORD DB
Connection C (direct) holds LOCK TABLE t_kill WRITE; connection A (through HOST:PORT, libmariadb)
runs ALTER TABLE t_kill ... and waits for the lock; connection B (direct) kills A's server
thread. Prints `text <errno>` and `binary <errno>`: the error A's client reported.
"""
import ctypes
import ctypes.util
import sys
import threading
import time

import pymysql

lib = ctypes.CDLL(ctypes.util.find_library("mariadb") or "libmariadb.so.3")
lib.mysql_init.restype = ctypes.c_void_p
lib.mysql_init.argtypes = [ctypes.c_void_p]
lib.mysql_real_connect.restype = ctypes.c_void_p
lib.mysql_real_connect.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                   ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint,
                                   ctypes.c_char_p, ctypes.c_ulong]
lib.mysql_query.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.mysql_errno.argtypes = [ctypes.c_void_p]
lib.mysql_error.argtypes = [ctypes.c_void_p]
lib.mysql_error.restype = ctypes.c_char_p
lib.mysql_close.argtypes = [ctypes.c_void_p]
lib.mysql_stmt_init.restype = ctypes.c_void_p
lib.mysql_stmt_init.argtypes = [ctypes.c_void_p]
lib.mysql_stmt_prepare.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_ulong]
lib.mysql_stmt_execute.argtypes = [ctypes.c_void_p]
lib.mysql_stmt_errno.argtypes = [ctypes.c_void_p]
lib.mysql_stmt_error.argtypes = [ctypes.c_void_p]
lib.mysql_stmt_error.restype = ctypes.c_char_p
lib.mysql_stmt_close.argtypes = [ctypes.c_void_p]


def c_connect(port, user, password, db):
    m = lib.mysql_init(None)
    if not lib.mysql_real_connect(m, b"127.0.0.1", user.encode(), password.encode(),
                                  db.encode(), port, None, 0):
        raise SystemExit(f"connect: {lib.mysql_error(m)}")
    return m


def run(mode, port, direct, user, password, db):
    holder = pymysql.connect(host="127.0.0.1", port=direct, user=user, password=password,
                             database=db, autocommit=True)
    hc = holder.cursor()
    hc.execute("DROP TABLE IF EXISTS t_kill")
    hc.execute("CREATE TABLE t_kill (a INT)")
    hc.execute("LOCK TABLE t_kill WRITE")
    a = c_connect(port, user, password, db)
    result = {}

    def victim():
        sql = b"ALTER TABLE t_kill ADD COLUMN b INT"
        if mode == "text":
            if lib.mysql_query(a, sql) != 0:
                result["errno"] = lib.mysql_errno(a)
                result["error"] = lib.mysql_error(a)
        else:
            st = lib.mysql_stmt_init(a)
            if lib.mysql_stmt_prepare(st, sql, len(sql)) != 0:
                result["errno"] = lib.mysql_stmt_errno(st)
                result["error"] = lib.mysql_stmt_error(st)
            elif lib.mysql_stmt_execute(st) != 0:
                result["errno"] = lib.mysql_stmt_errno(st)
                result["error"] = lib.mysql_stmt_error(st)
            lib.mysql_stmt_close(st)

    t = threading.Thread(target=victim)
    t.start()
    killer = pymysql.connect(host="127.0.0.1", port=direct, user=user, password=password,
                             autocommit=True)
    kc = killer.cursor()
    deadline = time.time() + 20
    while time.time() < deadline:
        kc.execute("SELECT ID FROM information_schema.PROCESSLIST "
                   "WHERE INFO LIKE 'ALTER TABLE t_kill%'")
        row = kc.fetchone()
        if row:
            kc.execute(f"KILL {row[0]}")
            break
        time.sleep(0.05)
    else:
        raise SystemExit("the ALTER never waited for the lock")
    t.join(30)
    hc.execute("UNLOCK TABLES")
    print(f"{mode} {result.get('errno', 0)} {result.get('error', b'').decode(errors='replace')}")
    # A new connection through the same path works.
    b = c_connect(port, user, password, db)
    assert lib.mysql_query(b, b"SELECT 1") == 0, lib.mysql_error(b)
    lib.mysql_close(b)
    lib.mysql_close(a)
    holder.close()
    killer.close()


def main():
    host, port, direct, user, password, db = sys.argv[1:7]
    for mode in ("text", "binary"):
        run(mode, int(port), int(direct), user, password, db)


if __name__ == "__main__":
    main()
