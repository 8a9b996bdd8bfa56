"""procs: the servers a benchmark starts, and making sure they all stop.

Owns: spawning a long-running child (its own session, a log file, SIGKILL if this script dies:
PR_SET_PDEATHSIG), the registry of everything started, and stopping it all (SIGTERM, then SIGKILL)
on normal exit, on an exception, on SIGINT/SIGTERM and at interpreter exit. Only processes this
script started are ever signalled, by their own pid / process group.
"""
import atexit
import ctypes
import os
import signal
import subprocess
import sys
import time

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_RUNNING = []


def _die_with_parent():
    # Runs in the child between fork and exec: ask the kernel to SIGKILL it when we die, so a
    # benchmark killed with SIGKILL leaves no server behind.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Child:
    """A server process started by the benchmark."""

    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        self.stopped = False
        _RUNNING.append(self)

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout=15.0):
        """SIGTERM to the child's process group, SIGKILL after `timeout` seconds. Idempotent."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self in _RUNNING:
            _RUNNING.remove(self)
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
        else:
            # Leftovers of the group, if any. A process group id is not reused while any member
            # lives, so this can only reach processes we started.
            self._signal(signal.SIGKILL)
        self._log.close()
        return self.proc.returncode

    def _signal(self, sig):
        try:
            os.killpg(self.pid, sig)  # the group is ours: start_new_session made pid its leader
        except ProcessLookupError:
            pass


def stop_all():
    """Stops every child still running, newest first."""
    while _RUNNING:
        child = _RUNNING[-1]
        try:
            child.stop()
        except Exception as e:  # keep stopping the others
            print(f"bench: could not stop {child.name} (pid {child.pid}): {e}", file=sys.stderr)
            if child in _RUNNING:
                _RUNNING.remove(child)


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


def install_cleanup():
    """Stops all children at exit and on SIGINT/SIGTERM/SIGHUP."""
    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def run(argv, timeout, env=None, cwd=None):
    """Runs a short command to completion (its own session, killed with us), capturing output.
    Returns a CompletedProcess; a timeout kills its whole group and raises TimeoutError."""
    p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                         start_new_session=True, preexec_fn=_die_with_parent)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        raise TimeoutError(f"{argv[0]} did not finish within {timeout:.0f} s")
    return subprocess.CompletedProcess(p.args, p.returncode, out.decode(errors="replace"),
                                       err.decode(errors="replace"))


def sleep_until(predicate, timeout, step=0.1):
    """Polls `predicate()` until it is true or `timeout` seconds passed; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)
