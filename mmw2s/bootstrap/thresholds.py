"""Filter thresholds: absolute values, or the top fraction calibrated on a sample of the input.

A calibrated threshold is written to `OUT/thresholds.json` before the first shard is processed and
read back by every later run (a resume, another rank), so all output shards of one run folder are
cut at the same value even when the calibration sample would now come out differently.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from mmw2s.data_pipelines import StateFileError, read_state_json, write_json_atomic

from mmw2s.errors import StageError

THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class Thresholds:
    """The values a caption's filter score must reach (>=) to be kept, per caption source."""

    mode: str
    web: float
    synthetic: float
    web_fraction: float | None = None
    synthetic_fraction: float | None = None
    calibration_samples: int | None = None

    def record(self) -> dict:
        """The `threshold` entry of a bootstrapped sample's `mmw2s` block."""
        return {"mode": self.mode, "web": self.web, "synthetic": self.synthetic}

    def to_json(self) -> dict:
        """Everything, for `thresholds.json` and the run summary."""
        return asdict(self)


def top_fraction_threshold(scores: Sequence[float], fraction: float) -> float:
    """The score that keeps the top `fraction` of `scores` with a `>=` test.

    The k = round(fraction * n) best scores (at least one) are kept; ties at the cut keep a little
    more, as a `>=` rule must.
    """
    if not scores:
        raise ValueError("cannot calibrate a threshold on zero scores (is the input empty?)")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"a kept fraction must be in (0, 1], got {fraction}")
    ranked = sorted((float(s) for s in scores), reverse=True)
    k = min(len(ranked), max(1, round(fraction * len(ranked))))
    return ranked[k - 1]


def calibrate(web_scores: Sequence[float], synthetic_scores: Sequence[float], web_fraction: float,
              synthetic_fraction: float, samples: int) -> Thresholds:
    """Top-fraction thresholds for web and synthetic captions from scores of a calibration sample."""
    web = top_fraction_threshold(web_scores, web_fraction)
    # A filter-only run (no captioner) has no synthetic scores; its synthetic threshold is unused
    # and recorded as the web one rather than as a made-up value.
    synthetic = top_fraction_threshold(synthetic_scores, synthetic_fraction) if synthetic_scores else web
    return Thresholds(mode="top_fraction", web=web, synthetic=synthetic,
                      web_fraction=web_fraction, synthetic_fraction=synthetic_fraction,
                      calibration_samples=samples)


def save_thresholds(folder: str | Path, thresholds: Thresholds) -> Path:
    """Write `FOLDER/thresholds.json` atomically and return its path; a non-finite threshold is
    refused, never written (strict JSON would store it as null and block every later run)."""
    path = Path(folder) / THRESHOLDS_FILE
    for name in ("web", "synthetic"):
        if not math.isfinite(getattr(thresholds, name)):
            raise StageError(f"refusing to write {path}: threshold '{name}' is {getattr(thresholds, name)}")
    write_json_atomic(path, thresholds.to_json())
    return path


def load_thresholds(folder: str | Path) -> Thresholds | None:
    """The thresholds of an earlier run in `folder`, or None when there are none yet.

    A file that is corrupt, or holds a threshold that is not a finite number, raises a
    `StageError` naming it: the user deletes it (a rerun then sets the thresholds anew)."""
    path = Path(folder) / THRESHOLDS_FILE
    if not path.exists():
        return None
    fix = "delete it to set the thresholds anew (complete shards made with other thresholds are then refused)"
    try:
        data = read_state_json(path)
        values = [data[name] for name in ("web", "synthetic")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise StateFileError(path, f"thresholds must be finite numbers, found web={values[0]!r}, "
                                       f"synthetic={values[1]!r}")
        return Thresholds(**data)
    except StateFileError as exn:
        raise StageError(f"{exn}; {fix}") from None
    except (KeyError, TypeError) as exn:
        raise StageError(f"{path}: not a thresholds file ({type(exn).__name__}: {exn}); {fix}") from None
