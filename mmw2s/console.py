"""What the console shows: log levels of our packages, and the filters that drop the libraries'
warnings that are expected for what we do on purpose.

Each filter names the one logger and the one message it drops, so any other warning of the same
library still shows. (open_clip's "No pretrained weights loaded" for a tower we build from scratch
is dropped where we build it, in `models/dual_encoders.py`: `models` does not import `mmw2s`.)
"""
from __future__ import annotations

import abc
import io
import logging
import os
import re
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

PACKAGES = ("mmw2s",)  # models and data_pipelines install as mmw2s.models, mmw2s.data_pipelines
FORMAT = "%(levelname)s %(name)s: %(message)s"

# accelerate's `save_state` writes safetensors, which cannot hold two names for one tensor, so it
# keeps one name of each tied pair and warns "Removed shared tensor {...} while saving ... check by
# verifying that you don't receive any warning while reloading". Our captioners tie their output
# layer to their input embeddings (transformers' `tie_word_embeddings`), which `load_state` re-ties;
# tests/test_resume_exact.py checks that a resumed run ends bit-identical, the check it asks for.
TIED_WEIGHTS_LOGGER = "accelerate.utils.other"
# accelerate's logger adapter puts "[RANK n] " before the message
TIED_WEIGHTS_MESSAGE = re.compile(r"(\[RANK \d+\] )?Removed shared tensor \{.*\} while saving\.")


class DropMessages(logging.Filter):
    """A logging filter that drops the records whose message `pattern` matches (from its start)."""

    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def quiet_tied_weights_warning() -> None:
    """Drop accelerate's shared-tensor warning at every checkpoint (see above); idempotent."""
    logger = logging.getLogger(TIED_WEIGHTS_LOGGER)
    if not any(isinstance(f, DropMessages) and f.pattern is TIED_WEIGHTS_MESSAGE for f in logger.filters):
        logger.addFilter(DropMessages(TIED_WEIGHTS_MESSAGE))


def level_of(quiet: bool = False, verbose: bool = False) -> int:
    """The level of our packages: `-q` warnings and errors, `-v` debug too, else info."""
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


def setup_logging(level: int) -> None:
    """Our packages log at `level`; libraries (open_clip logs every load at INFO) only warn."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
    if not sys.stderr.isatty():
        quiet_library_bars()


def quiet_library_bars() -> None:
    """No Hugging Face progress bars ("Loading weights", "Writing model shards"): off a terminal
    they are carriage-return noise, and in `mmw2s run`'s workers the stage's own bar says enough."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is imported
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:  # transformers reads the hub's setting once, at its import
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------------------------
# Progress bars
#
# A stage asks `progress_bar(...)` for a bar, never tqdm itself, so that where the bar goes is
# decided here: on a terminal, tqdm draws it; off a terminal (CI, `| tee`, a file) a line every
# PROGRESS_EVERY_S seconds and one at the end, never a carriage return; in a worker process of
# `mmw2s run`, the updates go to the parent (`attach_worker`), which draws every running stage in
# one place (`mmw2s/experiment/display.py`), so two stages side by side never interleave their bars.

PROGRESS_EVERY_S = 30.0
_REMOTE_EVERY_S = 0.5  # a worker's updates to the parent: often enough for a live bar

_sink: Any = None  # the parent's queue, in a worker of `mmw2s run`
_stage = ""  # the stage this process runs, as the parent labels it


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 disable: bool = False, **tqdm_kwargs: Any) -> Any:
    """A progress bar with the part of tqdm's interface our stages use (`update`, `set_postfix`,
    `close`, `n`, `total`, `disable`, `with`); see above for where it is drawn."""
    if _sink is not None and not disable:
        return RemoteBar(total, desc, unit, initial)
    if disable or sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, **tqdm_kwargs)
    return LineBar(total, desc, unit, initial)


class _Bar(abc.ABC):
    """Counts like tqdm; subclasses say where an update goes (`_emit`) and how often (`every`)."""

    every = PROGRESS_EVERY_S
    disable = False

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.postfix: dict[str, str] = {}
        self.started = self.emitted = time.monotonic()
        self.first, self.closed = initial, False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.emitted >= self.every:
            self.emitted = now
            self._emit()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix.update({str(k): str(v) for k, v in {**(ordered_dict or {}), **kwargs}.items()})

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._emit()

    def rate(self) -> float | None:
        seconds = time.monotonic() - self.started
        return (self.n - self.first) / seconds if seconds > 0 else None

    def line(self) -> str:
        """`train clip: 60/120 it (50%) · 4.1 it/s · loss=2.3` (`done in 30 s` once closed)."""
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {self.unit}" + (f" ({self.n / self.total:.0%})" if self.total else "")]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.1f} {self.unit}/s")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        if self.closed:
            parts.append(f"done in {time.monotonic() - self.started:.0f} s")
        return " · ".join(parts)

    @abc.abstractmethod
    def _emit(self) -> None:
        """Show the bar's state (`line()`) where this kind of bar goes."""

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class LineBar(_Bar):
    """Off a terminal: one plain line every `every` seconds and one when closed."""

    def _emit(self) -> None:
        print(self.line(), file=sys.stderr, flush=True)


class RemoteBar(_Bar):
    """In a worker of `mmw2s run`: the bar's state goes to the parent, which draws it."""

    every = _REMOTE_EVERY_S

    def _emit(self) -> None:
        _sink.put(("bar", f"{os.getpid()}:{id(self)}", _stage,
                   {"desc": self.desc, "n": self.n, "total": self.total, "unit": self.unit, "rate": self.rate(),
                    "postfix": " ".join(f"{k}={v}" for k, v in self.postfix.items()), "closed": self.closed,
                    "line": self.line()}))


@contextmanager
def stage_label(name: str) -> Iterator[None]:
    """The stage this process runs while in the block: the parent labels its bars and lines so."""
    global _stage
    before, _stage = _stage, name
    try:
        yield
    finally:
        _stage = before


def running_stage() -> str:
    """The stage of `mmw2s run` this process runs, or "" (a stage run on its own)."""
    return _stage


class _QueueLogHandler(logging.Handler):
    """A worker's log records, formatted here, printed by the parent above its bars."""

    def __init__(self, queue: Any) -> None:
        super().__init__()
        self.queue = queue
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put(("text", _stage, self.format(record)))
        except Exception:  # noqa: BLE001 - logging must never raise (logging.Handler's own rule)
            self.handleError(record)


class _QueueWriter(io.TextIOBase):
    """A worker's stdout / stderr: whole lines to the parent. A carriage-return refresh (a
    library's own tqdm) sends only the state it ends in, when its line ends."""

    def __init__(self, queue: Any, original: Any) -> None:
        super().__init__()
        self.queue, self.original, self.buffer = queue, original, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            line = line.split("\r")[-1].rstrip()
            if line:
                self.queue.put(("text", _stage, line))
        return len(text)

    def fileno(self) -> int:  # a subprocess or faulthandler writes to the real stream
        return self.original.fileno()

    def isatty(self) -> bool:
        return False


def attach_worker(queue: Any, level: int) -> None:
    """In a worker process of `mmw2s run`: logs, prints and bars go to the parent through `queue`."""
    global _sink
    _sink = queue
    root = logging.getLogger()
    root.handlers[:] = [_QueueLogHandler(queue)]
    root.setLevel(logging.WARNING)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
    sys.stdout = _QueueWriter(queue, sys.__stdout__)
    sys.stderr = _QueueWriter(queue, sys.__stderr__)
    quiet_library_bars()
