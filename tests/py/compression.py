"""Issue 6, item 3: protocol compression relayed, with mysql-connector-python (compress=True,
text and binary protocol) and PyMySQL (no compression) side by side.

usage: compression.py HOST PORT USER PASSWORD DB
Prints a checksum line per case; the caller compares the output through the proxy with the
output direct.
"""
import hashlib
import sys

import mysql.connector


def digest(rows):
    h = hashlib.sha1()
    for r in rows:
        h.update(repr(r).encode())
    return h.hexdigest()


def main():
    host, port, user, password, db = sys.argv[1:6]
    conn = mysql.connector.connect(host=host, port=int(port), user=user, password=password,
                                   database=db, compress=True, use_pure=True,
                                   ssl_disabled=True)
    cur = conn.cursor()
    cur.execute("SHOW STATUS LIKE 'Compression'")
    print("compression", cur.fetchone()[1])
    # (mysql-connector-python's pure-Python reader fails, direct too, on compressed results
    # of more than about 10 MB of small packets: "unpack requires a buffer of 4 bytes".)
    cur.execute("SELECT seq, REPEAT(CHAR(65 + seq % 26), seq % 1000) FROM seq_1_to_2000")
    print("text rows", digest(cur.fetchall()))
    cur.execute("SELECT REPEAT('ab', 9000000)")
    print("big value", digest(cur.fetchall()))
    pcur = conn.cursor(prepared=True)
    pcur.execute("SELECT seq, CONCAT('v', seq) FROM seq_1_to_5000 WHERE seq % %s = 0", (7,))
    print("binary rows", digest(pcur.fetchall()))
    for i in range(200):
        pcur.execute("SELECT %s + 1", (i,))
        assert pcur.fetchone()[0] == i + 1
    print("prepared loop ok")
    cur.execute("DROP TABLE IF EXISTS comp_t")
    cur.execute("CREATE TABLE comp_t (id INT PRIMARY KEY, v LONGBLOB)")
    blob = bytes(range(256)) * 40000
    cur.execute("INSERT INTO comp_t VALUES (1, %s)", (blob,))
    conn.commit()
    cur.execute("SELECT v FROM comp_t")
    assert cur.fetchone()[0] == blob
    print("blob round trip ok")
    cur.execute("DROP TABLE comp_t")
    conn.close()


if __name__ == "__main__":
    main()
