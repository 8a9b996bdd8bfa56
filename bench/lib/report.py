"""report: medians, plain-text tables, the machine description and JSON output of a scenario.

Owns: how every scenario prints (aligned text tables on stdout, or on stderr when the JSON goes
to stdout), the `machine` block stored with every result, and writing the JSON (stdout with
`--json -`, a file with `--json FILE`, bench/results/<scenario>-<time>.json with --save).
"""
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def machine():
    os_name = "?"
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {"cores": os.cpu_count(), "cpu": model, "mem_gib": round(mem_kib / 1048576, 1),
            "kernel": platform.release(), "os": os_name}


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def fmt(v, digits=0):
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def table(headers, rows, out):
    """Prints rows (lists of strings) under headers, first column left-aligned, others right;
    a row of one string spans the rest of the line after its first cell."""
    widths = [len(h) for h in headers]
    for r in rows:
        if len(r) == len(headers):
            widths = [max(w, len(c)) for w, c in zip(widths, r)]
        else:
            widths[0] = max(widths[0], len(r[0]))

    def line(cells):
        first = cells[0].ljust(widths[0])
        if len(cells) != len(headers):
            return f"{first}  {' '.join(cells[1:])}".rstrip()
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    print(line(headers), file=out)
    for r in rows:
        print(line(r), file=out)


class Output:
    """Where tables and JSON go. `--json -` sends JSON to stdout and tables to stderr."""

    def __init__(self, json_dest, save, scenario):
        self.json_dest = json_dest
        self.save = save
        self.scenario = scenario
        self.text = sys.stderr if json_dest == "-" else sys.stdout

    def write_json(self, doc):
        text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
        if self.json_dest == "-":
            sys.stdout.write(text)
        elif self.json_dest:
            Path(self.json_dest).write_text(text)
            print(f"JSON written to {self.json_dest}", file=self.text)
        if self.save:
            RESULTS.mkdir(exist_ok=True)
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = RESULTS / f"{self.scenario}-{stamp}.json"
            path.write_text(text)
            print(f"JSON saved to {path}", file=self.text)
