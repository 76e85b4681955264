"""What the parent of `mmw2s run` shows while stages run side by side in worker processes.

Workers send their log records, printed lines and progress bars here (`mmw2s.console.attach_worker`)
instead of writing to the terminal themselves. On a terminal the running stages are one live
region, one bar per stage (rich's `Progress`), with every line printed above it; off a terminal
(CI, `| tee`, a file) each line is printed as it comes, and each open bar as one plain line every
`every` seconds and once when it ends: no carriage returns.
"""
from __future__ import annotations

import queue as queues
import sys
import threading
import time
from typing import Any, TextIO

from mmw2s.console import PROGRESS_EVERY_S


class StageDisplay:
    """Use as a context manager around the worker pool; hand `self.queue` to the workers."""

    def __init__(self, context: Any, stream: TextIO | None = None, tty: bool | None = None,
                 every: float = PROGRESS_EVERY_S) -> None:
        self.queue = context.Queue()
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.bars: dict[str, tuple[str, dict]] = {}  # bar id -> (stage, state)
        self.tasks: dict[str, Any] = {}  # bar id -> rich task id
        self.progress: Any = None
        self.thread = threading.Thread(target=self._loop, name="stage-display", daemon=True)

    def __enter__(self) -> "StageDisplay":
        if self.tty:
            self.progress = _rich_progress(self.stream)
            self.progress.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.progress is not None:
            self.progress.stop()

    def _loop(self) -> None:
        shown = time.monotonic()
        while True:
            try:
                message = self.queue.get(timeout=1.0)
            except queues.Empty:
                message = ()
            if message is None:
                return
            if message:
                self.handle(message)
            if not self.tty and time.monotonic() - shown >= self.every:
                shown = time.monotonic()
                for stage, state in self.bars.values():
                    self.print(f"  [{stage}] {state['line']}")

    def handle(self, message: tuple) -> None:
        """One message of a worker: `("text", stage, line)` or `("bar", id, stage, state)`."""
        if message[0] == "text":
            _, stage, line = message
            self.print(f"[{stage}] {line}" if stage else line)
        elif message[0] == "bar":
            _, bar, stage, state = message
            self._bar(bar, stage, state)

    def _bar(self, bar: str, stage: str, state: dict) -> None:
        if state["closed"]:
            self.bars.pop(bar, None)
            if bar in self.tasks:
                self.progress.remove_task(self.tasks.pop(bar))
            self.print(f"  [{stage}] {state['line']}")
            return
        self.bars[bar] = (stage, state)
        if self.progress is None:
            return
        rate = f"{state['rate']:.1f} {state['unit']}/s" if state["rate"] else ""
        fields = {"stage": stage, "rate": rate, "postfix": state["postfix"]}
        if bar not in self.tasks:
            self.tasks[bar] = self.progress.add_task(state["desc"], total=state["total"], **fields)
        self.progress.update(self.tasks[bar], completed=state["n"], total=state["total"], **fields)

    def print(self, line: str) -> None:
        """A line above the bars (or just a line, off a terminal)."""
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)


def _rich_progress(stream: TextIO) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.fields[stage]}"), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                    TextColumn("{task.fields[postfix]}"), console=Console(file=stream, force_terminal=True),
                    transient=True)
