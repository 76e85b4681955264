"""SIGTERM and Ctrl-C: stop cleanly, leave no process behind, say how to resume.

Schedulers (Slurm, Kubernetes, a preempting cloud) stop a job with SIGTERM, whose default action
kills the process on the spot: no `finally` runs, the current shard's `.partial` file stays, and
data-loader workers blocked on a full queue outlive their parent. `handle_sigterm` turns SIGTERM
into `Terminated`, a `KeyboardInterrupt`, so that it unwinds exactly as Ctrl-C does: writers
abort their partial shards, DataLoaders stop their workers, servers the job started are stopped
by their context managers. `stop_descendants` is the net under that: whatever child process is
still alive afterwards is terminated, then killed.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where the signal arrived."""

    exit_code = 128 + signal.SIGTERM  # 143, what a shell reports for a job killed by SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    raise Terminated()


def handle_sigterm() -> None:
    """Raise `Terminated` in the main thread on SIGTERM (call once, from the entry point)."""
    signal.signal(signal.SIGTERM, _raise_terminated)


def children(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc; empty where there is no /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # the name field may hold spaces and parentheses: the ppid follows the last ')'
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid`."""
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def stop_descendants(grace_s: float = 5.0) -> list[int]:
    """SIGTERM every process below this one, SIGKILL those alive after `grace_s`; returns their PIDs."""
    pids = descendants(os.getpid())
    for pid in pids:
        _send(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            _send(pid, signal.SIGKILL)
    return pids


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    """Whether `pid` still runs; a zombie child of ours is reaped (it has ended)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:  # not our child: ask /proc
        pass
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
