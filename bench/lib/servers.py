"""servers: the backends and proxies a benchmark puts under load, each started and stopped here.

Owns: finding/building the project binaries (ringproxy, loadgen), a private MariaDB (started and
stopped by scripts/mariadb-private, the one place that does so), loadgen's mock server,
and the proxies compared: ringproxy (pass-through, or pooled sessions only), HAProxy (TCP mode),
ProxySQL and MySQL Proxy 0.8 (the last two only when PROXYSQL_BIN / MYSQL_PROXY_BIN name
binaries). Every server is a procs.Child, so it is stopped when the benchmark ends however it
ends. `SqlPipe` keeps one root client session open on a private MariaDB for frequent small
queries (pollers).
"""
import atexit
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procfs
import procs

REPO = Path(__file__).resolve().parents[2]
MARIADB_PRIVATE = REPO / "scripts" / "mariadb-private"
USER, PASSWORD, DB = "app", "app", "app"


class Unavailable(Exception):
    """A peer that cannot run here (binary missing); the row is printed as skipped."""


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def find_binary(name):
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/usr/local/sbin", "/usr/bin",
                                                       "/usr/local/bin"]:
        p = Path(d) / name
        if d and p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")


def build_release():
    """`cargo build --release` of the proxy and loadgen; exits with cargo's output on failure."""
    log("cargo build --release --workspace --bins")
    p = subprocess.run(["cargo", "build", "--release", "--workspace", "--bins"], cwd=REPO,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        sys.stderr.write(p.stdout.decode(errors="replace")[-4000:])
        raise SystemExit("bench: cargo build --release failed")


def project_binary(name):
    """RINGPROXY_BIN / LOADGEN_BIN if set, else the release build in the cargo target dir."""
    env = os.environ.get(f"{name.upper()}_BIN")
    path = Path(env) if env else target_dir() / "release" / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise SystemExit(f"bench: no {name} binary at {path} (build with `cargo build --release "
                         f"--workspace --bins`, or set {name.upper()}_BIN)")
    return str(path)


def nofile_hard():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_nofile():
    """Raises our soft RLIMIT_NOFILE to the hard limit; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Workdir:
    """A temp directory for configs, data and logs; removed on close (at the latest when the
    benchmark exits, after its servers were stopped) unless BENCH_KEEP is set."""

    _open = []

    def __init__(self, prefix):
        self.path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))
        Workdir._open.append(self)

    def close(self):
        if self in Workdir._open:
            Workdir._open.remove(self)
        if os.environ.get("BENCH_KEEP"):
            log(f"keeping {self.path} (BENCH_KEEP)")
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    @classmethod
    def close_all(cls):
        procs.stop_all()  # nothing may still write into them
        while cls._open:
            cls._open[-1].close()


atexit.register(Workdir.close_all)


class Server:
    """Common shape: `name`, `port`, `child` (None for direct), `addr`."""

    name = "?"
    child = None
    port = None
    # loadgen options every load through this target needs.
    loadgen_extra = ()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def cpu_pid(self):
        """The process whose CPU a loadgen run measures with --pid (the busiest of the tree)."""
        if self.child is None:
            return None
        best, best_threads = self.child.pid, -1
        for p in procfs.tree(self.child.pid):
            try:
                threads = len(os.listdir(f"/proc/{p}/task"))
            except OSError:
                continue
            if threads > best_threads:
                best, best_threads = p, threads
        return best

    def cpu_seconds(self):
        """CPU seconds of the whole process tree so far (None for direct)."""
        return None if self.child is None else procfs.tree_cpu_seconds(self.child.pid)

    def rss_kib(self):
        return None if self.child is None else procfs.tree_rss_kib(self.child.pid)

    def _wait_listening(self, timeout):
        if not procfs.wait_port(self.port, timeout, alive=self.child.alive):
            tail = self.child.log_tail()
            self.child.stop()
            raise RuntimeError(f"{self.name} did not accept on {self.addr} within {timeout} s; "
                               f"log tail:\n{tail}")

    def stop(self):
        if self.child is not None:
            self.child.stop()
        wd = getattr(self, "workdir", None)
        if wd is not None:
            wd.close()


class MariaDB(Server):
    """A private MariaDB, started by scripts/mariadb-private (profile `bench`: temp datadir, free
    loopback port, user app/app, database app, no anonymous users). `max_connections` and `extra`
    (e.g. the thread pool for the connection scenario) are added to the profile's mariadbd
    options. The script's supervisor kills mariadbd should this benchmark die without stopping
    it; `stop` (also run at exit) shuts it down cleanly."""

    name = "mariadb"

    def __init__(self, max_connections=5000, extra=()):
        self.workdir = Workdir("mariadb")
        root = self.workdir.path
        log(f"starting a private MariaDB in {root}")
        argv = [MARIADB_PRIVATE, "start", "--dir", root, "--profile", "bench",
                "--watch", os.getpid(), "--user", f"{USER}:{PASSWORD}", "--database", DB,
                "--", f"--max-connections={max_connections}", *extra]
        try:
            p = procs.run(argv, timeout=300)
        except TimeoutError as e:
            procs.run([MARIADB_PRIVATE, "stop", root], timeout=120)
            self.workdir.close()
            raise RuntimeError(f"mariadb-private start: {e}") from None
        if p.returncode == 3:
            self.workdir.close()
            raise SystemExit(f"bench: {p.stderr.strip()}")
        if p.returncode != 0:
            self.workdir.close()
            raise RuntimeError(f"mariadb-private start failed:\n{p.stderr[-3000:]}")
        facts = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
        self.port = int(facts["port"])
        self.pid = int(facts["pid"])
        self.socket = Path(facts["socket"])
        self.datadir = Path(facts["datadir"])
        self.cli = facts["client"]
        self.admin_user = facts["admin_user"]
        self.stopped = False
        atexit.register(self.stop)  # runs before Workdir.close_all (registered earlier)
        log(f"MariaDB {facts['version']} on {self.addr} (pid {self.pid}, max_connections "
            f"{self.root_sql('SELECT @@max_connections').strip()})")

    def root_sql(self, sql):
        p = procs.run([self.cli, "--no-defaults", f"--socket={self.socket}", "--protocol=SOCKET",
                       f"-u{self.admin_user}", "--batch", "--skip-column-names", "-e", sql],
                      timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"SQL failed: {sql.strip()[:200]}\n{p.stderr}")
        return p.stdout

    def stop(self):
        if not self.stopped:
            self.stopped = True
            p = procs.run([MARIADB_PRIVATE, "stop", self.workdir.path], timeout=120)
            if p.returncode != 0:
                log(f"mariadb-private stop: {p.stderr.strip()}")
        self.workdir.close()


class SqlPipe:
    """One `mariadb` client process kept open as root on a private MariaDB's socket, for queries
    run many times a second (a poller): no process start and no login per query. `query` returns
    the rows as lists of strings (tab-separated batch output, no column names)."""

    _END = "--sqlpipe-end--"

    def __init__(self, mariadb):
        self.proc = subprocess.Popen(
            [mariadb.cli, "--no-defaults", f"--socket={mariadb.socket}", "--protocol=SOCKET",
             f"-u{mariadb.admin_user}", "--batch", "--skip-column-names", "--unbuffered"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            bufsize=1, start_new_session=True, preexec_fn=procs._die_with_parent)
        atexit.register(self.close)

    def query(self, sql):
        """Runs `sql` (one statement, no trailing semicolon) and returns its rows; raises
        RuntimeError when the client has exited (a failed statement ends a batch client)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the mariadb client exited ({self.proc.returncode})")
        try:
            self.proc.stdin.write(f"{sql};\nSELECT '{self._END}';\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise RuntimeError(f"the mariadb client is gone: {e}") from None
        rows = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the mariadb client exited ({self.proc.wait()})")
            line = line.rstrip("\n")
            if line == self._END:
                return rows
            rows.append(line.split("\t"))

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class MockServer(Server):
    """loadgen's mock MySQL server (`loadgen serve`): answers every query with a fixed
    resultset, so a proxy in front of it is the bottleneck."""

    name = "mock"

    def __init__(self, loadgen, threads=None, extra=()):
        self.workdir = Workdir("mock")
        self.port = procfs.free_port()
        argv = [loadgen, "serve", "--listen", self.addr, *extra]
        if threads:
            argv += ["--threads", threads]
        self.child = procs.Child("loadgen-serve", argv, self.workdir.path / "serve.log")
        self._wait_listening(15)
        log(f"mock server (loadgen serve) on {self.addr} (pid {self.child.pid})")


class Direct(Server):
    """No proxy: the client talks to the backend itself."""

    name = "direct"

    def __init__(self, backend):
        self.port = backend.port


class RingProxy(Server):
    name = "ringproxy"

    def __init__(self, binary, backend, workers=2, max_connections=None, extra=()):
        self.workdir = Workdir("ringproxy")
        self.port = procfs.free_port()
        argv = [binary, "--listen", self.addr, "--backend", backend.addr, "--workers", workers,
                "--log-level", "warn", *extra]
        if max_connections:
            argv += ["--max-connections", max_connections]
        self.child = procs.Child("ringproxy", argv, self.workdir.path / "ringproxy.log")
        self._wait_listening(15)
        log(f"ringproxy on {self.addr} -> {backend.addr} (pid {self.child.pid}, {workers} workers)")


class RingProxyPooled(Server):
    """ringproxy with a pooled listener only (`--pooled-listen`, no pass-through listener):
    clients log in to the proxy itself as the one `[[users]]` entry, USER/PASSWORD with default
    schema DB (generated into a TOML file in the temp dir), and their queries share at most
    `pool` backend connections per backend server (`--max-backend-connections`)."""

    name = "ringproxy-pooled"

    def __init__(self, binary, backend, workers=2, pool=50, max_connections=None, extra=()):
        self.workdir = Workdir("ringproxy-pooled")
        self.port = procfs.free_port()
        cfg = self.workdir.path / "ringproxy.toml"
        cfg.write_text(f"""[[users]]
name = "{USER}"
password = "{PASSWORD}"
default_schema = "{DB}"
""")
        argv = [binary, "--config", cfg, "--pooled-listen", self.addr, "--backend", backend.addr,
                "--workers", workers, "--max-backend-connections", pool, "--log-level", "warn",
                *extra]
        if max_connections:
            argv += ["--max-connections", max_connections]
        self.child = procs.Child("ringproxy-pooled", argv, self.workdir.path / "ringproxy.log")
        self._wait_listening(15)
        log(f"ringproxy (pooled) on {self.addr} -> {backend.addr} (pid {self.child.pid}, "
            f"{workers} workers, at most {pool} backend connections)")


class HAProxy(Server):
    """Debian's HAProxy in TCP mode: the floor for any proxy (no protocol work at all)."""

    name = "haproxy"

    def __init__(self, backend, threads=2, maxconn=None):
        binary = find_binary("haproxy")
        if binary is None:
            raise Unavailable("haproxy not installed (apt-get install -y haproxy)")
        self.workdir = Workdir("haproxy")
        self.port = procfs.free_port()
        # Each proxied connection takes two descriptors; leave room for the rest.
        maxconn = maxconn or max(1000, (nofile_hard() - 200) // 2)
        cfg = self.workdir.path / "haproxy.cfg"
        cfg.write_text(f"""global
    nbthread {threads}
    maxconn {maxconn}
    log stdout format raw local0 err

defaults
    mode tcp
    maxconn {maxconn}
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend mysql_in
    bind 127.0.0.1:{self.port}
    default_backend mysql_out

backend mysql_out
    server db1 {backend.addr} maxconn {maxconn}
""")
        self.child = procs.Child("haproxy", [binary, "-db", "-f", cfg],
                                 self.workdir.path / "haproxy.log")
        self._wait_listening(15)
        log(f"haproxy on {self.addr} -> {backend.addr} (pid {self.child.pid}, nbthread {threads})")


class ProxySQL(Server):
    """ProxySQL from $PROXYSQL_BIN (not packaged in Debian): `threads` MySQL worker threads,
    monitor off, one hostgroup with the backend, user app/app. `max_connections` caps the
    clients (mysql-max_connections) and the user; the backend server's own cap (the hostgroup's
    connections to it) is `server_max_connections`, by default the same. `variables` adds
    mysql_variables lines (name: value, written as given)."""

    name = "proxysql"

    def __init__(self, backend, threads=2, max_connections=20000, server_max_connections=None,
                 variables=None):
        binary = os.environ.get("PROXYSQL_BIN")
        if not binary:
            raise Unavailable("PROXYSQL_BIN not set")
        if not os.access(binary, os.X_OK):
            raise Unavailable(f"PROXYSQL_BIN={binary} is not an executable")
        self.workdir = Workdir("proxysql")
        d = self.workdir.path
        self.port = procfs.free_port()
        admin_port = procfs.free_port()
        cfg = d / "proxysql.cnf"
        server_max = server_max_connections or max_connections
        extra_vars = "".join(f"    {k}={v}\n" for k, v in (variables or {}).items())
        cfg.write_text(f"""datadir="{d}"
errorlog="{d}/proxysql.log"
admin_variables=
{{
    admin_credentials="admin:admin"
    mysql_ifaces="127.0.0.1:{admin_port}"
}}
mysql_variables=
{{
    threads={threads}
    max_connections={max_connections}
    interfaces="127.0.0.1:{self.port}"
    monitor_enabled=false
    have_ssl=false
    connect_timeout_server=5000
    default_query_timeout=3600000
    poll_timeout=2000
{extra_vars}}}
mysql_servers=
(
    {{ address="127.0.0.1", port={backend.port}, hostgroup=0, max_connections={server_max} }}
)
mysql_users=
(
    {{ username="{USER}", password="{PASSWORD}", default_hostgroup=0,
       max_connections={max_connections}, default_schema="{DB}" }}
)
""")
        self.child = procs.Child("proxysql", [binary, "-f", "--initial", "--no-monitor", "-c", cfg,
                                              "-D", d], d / "stdout.log")
        self._wait_listening(30)
        log(f"proxysql on {self.addr} -> {backend.addr} (pid {self.child.pid}, {threads} threads)")


class MySQLProxy(Server):
    """MySQL Proxy 0.8 from $MYSQL_PROXY_BIN (not packaged in Debian), proxy plugin only."""

    name = "mysql-proxy"
    # MySQL Proxy 0.8 relays the server's greeting as it is, CLIENT_DEPRECATE_EOF included, but
    # cannot parse the OK-terminated resultsets a client that takes it up gets: it waits for an
    # EOF that never comes, and the client for the end of its result (loadgen then counted 0
    # queries). Clients of its era never asked for it; loadgen behaves as one of them here.
    loadgen_extra = ("--no-deprecate-eof",)

    def __init__(self, backend, threads=2, extra=()):
        binary = os.environ.get("MYSQL_PROXY_BIN")
        if not binary:
            raise Unavailable("MYSQL_PROXY_BIN not set")
        if not os.access(binary, os.X_OK):
            raise Unavailable(f"MYSQL_PROXY_BIN={binary} is not an executable")
        self.workdir = Workdir("mysql-proxy")
        self.port = procfs.free_port()
        # The peers' wrapper (../shared/peers/mysql-proxy.sh) passes --plugins=proxy itself; a
        # second one loads the plugin twice, and the second copy takes the default
        # 0.0.0.0:4040 (or fails on it) instead of serving the address given here.
        plugins = [] if _passes_plugins(binary) else ["--plugins=proxy"]
        argv = [binary, *plugins, f"--proxy-address={self.addr}",
                f"--proxy-backend-addresses={backend.addr}", f"--event-threads={threads}",
                "--log-level=warning", f"--max-open-files={nofile_hard()}", *extra]
        self.child = procs.Child("mysql-proxy", argv, self.workdir.path / "mysql-proxy.log")
        self._wait_listening(15)
        log(f"mysql-proxy on {self.addr} -> {backend.addr} (pid {self.child.pid}, "
            f"{threads} event threads)")


def _passes_plugins(binary):
    """Whether `binary` is a wrapper script that passes --plugins itself."""
    try:
        with open(binary, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"--plugins=" in head


def settle(seconds=0.5):
    """A short pause between runs so TIME_WAIT churn and the previous run's tail settle."""
    time.sleep(seconds)
