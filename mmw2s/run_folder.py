"""A stage's run folder: its input shards, the folder itself, and one writer at a time.

`input_urls` expands the input spec (outputs are named after input shards, so their names must
differ), `make_run_folder` creates `out=`, both with one-line errors. `hold_run_folder` is an
exclusive kernel lock on `OUT/.mmw2s.lock`:

Two jobs writing one run folder mix their outputs (one config's shards beside another's, every
shard computed twice). A job therefore holds `fcntl.flock` on the folder's lock file for as long as
it runs. The kernel releases the lock when the holder's process ends, however it ends (kill -9
included), so a killed job never leaves a stale lock; the file's content (PID, host, the settings
that decide the output) only tells the next job who holds it.

A second job with *other* settings is refused at once, naming the holder. A second job with the
*same* settings waits for the holder to finish, then finds its shards complete and redoes
nothing: no shard is computed twice. (Joining by claiming shards would finish sooner, but needs a
claim protocol that survives kills; waiting needs none.) Ranks of one `accelerate launch` job
and the actors of a Ray job write under their driver's lock: only the main process takes it.

`flock` is local to one machine's kernel (on NFS it is emulated with POSIX locks, which Linux
supports since 2.6.12); jobs on several hosts writing one shared folder rely on that emulation.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from mmw2s.errors import InputError, StageError

log = logging.getLogger(__name__)

LOCK_FILE = ".mmw2s.lock"


def input_urls(spec: str) -> list[str]:
    """The input shard URLs; their names must be distinct since outputs are named after them."""
    from mmw2s.data_pipelines import expand_urls, shard_name

    try:
        urls = expand_urls(spec)
    except FileNotFoundError as exn:
        raise InputError(f"input={spec}: {exn}") from None
    names = [shard_name(u) for u in urls]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise InputError(f"input shards share names {clashes[:5]}: outputs are named after input shards, "
                         "so process each folder into its own out=")
    if not urls:
        raise InputError(f"no input shards in {spec!r}")
    return urls


def make_run_folder(out: Path, *subfolders: str) -> None:
    """`out/` and its `subfolders`, with a one-line error when `out` (or a folder above it) is a file
    or cannot be created."""
    try:
        for sub in subfolders or (".",):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"out={out} is not a folder (a file of that name, or above it, exists)") from None
    except PermissionError as exn:
        raise StageError(f"out={out}: cannot create the run folder: {exn.strerror}") from None


@contextlib.contextmanager
def hold_run_folder(out: str | os.PathLike, settings: str) -> Iterator[None]:
    """Hold `out`'s lock while the block runs; `settings` is a hash of what decides the output."""
    path = Path(out) / LOCK_FILE
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _wait_or_refuse(file, path, settings)
        file.seek(0)
        file.truncate()
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "settings": settings,
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}, file)
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _wait_or_refuse(file, path: Path, settings: str) -> None:
    """The lock is held: refuse a job of other settings, or wait for one of the same."""
    holder = _holder(path)
    who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("settings") != settings:
        raise StageError(f"{path.parent} is in use by another job with other settings ({who}, started "
                         f"{holder.get('started', '?')}: {holder.get('command', '?')}); use another out= or "
                         "wait for that job to end")
    log.warning("%s is in use by %s with the same settings: waiting for it to end, then this run "
                "redoes only what it left incomplete", path.parent, who)
    fcntl.flock(file, fcntl.LOCK_EX)


def _holder(path: Path, tries: int = 20) -> dict:
    """What the holder wrote into the lock file (it writes right after locking: retry briefly)."""
    for _ in range(tries):
        try:
            data = json.loads(path.read_text() or "null")
            if isinstance(data, dict):
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}
