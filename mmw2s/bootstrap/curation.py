"""Curation filters of the bootstrap, before captioning: the `mmw2s curate` index (duplicates,
contamination) and a safety classifier, as one generator stage over the batch stream.

    batches -> curation_stage -> caption_stage -> score_stage -> decide_stage -> writer

For each `Batch`, a sample that the index names a duplicate or contaminated, or that the safety
classifier scores unsafe, is either dropped (a `Skip` under its reason, so the shard's stats
count it in `skipped_by_reason`, and the batch is cut to the rest before any captioning is paid
for) or flagged (kept, its reason in the `mmw2s.curation` block). Every batch of a curated run
carries each sample's verdict in `Batch.curation` (reason, what it duplicates, its safety score,
its hashes), which `decide_stage` copies into the block and the parquet metadata reads.

The index is read one shard at a time (`mmw2s.curate.index.shard_rows`: the shard's own row group),
and a sample it does not list is skipped as `not_in_curation_index`: an index made over other
inputs never lets an unchecked sample through.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from mmw2s.data_pipelines import Skip, shard_name

from mmw2s.bootstrap.curation_config import CurationConfig
from mmw2s.bootstrap.pipeline import Batch, BatchEvent
from mmw2s.curate.index import indexed_shards, is_curation_reason, shard_rows
from mmw2s.errors import StageError


@dataclass
class CuratedSkip(Skip):
    """A sample curation dropped: counted as any `Skip`, and carrying what the parquet row of a
    sample shard I/O could not read lacks: its input JSON and the curation verdict."""

    meta: dict = field(default_factory=dict)
    curation: dict = field(default_factory=dict)


def take(value: Any, rows: list[int]) -> Any:
    """`value` (a batch's model inputs: tensors, dicts of them, lists) restricted to `rows`, in order."""
    import torch

    if isinstance(value, torch.Tensor):
        return value[torch.as_tensor(rows, dtype=torch.long)]
    if isinstance(value, Mapping):  # dict, and transformers' BatchFeature / BatchEncoding (UserDicts)
        picked = {k: take(v, rows) for k, v in value.items()}
        try:
            return type(value)(picked)
        except TypeError:
            return picked
    if isinstance(value, (list, tuple)):
        return [value[i] for i in rows]
    return value


def subset(batch: Batch, rows: list[int]) -> Batch:
    """The batch cut to `rows` (nothing has been captioned or scored yet)."""
    return Batch(batch.url, [batch.samples[i] for i in rows], take(batch.inputs, rows))


class IndexLookup:
    """The `mmw2s curate` decisions of the shard being read (one shard's rows in memory at a time)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StageError(f"curation.index={path}: no such file (write it with `mmw2s curate`)")
        self.shards = indexed_shards(self.path)
        self.shard: str | None = None
        self.rows: dict[str, dict] = {}

    def row(self, url: str, key: str) -> dict | None:
        """The index row of one sample (None when the index does not list it)."""
        name = shard_name(url)
        if name != self.shard:
            if name not in self.shards:
                raise StageError(f"input shard {url} is not in curation index {self.path}: run `mmw2s curate` "
                                 "on the same input= as the bootstrap")
            self.shard, self.rows = name, {r["key"]: r for r in shard_rows(self.path, name)}
        return self.rows.get(key)


def index_verdict(row: dict | None) -> dict:
    """The `curation` fields of a sample from its index row."""
    if row is None:
        return {"reason": "not_in_curation_index"}
    if (row["reason"] or "").startswith("unreadable:"):  # the curate pass could not check it (other limits)
        return {"reason": "not_in_curation_index", "detail": row["reason"]}
    verdict: dict = {"reason": row["reason"] if is_curation_reason(row["reason"]) else None,
                     "sha256": row["sha256"], "phash": row["phash"]}
    if row.get("of_key") is not None:
        verdict["of"] = f"{row['of_shard']}/{row['of_key']}"
    if row.get("of_example") is not None:
        verdict.update(of_example=row["of_example"], match=row["match"])
    if row.get("distance") is not None:
        verdict["distance"] = row["distance"]
    return verdict


def _detail(verdict: dict) -> str:
    if "safety" in verdict and verdict["reason"] == "unsafe":
        return f"{verdict['safety']['label']} {verdict['safety']['score']:.4f}"
    return verdict.get("of") or verdict.get("of_example") or verdict.get("detail") or ""


def curation_stage(items: Iterable[BatchEvent], cfg: CurationConfig, safety: Any = None) -> Iterator[BatchEvent]:
    """Drop or flag each batch's curated samples (see the module doc); other records pass through.

    `safety` is a `models.SafetyClassifier` whose pixels the preprocessor put in `inputs["safety"]`,
    or None. A sample not in the index is always skipped; `cfg.action` decides for duplicates and
    contamination, `cfg.safety.action` for unsafe images (an index reason wins over safety).
    """
    lookup = IndexLookup(cfg.index) if cfg.index else None
    for item in items:
        if not isinstance(item, Batch):
            yield item
            continue
        verdicts = [index_verdict(lookup.row(item.url, key)) if lookup else {"reason": None} for key in item.keys]
        if safety is not None:
            scored = safety.score(item.inputs["safety"])
            for verdict, score, label in zip(verdicts, scored.scores, scored.labels):
                unsafe = score >= cfg.safety.threshold
                verdict["safety"] = {"score": score, "label": label, "unsafe": unsafe}
                if unsafe and verdict["reason"] is None:
                    verdict["reason"] = "unsafe"
        keep = []
        for i, (sample, verdict) in enumerate(zip(item.samples, verdicts)):
            reason = verdict["reason"]
            action = cfg.safety.action if reason == "unsafe" else cfg.action
            if reason == "not_in_curation_index" or (reason is not None and action == "drop"):
                yield CuratedSkip(item.url, sample["__key__"], reason, _detail(verdict),
                                  meta=sample.get("json") or {}, curation=verdict)
                continue
            keep.append(i)
        if keep:
            kept = item if len(keep) == len(item) else subset(item, keep)
            kept.curation = [verdicts[i] for i in keep]
            yield kept


def curated(items: Iterable[BatchEvent], cfg: Any, models: Any) -> Iterable[BatchEvent]:
    """`curation_stage` when the bootstrap config `cfg` asks for curation, else `items` unchanged."""
    if not cfg.curation.active:
        return items
    safety = getattr(models, "safety", None)
    if cfg.curation.safety.name is not None and safety is None:  # never skip a configured filter silently
        raise StageError(f"curation.safety.name={cfg.curation.safety.name} is set but the models hold no classifier")
    return curation_stage(items, cfg.curation, safety)


def fingerprint_keys(cfg: Any) -> dict:
    """What curation adds to the run fingerprint: nothing when off (older runs keep theirs), else its
    config and the index's SHA-256 (a new index over the same inputs makes other shards)."""
    import hashlib
    from dataclasses import asdict

    if not cfg.curation.active:
        return {}
    keys = asdict(cfg.curation)
    if cfg.curation.index:
        digest = hashlib.sha256()
        with open(cfg.curation.index, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        keys["index"] = digest.hexdigest()  # the content decides, not where it lies
    return {"curation": keys}
