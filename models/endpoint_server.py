"""An inference server the job starts itself (vLLM, SGLang, or any command), on 127.0.0.1.

``ManagedServer.start()`` picks a free port, starts the command in a new process group with its
output in a log file, and waits until ``GET /health`` answers 200; a server that exits or is not
healthy within the timeout is an error quoting the tail of its log. ``stop()`` ends the whole
process group (vLLM's API server forks engine processes), first with SIGTERM, then SIGKILL; it runs
at ``close``, at interpreter exit, and, through PR_SET_PDEATHSIG, when the process that started it
dies (a killed Ray actor or rank). ``restart()`` replaces a dead server.

The command is a list of strings in which ``{python}``, ``{model}``, ``{host}`` and ``{port}`` are
filled in: ``{python}`` is the configured interpreter, so vLLM can live in its own virtualenv.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from .openai_client import http_get

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
LOG_TAIL_CHARS = 3000
COMMANDS = {
    "vllm": ["{python}", "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}",
             "--host", "{host}", "--port", "{port}"],
    "sglang": ["{python}", "-m", "sglang.launch_server", "--model-path", "{model}",
               "--host", "{host}", "--port", "{port}"],
}


class ServerStartError(RuntimeError):
    """A managed server that exited or did not become healthy in time (its log tail attached)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# Resolved here, in the parent: the child between fork and exec only calls it (no dlopen there).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _start_session_with_deathsig() -> None:  # pragma: no cover - runs in the child before exec
    """New process group, and SIGTERM to the server when the thread that started it dies (Linux's
    PR_SET_PDEATHSIG follows the starting thread: servers are started from long-lived threads)."""
    os.setsid()
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def gpu_env(device: str | None) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` that gives a server the GPU of a rank's ``device`` ("cuda:1"), read
    through the rank's own visible list (Ray and schedulers set one); nothing for a CPU device."""
    if not device or not str(device).startswith("cuda"):
        return {}
    index = int(str(device).partition(":")[2] or 0)
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return {"CUDA_VISIBLE_DEVICES": visible[index] if index < len(visible) else str(index)}


class ManagedServer:
    """One server process group on 127.0.0.1, started, health-checked, restarted and stopped."""

    def __init__(self, command: Sequence[str], model: str, python: str, health_timeout_s: float = 600.0,
                 log_dir: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> None:
        self.template, self.model, self.python = list(command), model, python
        self.health_timeout_s, self.env = health_timeout_s, env
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="mmw2s-server-"))
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.starts = 0
        self._lock = threading.Lock()
        atexit.register(self.stop)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"server-{os.getpid()}.log"

    def command(self, port: int) -> list[str]:
        """The command line with its placeholders filled in."""
        values = {"python": self.python, "model": self.model, "host": HOST, "port": str(port)}
        return [part.format(**values) for part in self.template]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> str:
        """Start the server and wait until it is healthy; returns its base URL (``.../v1``)."""
        self.port = free_port()
        argv = self.command(self.port)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting %s (log: %s)", " ".join(argv), self.log_path)
        with open(self.log_path, "ab") as out:
            try:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             preexec_fn=_start_session_with_deathsig,
                                             env={**os.environ, **(self.env or {})})
            except OSError as exn:
                raise ServerStartError(f"cannot start the server {argv[0]!r}: {exn} (captioner.endpoint.server_python "
                                       "names the interpreter; `make vllm-venv` builds .venv-vllm)") from exn
        self.starts += 1
        self._wait_healthy()
        return self.base_url

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.health_timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise ServerStartError(f"the server exited with code {code} before it was healthy; "
                                       f"the end of {self.log_path}:\n{self.log_tail()}")
            if http_get(f"http://{HOST}:{self.port}/health", timeout=2.0)[0] == 200:
                return
            time.sleep(0.25)
        self.stop()
        raise ServerStartError(f"the server was not healthy after {self.health_timeout_s:.0f} s "
                               f"(captioner.endpoint.health_timeout_s); the end of {self.log_path}:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The last characters of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return "(no log)"

    def restart(self) -> str:
        """Replace a dead server (a live one is kept); returns the base URL now serving."""
        with self._lock:
            if self.alive():
                return self.base_url
            log.warning("the managed server (pid %s) died; restarting it. The end of its log:\n%s",
                        self.proc.pid if self.proc else None, self.log_tail())
            self.stop()
            return self.start()

    def stop(self) -> None:
        """End the server's whole process group: SIGTERM, then SIGKILL after a grace period."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                # the leader is gone; engine processes it forked may still be in the group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break
        proc.poll()
