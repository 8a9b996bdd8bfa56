"""Kernel settings a run with hundreds of thousands of connections needs, applied for the run and
restored afterwards (also when the benchmark fails or is interrupted). Why each one, and what it
measurably changes, is in kernel-notes/limits.md ("Settings bench/connections applies")."""
import atexit
from pathlib import Path

# name -> value for a proxy, its load generator and the mock backend on one 24 GiB machine
# holding up to a million client connections (two sockets each: loadgen's and the proxy's).
SCALE = {
    # Every socket is a struct file, direct descriptor or not: 2 M sockets and the rest.
    "fs.file-max": "4194304",
    # 55,536 ports per (source, destination) pair instead of 28,232: fewer source addresses.
    "net.ipv4.ip_local_port_range": "10000 65535",
    # listen() backlogs are capped at somaxconn; a connect ramp of 15,000/s over 50 listeners
    # must not overflow them (an overflow drops the SYN and the client retries after 1 s).
    "net.core.somaxconn": "65535",
    "net.ipv4.tcp_max_syn_backlog": "65535",
    # Loopback packets go through the per-CPU backlog queue of this size.
    "net.core.netdev_max_backlog": "10000",
    # Pages TCP may use (min, pressure, max): the default max (~2.2 GiB here) is below what two
    # million sockets that each exchanged a login hold in forward allocations (kernel-notes).
    "net.ipv4.tcp_mem": "1572864 2097152 3145728",
}

_PROC = Path("/proc/sys")
_saved = {}


def _path(name):
    return _PROC / name.replace(".", "/")


def read(name):
    return " ".join(_path(name).read_text().split())


def apply(settings=None):
    """Sets `settings` (default SCALE), remembering the old values; returns {name: (old, new)}.
    Raises PermissionError when /proc/sys is not writable (not root, or a read-only /proc)."""
    changed = {}
    for name, value in (settings or SCALE).items():
        old = read(name)
        if name not in _saved:
            _saved[name] = old
        if old != value:
            _path(name).write_text(value + "\n")
        changed[name] = (old, read(name))
    return changed


def restore():
    """Puts back every value apply() changed (idempotent)."""
    for name, old in list(_saved.items()):
        try:
            if read(name) != old:
                _path(name).write_text(old + "\n")
        except OSError:
            pass
        del _saved[name]


# On SIGINT/SIGTERM procs.install_cleanup() exits through sys.exit, so this runs then too.
atexit.register(restore)
