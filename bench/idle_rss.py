#!/usr/bin/env python3
"""Measures ringproxy's user-space memory per idle client connection.

Opens N client connections through the proxy (each completes the MySQL handshake with
mysql_native_password and runs one query, so every one is a fully established pass-through
session with its backend connection), holds them idle, and reports the proxy's RSS delta per
connection (VmRSS from /proc/PID/status before and after). Standard library only; a stand-in until
loadgen's `idle` workload exists.

usage: bench/idle_rss.py --pid PID --port 6033 --user app --password app [--count 5000]
"""
import argparse, hashlib, socket, struct, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def read_packet(s):
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        if not chunk:
            raise ConnectionError("closed")
        hdr += chunk
    n = hdr[0] | hdr[1] << 8 | hdr[2] << 16
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return hdr[3], body


def scramble(password, nonce):
    p1 = hashlib.sha1(password).digest()
    p2 = hashlib.sha1(p1).digest()
    p3 = hashlib.sha1(nonce + p2).digest()
    return bytes(a ^ b for a, b in zip(p1, p3))


def login(port, user, password, db="app"):
    s = socket.create_connection(("127.0.0.1", port))
    _, g = read_packet(s)
    assert g[0] == 10, g[:60]
    i = g.index(b"\0", 1) + 1 + 4
    nonce = g[i:i + 8]
    i += 8 + 1
    caps = struct.unpack("<H", g[i:i + 2])[0]
    i += 2 + 1 + 2
    caps |= struct.unpack("<H", g[i:i + 2])[0] << 16
    i += 2 + 1 + 10
    nonce += g[i:i + 12]
    flags = 0x0200 | 0x8000 | 0x00080000 | 0x0001 | 0x0008  # PROTOCOL_41 SECURE_CONNECTION PLUGIN_AUTH LONG_PASSWORD CONNECT_WITH_DB
    auth = scramble(password.encode(), nonce)
    resp = struct.pack("<IIB", flags, 1 << 24, 33) + b"\0" * 23 + user.encode() + b"\0" + bytes([len(auth)]) + auth + db.encode() + b"\0" + b"mysql_native_password\0"
    s.sendall(struct.pack("<I", len(resp))[:3] + b"\x01" + resp)
    _, r = read_packet(s)
    if r[0] != 0:
        raise RuntimeError(f"login failed: {r!r}")
    q = b"\x03SELECT 1"
    s.sendall(struct.pack("<I", len(q))[:3] + b"\x00" + q)
    while True:  # column count, column def, EOF, row, EOF
        _, r = read_packet(s)
        if r[0] == 0xFE and len(r) < 9:
            _, r = read_packet(s)  # row
            _, r = read_packet(s)  # final EOF
            break
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, default=6033)
    ap.add_argument("--user", default="app")
    ap.add_argument("--password", default="app")
    ap.add_argument("--db", default="app")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--warm-mib", type=int, default=256,
                    help="stream this much resultset through several connections first, so every "
                         "receive buffer of every worker has been touched before measuring")
    ap.add_argument("--steps", type=int, default=1,
                    help="open --count connections this many times, printing each step's marginal cost")
    a = ap.parse_args()
    warm(a)
    time.sleep(1)
    conns = []
    for step in range(a.steps):
        before = rss_kib(a.pid)
        t0 = time.time()
        conns += [login(a.port, a.user, a.password, a.db) for _ in range(a.count)]
        took = time.time() - t0
        time.sleep(2)
        after = rss_kib(a.pid)
        per = (after - before) * 1024 / a.count
        print(f"step={step} connections_total={len(conns)} rss_before_kib={before} "
              f"rss_after_kib={after} bytes_per_idle_connection={per:.0f} establish_s={took:.2f}")
    for c in conns:
        c.close()


def warm(a):
    """Cycles every receive buffer: each worker's buffer ring is consumed in order, so a few
    large resultsets over several connections touch them all."""
    per_conn = a.warm_mib * 1024 * 1024 // 8
    rows = per_conn // 1000
    q = b"\x03" + f"SELECT REPEAT('x', 990) FROM seq_1_to_{rows}".encode()
    for _ in range(8):
        s = login(a.port, a.user, a.password, a.db)
        s.sendall(struct.pack("<I", len(q))[:3] + b"\x00" + q)
        eofs = 0
        while eofs < 2:
            _, r = read_packet(s)
            if r[0] == 0xFF:
                raise RuntimeError(f"warm-up query failed: {r[3:]!r}")
            if r[0] == 0xFE and len(r) < 9:
                eofs += 1
        s.close()


if __name__ == "__main__":
    main()
