"""engine=local: this process, or the ranks of `accelerate launch`, each on a static share.

`accelerate launch --num_processes N -m mmw2s.cli bootstrap ...` (on a machine without GPUs add
`--multi_gpu`, since accelerate's `--cpu` starts a single process) gives rank r the input shards
`urls[r::N]`: the split is fixed before any work, so ranks agree on it without talking. Rank 0
writes the run's files; a rank that dies leaves its shards to a rerun (engine=ray does not).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from pathlib import Path
from typing import Any

from mmw2s.bootstrap.config import BootstrapConfig
from mmw2s.bootstrap.pipeline import OutputSample
from mmw2s.errors import StageError
from mmw2s.bootstrap.shard import (ShardJob, bootstrap_shards, cpu_threads, expected_samples, is_done,
                                   unreadable_shards)

log = logging.getLogger(__name__)


class LocalEngine:
    """One process or `accelerate launch` ranks; see the module docstring."""

    def __init__(self, cfg: BootstrapConfig) -> None:
        from accelerate import PartialState

        from mmw2s.bootstrap.capfilt import CapFilt

        self.cfg = cfg
        self.state = PartialState(cpu=cfg.device == "cpu")
        if cfg.device == "cuda" and self.state.device.type != "cuda":
            raise StageError("device=cuda, but this process sees no CUDA device (device=auto falls back to CPU)")
        # Loaded on first use: a rerun of a finished run (thresholds saved, shards complete) loads nothing.
        self.local_models = functools.cache(lambda: CapFilt.from_config(cfg, self.state.device))
        self._threads = contextlib.ExitStack()

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def __enter__(self) -> "LocalEngine":
        self._threads.enter_context(cpu_threads(self.cfg, self.state.device))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._threads.close()

    def run_shards(self, urls: list[str], job: ShardJob) -> tuple[list[dict], dict | None]:
        """This rank's incomplete shards; returns every rank's `{rank, images, seconds}` and the
        ceiling (rank 0, `measure_ceiling=true`)."""
        from accelerate.utils import gather_object

        cfg, state = self.cfg, self.state
        mine = urls[state.process_index::state.num_processes]  # split before checking: ranks agree
        todo = [u for u in mine if not is_done(Path(cfg.out), u, job.fingerprint, cfg.verify)]
        log.info("rank %d/%d: %d input shards, %d complete, %d to do", state.process_index,
                 state.num_processes, len(mine), len(mine) - len(todo), len(todo))
        models = self.local_models() if todo else None  # loaded before the clock, as on Ray's actors
        start = time.perf_counter()
        stats = self._bootstrap(todo, job, models) if todo else []
        images = sum(s["decoded"] for s in stats)
        seconds = time.perf_counter() - start
        ranks = gather_object([{"rank": state.process_index, "images": images, "seconds": round(seconds, 3),
                                "unreadable": unreadable_shards(stats)}])
        ceiling = None
        if cfg.measure_ceiling and self.is_main and images:
            from mmw2s.bootstrap.ceiling import measure_ceiling

            ceiling = measure_ceiling(self.local_models(), todo, cfg, images=min(images, cfg.ceiling_images))
            ceiling["ratio"] = round(images / seconds / ceiling["images_per_s"], 3)
        return ranks, ceiling

    def _bootstrap(self, todo: list[str], job: ShardJob, models: Any) -> list[dict]:
        """Bootstrap `todo` in this process with a progress bar; returns the shards' stats."""
        bar = progress_bar(todo, self.cfg.progress and self.state.is_local_main_process)
        counts = {"images": 0, "kept": 0}

        def count(sample: OutputSample) -> None:
            counts["images"] += 1
            counts["kept"] += not sample.json["mmw2s"]["nothing_kept"]
            bar.update(1)
            if counts["images"] % 64 == 0:  # cheap enough: the bar redraws at most ~10 times a second anyway
                bar.set_postfix(kept=f"{counts['kept'] / counts['images']:.1%}", refresh=False)

        stats = list(bootstrap_shards(todo, job, models, count))
        bar.set_postfix(kept=f"{counts['kept'] / max(counts['images'], 1):.1%}")
        bar.close()
        return stats


def progress_bar(urls: list[str], show: bool):
    """A tqdm bar in images (img/s shown by tqdm); its total comes from input stats when present."""
    from mmw2s.console import progress_bar as tqdm  # drawn by tqdm, as lines, or by `mmw2s run`

    counts = [expected_samples(u) for u in urls]
    total = sum(counts) if all(c is not None for c in counts) else None
    return tqdm(total=total, unit="img", desc="bootstrap", disable=not show, smoothing=0.1)
