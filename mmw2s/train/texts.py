"""Which caption a training sample uses: the `text.*` settings of `mmw2s train`.

Sources (`text.source`):
- `txt`: the shard's caption (`{key}.txt`, else the JSON `caption`), i.e. the web alt-text of a
  raw shard or the chosen caption of a bootstrapped shard.
- `json`: a dotted JSON path (`text.field`, e.g. `mmw2s.chosen`); a null or missing value drops
  the sample (counted as `no_text`).
- `mix`: BLIP CapFilt's training set: per sample, a synthetic caption with probability
  `mix_synthetic_ratio`, else the web caption, each drawn from the captions the filter kept (or
  from all of them with `mix_kept_only=false`); when the drawn pool is empty the other one is used.
- `gold`: the synthetic world's ground-truth caption, for the gold-ceiling setting only.

The `truth` block of the synthetic world is evaluation-only. Every source except `gold` sees the
sample's JSON through `public_meta`, which removes it, so no JSON path can reach it; `gold_text`
is the only reader, and the config refuses `source=gold` unless `reads_truth: true` says so.
"""
from __future__ import annotations

import math
import random
from typing import Any, Optional

from mmw2s.train.config import TextConfig

TRUTH_KEY = "truth"
BLOCK_KEY = "mmw2s"  # the bootstrapped-shard block written by `mmw2s bootstrap`


def public_meta(meta: dict) -> dict:
    """The sample's JSON without the evaluation-only `truth` block."""
    return {k: v for k, v in meta.items() if k != TRUTH_KEY}


def get_dotted(meta: dict, path: str) -> Any:
    """`get_dotted({"a": {"b": 1}}, "a.b") == 1`; None when any part is missing."""
    node: Any = meta
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def gold_text(meta: dict) -> Optional[str]:
    """The ground-truth caption (gold-ceiling runs only; the single reader of `truth`)."""
    truth = meta.get(TRUTH_KEY)
    caption = truth.get("gold_caption") if isinstance(truth, dict) else None
    return caption if isinstance(caption, str) and caption.strip() else None


class TextSelector:
    """Picks `(caption, weight)` for a sample, or None when the sample has no usable text.

    The weight is the filter score named by `text.weight_field` (1.0 when unset, missing or
    null); with `source=mix` it is the score of the caption drawn. Only the `weighted` loss uses it.
    """

    def __init__(self, cfg: TextConfig) -> None:
        self.cfg = cfg

    def __call__(self, sample: dict, rng: random.Random) -> Optional[tuple[str, float]]:
        meta = sample.get("json") or {}
        source = self.cfg.source
        if source == "gold":
            text = gold_text(meta)
            return (text, 1.0) if text else None
        meta = public_meta(meta)
        if get_dotted(meta, "mmw2s.nothing_kept") is True:
            # A bootstrapped sample whose every caption the filter rejected (nothing_kept=flag) has
            # its rejected web caption as .txt (so that every sample has one): never train on it.
            return None
        if source == "mix":
            return self._mix(meta, sample.get("caption"), rng)
        text = sample.get("caption") if source == "txt" else get_dotted(meta, self.cfg.field)
        if not isinstance(text, str) or not text.strip():
            return None
        return text.strip(), self._weight(meta)

    def _weight(self, meta: dict) -> float:
        if not self.cfg.weight_field:
            return 1.0
        return _score(get_dotted(meta, self.cfg.weight_field))

    def _mix(self, meta: dict, fallback: Optional[str],
             rng: random.Random) -> Optional[tuple[str, float]]:
        web, synthetic = mix_pools(meta, fallback, self.cfg.mix_kept_only)
        # Draw first, then fall back: the ratio holds exactly whenever both pools are non-empty.
        first, second = (synthetic, web) if rng.random() < self.cfg.mix_synthetic_ratio else (web, synthetic)
        pool = first or second
        return rng.choice(pool) if pool else None


def mix_pools(meta: dict, fallback: Optional[str],
              kept_only: bool) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(web, synthetic) candidate captions with their filter scores from the `mmw2s` block.

    A shard without the block (not bootstrapped) has only its own caption, as a web caption.
    """
    block = meta.get(BLOCK_KEY)
    if not isinstance(block, dict):
        return ([(fallback, 1.0)] if fallback else []), []

    def usable(text: Any, kept: Any) -> bool:
        return isinstance(text, str) and bool(text.strip()) and (bool(kept) or not kept_only)

    web = []
    if usable(block.get("web_caption"), block.get("web_kept")):
        web.append((block["web_caption"].strip(), _score(block.get("web_score"))))
    listed = block.get("synthetic")  # untrusted JSON: anything but a list holds no captions
    synthetic = [(s["caption"].strip(), _score(s.get("score"))) for s in (listed if isinstance(listed, list) else [])
                 if isinstance(s, dict) and usable(s.get("caption"), s.get("kept"))
                 and not s.get("invalid")]  # empty / prompt echo: not a caption, kept or not
    return web, synthetic


def _score(value: Any) -> float:
    """A filter score from untrusted JSON as a loss weight: 1.0 unless a finite number (an integer
    of 400 digits does not fit a float)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return 1.0
    try:
        weight = float(value)
    except OverflowError:
        return 1.0
    return weight if math.isfinite(weight) else 1.0
