"""Parquet metadata beside each output shard: `NAME.parquet`, one row per input sample.

img2dataset and DataComp write a parquet beside every shard so that a question about the data
is a DuckDB or pandas query, not a pass over tars. Ours holds every input sample of the shard,
written or not:

    shard, key, url, width, height     the input's (width / height: its img2dataset JSON)
    web_caption, web_score, web_kept   the web caption and the filter's verdict
    synthetic                          list of {caption, score, kept, invalid}
    chosen, chosen_source, chosen_score  the training caption (.txt), or null
    decision                           written | dropped (nothing kept, nothing_kept=drop) | skipped
    reason, detail                     why not written as usual: nothing_kept, or the skip reason
                                       (corrupt_image, duplicate_near, contaminated:BENCH, unsafe, ...)
    curation_reason, duplicate_of, of_example, safety_score, safety_unsafe   (curated runs)
    sha256, phash                      of the image (phash from the curation index, when given)

Atomic with the shard: written to `NAME.parquet.partial` and renamed before the tar is renamed
and `NAME_stats.json` (the completion mark) is written, so a complete shard always has its
parquet; `has_metadata` is part of the resume rule, so a shard without one is redone.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from mmw2s.data_pipelines.image_hash import sha256_hex
from mmw2s.data_pipelines import Skip, clip_text, shard_name

from mmw2s.bootstrap.pipeline import OutputSample

PARTIAL = ".partial"


def parquet_path(tar_path: str | os.PathLike) -> Path:
    """`DIR/00003.tar` -> `DIR/00003.parquet`."""
    path = Path(tar_path)
    return path.with_name(shard_name(str(path)) + ".parquet")


def has_metadata(tar_path: str | os.PathLike) -> bool:
    """Whether the parquet of an output shard exists (a shard from before it existed is redone)."""
    return parquet_path(tar_path).exists()


def metadata_schema():
    """The pyarrow schema of `NAME.parquet`."""
    import pyarrow as pa

    synthetic = pa.struct([("caption", pa.string()), ("score", pa.float64()), ("kept", pa.bool_()),
                           ("invalid", pa.string())])
    return pa.schema([
        ("shard", pa.string()), ("key", pa.string()), ("url", pa.string()),
        ("width", pa.int64()), ("height", pa.int64()),
        ("web_caption", pa.string()), ("web_score", pa.float64()), ("web_kept", pa.bool_()),
        ("synthetic", pa.list_(synthetic)),
        ("chosen", pa.string()), ("chosen_source", pa.string()), ("chosen_score", pa.float64()),
        ("decision", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
        ("curation_reason", pa.string()), ("duplicate_of", pa.string()), ("of_example", pa.string()),
        ("safety_score", pa.float64()), ("safety_unsafe", pa.bool_()),
        ("sha256", pa.string()), ("phash", pa.string()),
    ])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def sample_row(sample: OutputSample) -> dict:
    """The row of a decided output sample (written, flagged or dropped), from its JSON record."""
    meta = sample.json
    block = meta["mmw2s"]
    curation = block.get("curation") or {}
    safety = curation.get("safety") or {}
    return {
        "shard": shard_name(sample.url), "key": sample.key, "url": _text(meta.get("url")),
        "width": _int(meta.get("width")), "height": _int(meta.get("height")),
        "web_caption": block["web_caption"], "web_score": block["web_score"], "web_kept": block["web_kept"],
        "synthetic": [{"caption": s["caption"], "score": s["score"], "kept": s["kept"], "invalid": s.get("invalid")}
                      for s in block["synthetic"]],
        "chosen": block["chosen"], "chosen_source": block["chosen_source"], "chosen_score": block["chosen_score"],
        "decision": "dropped" if sample.drop else "written",
        "reason": "nothing_kept" if block["nothing_kept"] else None, "detail": None,
        "curation_reason": curation.get("reason"), "duplicate_of": curation.get("of"),
        "of_example": curation.get("of_example"), "safety_score": safety.get("score"),
        "safety_unsafe": safety.get("unsafe"),
        "sha256": sha256_hex(sample.image_bytes), "phash": curation.get("phash"),
    }


def skip_row(record: Skip) -> dict:
    """The row of a sample that was never decided (unreadable, or dropped by curation: then with its
    input fields and verdict, `curation.CuratedSkip`)."""
    meta, curation = getattr(record, "meta", None) or {}, getattr(record, "curation", None) or {}
    safety = curation.get("safety") or {}
    return {"shard": shard_name(record.url), "key": record.key, "decision": "skipped", "reason": record.reason,
            "detail": clip_text(record.detail) or None, "synthetic": [], "url": _text(meta.get("url")),
            "width": _int(meta.get("width")), "height": _int(meta.get("height")),
            "web_caption": _text(meta.get("caption")), "curation_reason": curation.get("reason"),
            "duplicate_of": curation.get("of"), "of_example": curation.get("of_example"),
            "safety_score": safety.get("score"), "safety_unsafe": safety.get("unsafe"),
            "sha256": curation.get("sha256"), "phash": curation.get("phash")}


class ShardMetadata:
    """Rows of the open output shards by input URL; `finish` writes one shard's parquet."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.rows: dict[str, list[dict]] = {}

    def add(self, sample: OutputSample) -> None:
        """Record a decided sample (written or not)."""
        self.rows.setdefault(sample.url, []).append(sample_row(sample))

    def skip(self, record: Skip) -> None:
        """Record a skipped sample."""
        self.rows.setdefault(record.url, []).append(skip_row(record))

    def discard(self, url: str) -> None:
        """Forget the rows of a shard that gets no output (its source could not be read)."""
        self.rows.pop(url, None)

    def finish(self, url: str, stats: dict) -> Path:
        """Write `NAME.parquet` atomically (call before the tar is closed); add its row count and the
        flagged samples by reason to `stats`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.rows.pop(url, [])
        path = self.folder / f"{shard_name(url)}.parquet"  # beside writer.output_path's NAME.tar
        partial = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL}")  # two writers of a shard never share it
        try:
            pq.write_table(pa.Table.from_pylist(rows, schema=metadata_schema()), partial, compression="zstd")
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)  # a full disk must not leave half a file behind
            raise
        stats["parquet_rows"] = len(rows)
        # flagged samples (curation.action / curation.safety.action = flag) are written: count them here
        flagged = Counter(r["curation_reason"] for r in rows if r["decision"] != "skipped" and r.get("curation_reason"))
        if flagged:
            stats["flagged_by_reason"] = dict(sorted(flagged.items()))
        return path
