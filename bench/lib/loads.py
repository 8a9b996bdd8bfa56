"""loads: running one measured load and turning its output into numbers.

Owns: invoking `loadgen` (JSON report) and `sysbench` (text report with a latency histogram),
measuring the target proxy's CPU over the run, and returning one flat dict per run:
{"qps", "queries", "p50_us", "p99_us", "cpu_s", "cpu_s_per_1k", "errors", ...}.
"""
import json
import re

import procs
import servers

SYSBENCH_TABLES = 4
SYSBENCH_TABLE_SIZE = 10000


class LoadFailed(Exception):
    """The load tool reported an error (exit status, protocol error, failed connection)."""


def loadgen(binary, workload, target, connections, duration, cpu_server=None, extra=(),
            threads=None, timeout=None):
    """Runs `loadgen WORKLOAD --json` against `target` (a servers.Server) and returns its report
    (the contract's JSON object). With `cpu_server`, passes --pid so the report carries the
    target's CPU over the measured phase; falls back to sampling /proc around the whole run."""
    argv = [binary, workload, "--target", target.addr, "--connections", connections,
            "--duration", f"{float(duration):g}", "--user", servers.USER,
            "--password", servers.PASSWORD, "--db", servers.DB, "--json", *extra,
            *target.loadgen_extra]
    if threads:
        argv += ["--threads", threads]
    pid = cpu_server.cpu_pid() if cpu_server is not None else None
    if pid:
        argv += ["--pid", pid]
    cpu0 = cpu_server.cpu_seconds() if cpu_server is not None else None
    p = procs.run(argv, timeout=timeout or (float(duration) + 90 + int(connections) / 50))
    cpu1 = cpu_server.cpu_seconds() if cpu_server is not None else None
    try:
        report = json.loads(p.stdout)
    except ValueError:
        raise LoadFailed(f"loadgen exit {p.returncode}, no JSON report; stderr: "
                         f"{p.stderr.strip()[-600:]}") from None
    if p.returncode != 0:
        raise LoadFailed(f"loadgen exit {p.returncode}: errors {report.get('errors')}, connect "
                         f"{report.get('connect')}; stderr: {p.stderr.strip()[-400:]}")
    if workload in ("qps", "rate", "pipeline") and not report.get("queries"):
        raise LoadFailed(f"no query was answered in the measured phase (connect "
                         f"{report.get('connect')}, errors {report.get('errors')})")
    report["_cpu_whole_run_s"] = None if cpu0 is None else cpu1 - cpu0
    return report


def loadgen_row(report):
    """The numbers a peers row needs from a loadgen qps report."""
    lat = report.get("latency_us") or {}
    queries = report.get("queries") or 0
    cpu = (report.get("cpu_s") or {}).get("target")
    cpu_basis = "measured phase (loadgen --pid)"
    if cpu is None and report.get("_cpu_whole_run_s") is not None:
        cpu, cpu_basis = report["_cpu_whole_run_s"], "whole run incl. connect (/proc)"
    return {
        "qps": report.get("qps"),
        "queries": queries,
        "p50_us": lat.get("p50"),
        "p99_us": lat.get("p99"),
        "cpu_s": cpu,
        "cpu_basis": cpu_basis if cpu is not None else None,
        "cpu_s_per_1k": (cpu * 1000 / queries) if cpu is not None and queries else None,
        "errors": report.get("errors"),
        "loadgen_cpu_s": (report.get("cpu_s") or {}).get("loadgen"),
    }


def _sysbench_args(target, test, threads, duration):
    return ["sysbench", test, "--mysql-host=127.0.0.1", f"--mysql-port={target.port}",
            f"--mysql-user={servers.USER}", f"--mysql-password={servers.PASSWORD}",
            f"--mysql-db={servers.DB}", "--db-driver=mysql", f"--tables={SYSBENCH_TABLES}",
            f"--table-size={SYSBENCH_TABLE_SIZE}", f"--threads={threads}",
            f"--time={max(1, round(float(duration)))}",
            "--report-interval=0", "--histogram=on", "--percentile=99", "--rand-type=uniform"]


def sysbench_prepare(mariadb):
    """Creates the sysbench tables once, directly on MariaDB."""
    binary = servers.find_binary("sysbench")
    if binary is None:
        raise SystemExit("bench: sysbench not found: apt-get install -y sysbench")
    servers.log(f"sysbench prepare: {SYSBENCH_TABLES} tables x {SYSBENCH_TABLE_SIZE} rows on "
                f"{mariadb.addr}")
    argv = _sysbench_args(servers.Direct(mariadb), "oltp_read_only", 2, 10)
    argv = [a for a in argv if not a.startswith(("--histogram", "--percentile", "--time",
                                                  "--report"))]
    p = procs.run(argv + ["prepare"], timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"sysbench prepare failed:\n{p.stdout[-1500:]}{p.stderr[-1500:]}")


def parse_sysbench(text):
    """Totals, latency percentiles (from the histogram, in µs) and errors of a sysbench run."""
    def grab(pattern, cast=float):
        m = re.search(pattern, text)
        if not m:
            raise LoadFailed(f"sysbench output lacks /{pattern}/:\n{text[-1500:]}")
        return cast(m.group(1))

    queries = grab(r"\n\s+queries:\s+(\d+)\s", int)
    qps = grab(r"\n\s+queries:\s+\d+\s+\(([\d.]+) per sec")
    events = grab(r"total number of events:\s+(\d+)", int)
    seconds = grab(r"total time:\s+([\d.]+)s")
    errors = grab(r"ignored errors:\s+(\d+)", int)
    hist = []
    in_hist = False
    for line in text.splitlines():
        if "Latency histogram" in line:
            in_hist = True
            continue
        if in_hist:
            m = re.match(r"\s*([\d.]+)\s+\|\*?.*?\s(\d+)\s*$", line)
            if m:
                hist.append((float(m.group(1)), int(m.group(2))))
            elif hist and not line.strip():
                break
    if not hist:
        raise LoadFailed(f"sysbench printed no latency histogram:\n{text[-1500:]}")
    total = sum(c for _, c in hist)

    def pct(p):
        need, seen = total * p, 0
        for value_ms, count in hist:
            seen += count
            if seen >= need:
                return value_ms * 1000
        return hist[-1][0] * 1000

    return {"queries": queries, "qps": qps, "events": events, "seconds": seconds,
            "errors": errors, "p50_us": pct(0.50), "p99_us": pct(0.99),
            "p99_us_sysbench": grab(r"99th percentile:\s+([\d.]+)") * 1000}


def sysbench(test, target, threads, duration, cpu_server=None, extra=()):
    """Runs one sysbench test (a built-in OLTP test or a script's path) against `target`, with
    `extra` options; CPU of `cpu_server` is sampled from /proc around the whole run (sysbench
    opens its few connections in the first milliseconds)."""
    cpu0 = cpu_server.cpu_seconds() if cpu_server is not None else None
    p = procs.run(_sysbench_args(target, test, threads, duration) + list(extra) + ["run"],
                  timeout=float(duration) + 120)
    cpu1 = cpu_server.cpu_seconds() if cpu_server is not None else None
    if p.returncode != 0:
        raise LoadFailed(f"sysbench exit {p.returncode}: {(p.stderr or p.stdout).strip()[-600:]}")
    r = parse_sysbench(p.stdout)
    cpu = None if cpu0 is None else cpu1 - cpu0
    r.update({"cpu_s": cpu, "cpu_basis": None if cpu is None else "whole run (/proc)",
              "cpu_s_per_1k": cpu * 1000 / r["queries"] if cpu is not None and r["queries"]
              else None})
    return r
