"""procfs: what the benchmarks read from the kernel about processes and memory.

Owns: CPU seconds of a process tree (utime+stime from /proc/PID/stat), resident memory (VmRSS),
TCP socket counts and memory (/proc/net/sockstat), slab usage (/proc/meminfo, /proc/slabinfo),
a server's established connections by client address (ss or /proc/net/tcp), free loopback
ports and waiting for a port to accept. Standard library only, Linux only.
"""
import os
import shutil
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (the first one is the state)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()


def children(pid):
    """Process ids whose parent is `pid`."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(entry)[1]) == pid:
                out.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue  # the process went away while we looked
    return out


def tree(pid):
    """`pid` and all its descendants that are alive now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def cpu_seconds(pid):
    """utime+stime of one process (all its threads, dead ones included), in seconds."""
    fields = _stat_fields(pid)
    # After the name: state(3) ppid(4) ... utime(14) stime(15); index = field number - 3.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid):
    """CPU seconds of `pid` and its live descendants (a process that exits between two samples
    takes its share with it, which only happens to ProxySQL's short-lived helpers)."""
    total = 0.0
    for p in tree(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def rss_kib(pid):
    """VmRSS of one process in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tree_rss_kib(pid):
    """VmRSS summed over `pid` and its live descendants, in KiB."""
    total = 0
    for p in tree(pid):
        try:
            total += rss_kib(p)
        except OSError:
            pass
    return total


def sockstat():
    """/proc/net/sockstat as {"TCP": {"inuse": n, "mem": pages, ...}, "sockets": {"used": n}}."""
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            proto, _, rest = line.partition(":")
            words = rest.split()
            out[proto] = {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}
    return out


# TcpExt counters that show the kernel settings of a connection storm at work.
STORM_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPMemoryPressures", "TCPAbortOnMemory",
                  "TCPTimeWaitOverflow")


def storm_counters():
    """The STORM_COUNTERS from /proc/net/netstat, plus "SoftnetDropped": packets the per-CPU
    input queues (net.core.netdev_max_backlog) dropped, column 2 of /proc/net/softnet_stat."""
    out = {}
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            out = {k: int(table.get(k, 0)) for k in STORM_COUNTERS}
    with open("/proc/net/softnet_stat") as f:
        out["SoftnetDropped"] = sum(int(line.split()[1], 16) for line in f if line.strip())
    return out


def meminfo_kib():
    """/proc/meminfo as {"Slab": kib, "SUnreclaim": kib, ...}."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    return out


def slab_bytes():
    """Bytes in use per slab cache (active objects × object size); {} if /proc/slabinfo is not
    readable (it needs root)."""
    out = {}
    try:
        with open("/proc/slabinfo") as f:
            lines = f.readlines()[2:]
    except OSError:
        return out
    for line in lines:
        w = line.split()
        out[w[0]] = int(w[1]) * int(w[3])
    return out


# Slab caches that grow with each TCP socket: the sock itself, its inode, file and dentry (io_uring
# direct descriptors have a struct file too), port bind buckets, epoll items (peers on epoll),
# socket buffer heads, and for io_uring programs the request of the armed multishot receive
# (io_kiocb) and its async data, which on 6.x kernels comes from kmalloc-512 (measured here: one
# 512-byte object per io_uring-served socket, none per epoll-served one). Summing these instead
# of /proc/meminfo's Slab keeps unrelated kernel activity out of the per-connection figures.
SOCKET_SLAB_CACHES = ("TCP", "TCPv6", "sock_inode_cache", "filp", "dentry", "tcp_bind_bucket",
                      "tcp_bind2_bucket", "eventpoll_epi", "eventpoll_pwq", "skbuff_head_cache",
                      "skbuff_small_head", "io_kiocb", "kmalloc-512")


def kernel_memory_sample():
    """One sample of everything kernel-side the connection benchmarks compare."""
    ss = sockstat()
    mi = meminfo_kib()
    caches = slab_bytes()
    return {
        "tcp_inuse": ss.get("TCP", {}).get("inuse", 0),
        "tcp_alloc": ss.get("TCP", {}).get("alloc", 0),
        "tcp_mem_pages": ss.get("TCP", {}).get("mem", 0),
        "sockets_used": ss.get("sockets", {}).get("used", 0),
        "slab_kib": mi.get("Slab", 0),
        "sunreclaim_kib": mi.get("SUnreclaim", 0),
        "socket_slab_bytes": sum(caches.get(c, 0) for c in SOCKET_SLAB_CACHES),
        "slab_caches": caches,
    }


def tcp_established_peers(port):
    """{peer IPv4 address: count} of the ESTABLISHED IPv4 TCP sockets whose local port is `port`
    (a server's accepted connections, by client address). Asks `ss` (netlink, filtered in the
    kernel: ~20 ms with 10,000 sockets on the machine) when it is installed, else reads
    /proc/net/tcp (~80 ms of this process's CPU for the same)."""
    out = {}
    ss = shutil.which("ss")
    if ss:
        p = subprocess.run([ss, "-Htn4", "state", "established", f"( sport = :{port} )"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if p.returncode == 0:
            for line in p.stdout.splitlines():
                w = line.split()
                if len(w) >= 4:
                    addr = w[3].rpartition(":")[0]
                    out[addr] = out.get(addr, 0) + 1
            return out
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            w = line.split()
            if w[3] != "01" or int(w[1][-4:], 16) != port:
                continue
            ip = int(w[2][:8], 16)  # little-endian in the file
            addr = f"{ip & 255}.{(ip >> 8) & 255}.{(ip >> 16) & 255}.{ip >> 24}"
            out[addr] = out.get(addr, 0) + 1
    return out


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout, alive=None, host="127.0.0.1"):
    """Waits until host:port accepts a TCP connection. `alive()` is polled too: when it returns
    False the wait ends early. Returns True when the port answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False
