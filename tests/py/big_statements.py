"""Issue 6, item 1: statements and values over 16 MiB, both directions, with PyMySQL.

usage: big_statements.py HOST PORT USER PASSWORD DB
Prints one line per case and exits 0 when every case round-trips the exact bytes.
PyMySQL sends a bytes parameter hex-encoded, so a blob of N MiB is a statement of 2N MiB.
"""
import hashlib
import sys

import pymysql

MAX = 0xFFFFFF


def connect(host, port, user, password, db):
    return pymysql.connect(host=host, port=int(port), user=user, password=password,
                           database=db, max_allowed_packet=1 << 30, read_timeout=300,
                           write_timeout=300)


def check_blob(cur, size):
    blob = bytes((i * 131 + 7) & 0xFF for i in range(256)) * (size // 256) + b"z" * (size % 256)
    cur.execute("DELETE FROM big")
    cur.execute("INSERT INTO big VALUES (1, %s)", (blob,))
    cur.execute("SELECT b FROM big WHERE id = 1")
    (back,) = cur.fetchone()
    assert hashlib.sha1(back).digest() == hashlib.sha1(blob).digest(), f"blob of {size} bytes changed"
    print(f"blob {size} bytes (statement {2 * size + 40} bytes): ok")


def check_exact_statement(cur, payload_len):
    """A COM_QUERY whose payload (command byte + SQL) is exactly payload_len bytes."""
    head, tail = "INSERT INTO big VALUES (2, '", "')"
    fill = payload_len - 1 - len(head) - len(tail)
    cur.execute("DELETE FROM big")
    cur.execute(head + "q" * fill + tail)
    cur.execute("SELECT LENGTH(b) FROM big WHERE id = 2")
    assert cur.fetchone()[0] == fill
    print(f"statement payload of exactly {payload_len} bytes: ok")


def check_exact_row(cur, payload_len):
    """A row whose payload (9-byte length prefix + value) is exactly payload_len bytes."""
    n = payload_len - 9
    cur.execute(f"SELECT REPEAT('r', {n})")
    (v,) = cur.fetchone()
    assert len(v) == n and v[:1] == "r" and v[-1:] == "r"
    print(f"row payload of exactly {payload_len} bytes: ok")


def main():
    conn = connect(*sys.argv[1:6])
    cur = conn.cursor()
    cur.execute("DROP TABLE IF EXISTS big")
    cur.execute("CREATE TABLE big (id INT PRIMARY KEY, b LONGBLOB)")
    for mib in (17, 33, 40, 48):
        check_blob(cur, mib << 20)
    for k in (2, 3):
        check_exact_statement(cur, k * MAX)
        check_exact_row(cur, k * MAX)
    cur.execute("DROP TABLE big")
    conn.close()


if __name__ == "__main__":
    main()
