"""`mmw2s browse`: a bootstrap run's decisions as a static HTML site that opens from disk.

    RUN/browse/index.html                the run's header and a sample of cards, equal shares per decision
    RUN/browse/pages/DECISION/NNNNN.html every sample, by decision (kept / dropped / nothing), paged
    RUN/browse/static/                   one stylesheet and one script, nothing fetched from the network
    RUN/browse/cache/SHARD.json          each shard's cards with their thumbnails, made once (`extract.py`)

Pages are rendered by Jinja2 with autoescape from the very records the shards' JSON holds: a
caption is untrusted text and shows as text, whatever HTML it contains. Filtering, sorting,
search and paging run in the page, driven by the URL hash (`index.html#decision=dropped&sort=web-desc`).

    mmw2s browse run=runs/demo/seed_0/bootstrap-1a2b3c4d            # -> .../browse/index.html
    mmw2s browse run=RUN serve=true port=8000                      # and serve it on 127.0.0.1
"""
from __future__ import annotations

import json
import logging
import math
import random
import shutil
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator

from mmw2s.browse.config import BrowseConfig
from mmw2s.browse.extract import DECISIONS, iter_cards, shard_record
from mmw2s.errors import StageError

log = logging.getLogger(__name__)

DECISION_LABELS = {"kept": "web caption kept", "dropped": "web caption dropped", "nothing": "nothing kept"}


def run(cfg: BrowseConfig) -> Path:
    """Build the site of `cfg.run` (and serve it with `serve=true`); returns its index.html."""
    index = build(cfg)
    print(f"Browser: {index}")
    if cfg.serve:
        from mmw2s.browse.serve import serve_forever

        serve_forever(index.parent, cfg.port)
    return index


def build(cfg: BrowseConfig) -> Path:
    """Extract what is not cached yet, then render every page; returns the path of index.html."""
    run_dir = Path(cfg.run)
    out = Path(cfg.out) if cfg.out else run_dir / "browse"
    urls = run_shards(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = extract_all(urls, out, cfg.thumb, cfg.workers)
    header = run_header(run_dir, out, records, cfg.page_size)
    env = environment()
    _copy_static(out)
    sampler = Reservoirs(cfg.samples, cfg.seed)
    write_listings(env, out, header, sampler.feed(iter_cards(out, urls)), cfg.page_size)
    sample = sampler.sample()
    total = header["totals"]["samples"]
    scope = (f"All {total} samples of the run." if len(sample) == total else
             f"A sample of {len(sample)} of the run's {total} samples, an equal share per decision "
             f"({', '.join(f'{n} {DECISION_LABELS[d]}' for d, n in _by_decision(sample).items())}); "
             "the full listings have every sample.")
    render(env, out / "index.html", kind="index", root="", h=header, cards=sample, scope=scope,
           title=f"mmw2s browse: {run_dir.name}", per_page=cfg.page_size, shown_total=len(sample))
    log.info("browser of %d samples (%d on the index) -> %s", total, len(sample), out / "index.html")
    return out / "index.html"


def run_shards(run_dir: Path) -> list[str]:
    """The run's output shards, in order; a clear error for a folder that is not a bootstrap run."""
    urls = sorted(str(p) for p in (run_dir / "shards").glob("*.tar"))
    if urls:
        return urls
    stages = sorted(p.parent for p in run_dir.glob("seed_*/*/shards") if any(p.glob("*.tar")))
    hint = ("; this looks like an experiment folder, its bootstrap stages are: "
            + ", ".join(str(s) for s in stages[:8])) if stages else ""
    raise StageError(f"no output shards in {run_dir / 'shards'}: run= must be a bootstrap run folder{hint}")


def extract_all(urls: list[str], out: Path, thumb: int, workers: int) -> list[dict]:
    """Every shard's cache record (cards left on disk), extracted in `workers` processes if > 0."""
    one = partial(shard_record, out=out, thumb=thumb)
    if workers and len(urls) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(urls))) as pool:
            return list(pool.map(one, urls))
    return [one(u) for u in urls]


# --------------------------------------------------------------------------------------------
# The header


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_header(run_dir: Path, out: Path, records: list[dict], page_size: int) -> dict:
    """What the top of every page says about the run: counts, models, thresholds, audit."""
    import yaml

    totals = {d: sum(r["counts"][d] for r in records) for d in DECISIONS}
    totals.update(samples=sum(totals.values()), shards=len(records))
    summary = _read_json(run_dir / "summary.json")
    provenance = next((r["provenance"] for r in records if r["provenance"]), None)
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    skipped: dict[str, int] = {}
    for r in records:
        for reason, n in r["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    audit, plot = _read_json(run_dir / "audit.json"), None
    if audit and (run_dir / "audit_web_scores.png").exists():
        plot = "audit_web_scores.png"
        shutil.copyfile(run_dir / "audit_web_scores.png", out / plot)
    return {
        "run": str(run_dir), "totals": totals,
        "fractions": {d: totals[d] / totals["samples"] if totals["samples"] else None for d in DECISIONS},
        "pages": {d: max(1, math.ceil(totals[d] / page_size)) for d in DECISIONS},
        "run_summary": summary, "provenance": provenance,
        "thresholds": (summary or {}).get("thresholds") or (provenance or {}).get("threshold"),
        "selection": config.get("selection") if isinstance(config.get("selection"), dict) else None,
        "skipped": skipped, "damaged": [r["shard"] for r in records if r["damaged"]],
        "thumb_errors": sum(r["thumb_errors"] for r in records), "audit": audit, "audit_plot": plot,
        "facets": {k: sorted({v for r in records for v in r["facets"][k]}) for k in ("source", "noise")},
    }


# --------------------------------------------------------------------------------------------
# Which cards go where


class Reservoirs:
    """A uniform sample of `n` cards per decision from a stream of any length (Algorithm R), so
    memory stays at O(n) for a run of any size."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.rng = n, random.Random(seed)
        self.pools: dict[str, list[dict]] = {d: [] for d in DECISIONS}
        self.seen = {d: 0 for d in DECISIONS}

    def feed(self, cards: Iterable[dict]) -> Iterator[dict]:
        """Pass `cards` through, keeping the sample."""
        for c in cards:
            d = c["decision"]
            self.seen[d] += 1
            if len(self.pools[d]) < self.n:
                self.pools[d].append(c)
            else:
                j = self.rng.randrange(self.seen[d])
                if j < self.n:
                    self.pools[d][j] = c
            yield c

    def sample(self) -> list[dict]:
        """`n` cards in run order, an equal share per decision where a decision has enough; a
        decision with fewer cards than its share gives the rest to the others."""
        shares = _shares({d: len(p) for d, p in self.pools.items()}, self.n)
        chosen = [c for d, p in self.pools.items() for c in self.rng.sample(p, shares[d])]
        return sorted(chosen, key=lambda c: c["order"])


def stratified_sample(cards: Iterable[dict], n: int, seed: int) -> list[dict]:
    """`n` cards at random (in run order), an equal share per decision (see `Reservoirs`)."""
    sampler = Reservoirs(n, seed)
    for _ in sampler.feed(cards):
        pass
    return sampler.sample()


def _shares(available: dict[str, int], n: int) -> dict[str, int]:
    """Split `n` as equally as the availability allows (water-filling)."""
    shares = {d: 0 for d in available}
    left = min(n, sum(available.values()))
    while left > 0:
        open_ = [d for d in available if shares[d] < available[d]]
        each = max(1, left // len(open_))
        for d in open_:
            give = min(each, available[d] - shares[d], left)
            shares[d] += give
            left -= give
    return shares


def _by_decision(cards: list[dict]) -> dict[str, int]:
    return {d: sum(c["decision"] == d for c in cards) for d in DECISIONS if any(c["decision"] == d for c in cards)}


def write_listings(env, out: Path, header: dict, cards: Iterator[dict], page_size: int) -> None:
    """`pages/DECISION/NNNNN.html`: every card of each decision in run order, `page_size` a page.

    Cards stream through one buffer per decision, so memory stays at a few pages.
    """
    for d in DECISIONS:
        folder = out / "pages" / d
        if folder.exists():
            shutil.rmtree(folder)  # a rebuild with another page size leaves no stale page behind
        folder.mkdir(parents=True)
    buffers: dict[str, list[dict]] = {d: [] for d in DECISIONS}
    numbers = {d: 0 for d in DECISIONS}

    def flush(d: str) -> None:
        numbers[d] += 1
        n, count = numbers[d], header["pages"][d]
        pager = {"number": n, "count": count, "prev": f"{n - 1:05d}.html" if n > 1 else None,
                 "next": f"{n + 1:05d}.html" if n < count else None}
        first, last = buffers[d][0]["order"], buffers[d][-1]["order"]
        render(env, out / "pages" / d / f"{n:05d}.html", kind="listing", listing=d, root="../../",
               h=header, cards=buffers[d], pager=pager, per_page=page_size, shown_total=None,
               title=f"{DECISION_LABELS[d]} · page {n} of {count}",
               scope=f"Every sample with {DECISION_LABELS[d]}, in run order: #{first} to #{last}.")
        buffers[d] = []

    for c in cards:
        buffers[c["decision"]].append(c)
        if len(buffers[c["decision"]]) == page_size:
            flush(c["decision"])
    for d in DECISIONS:
        if buffers[d]:
            flush(d)


# --------------------------------------------------------------------------------------------
# Rendering


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _score_attr(value: float | None) -> str:
    """A score as the page's script reads it from a data attribute ("" when there is none)."""
    return "" if value is None else f"{value:.6f}"


def environment():
    """The Jinja2 environment of every page: templates from this package, HTML autoescaped."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("mmw2s.browse", "templates"),
                             autoescape=True, undefined=jinja2.ChainableUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, score=_score, score_attr=_score_attr)
    env.globals.update(DECISIONS=DECISIONS, DECISION_LABELS=DECISION_LABELS, THRESHOLD_KEYS=(
        "mode", "web", "synthetic", "web_fraction", "synthetic_fraction", "calibration_samples"))
    return env


def render(env, path: Path, **context) -> None:
    """Render `page.html` with `context` to `path`."""
    path.write_text(env.get_template("page.html").render(**context), encoding="utf-8")


def _copy_static(out: Path) -> None:
    static = out / "static"
    static.mkdir(parents=True, exist_ok=True)
    for name in ("browse.css", "browse.js"):
        (static / name).write_bytes(resources.files("mmw2s.browse").joinpath("static", name).read_bytes())
