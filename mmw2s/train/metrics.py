"""Training metrics: `metrics.jsonl` (one line per logged step), TensorBoard and `loss.png`.

A resumed run first cuts both logs back to its checkpoint's step (`truncate_jsonl`, TensorBoard's
`purge_step`), so that the steps a killed run logged after its last checkpoint are not logged twice
and the loss curve continues where the checkpoint left off.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
TENSORBOARD_DIR = "tensorboard"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Every complete JSON line of `path` (a line cut short by a kill is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_jsonl(path: str | os.PathLike, last_step: int) -> int:
    """Keep the lines of `path` with `step <= last_step` (rewritten atomically); returns how many."""
    path = Path(path)
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    if path.exists():
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    return len(rows)


def loss_history(out: str | os.PathLike) -> list[tuple[int, float]]:
    """`[(step, loss), ...]` of a run folder, in step order (one entry per logged step).

    Logged steps whose every optimizer step was skipped as non-finite (loss null) are left out.
    """
    rows = read_jsonl(Path(out) / METRICS_FILE)
    return [(int(r["step"]), float(r["loss"])) for r in rows if r.get("loss") is not None]


class MetricsLogger:
    """Writes metric rows to JSONL and TensorBoard; construct it on the main process only.

    `resume_step` (the checkpoint's step, or 0 for a fresh run) cuts both logs back to it.
    `static` fields (e.g. `reads_truth`) are added to every JSONL row.
    """

    def __init__(self, out: str | os.PathLike, resume_step: int = 0,
                 static: Optional[dict[str, Any]] = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported late: pulls in tensorboard

        self.out = Path(out)
        self.path = self.out / METRICS_FILE
        self.static = dict(static or {})
        if resume_step > 0:
            kept = truncate_jsonl(self.path, resume_step)
            log.info("resuming metrics at step %d (%d logged steps kept)", resume_step, kept)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        # purge_step drops TensorBoard events at or after it that a killed run left behind.
        self.writer = SummaryWriter(str(self.out / TENSORBOARD_DIR),
                                    purge_step=resume_step + 1 if resume_step > 0 else None)
        self._file = open(self.path, "a")

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Append one row for `step`; numeric values also go to TensorBoard as `train/NAME`."""
        row = {"step": step, **values, **self.static}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"train/{name}", value, step)

    def note(self, tag: str, text: str) -> None:
        """A free-text note in TensorBoard (e.g. that the run read the truth block)."""
        self.writer.add_text(tag, text)

    def close(self) -> None:
        """Flush and close both logs."""
        self._file.close()
        self.writer.close()


def plot_loss(out: str | os.PathLike) -> Optional[Path]:
    """Draw `out/loss.png` from `out/metrics.jsonl`; None when nothing was logged."""
    history = loss_history(out)
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    steps, losses = zip(*history)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, losses)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(Path(out).name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) / PLOT_FILE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
