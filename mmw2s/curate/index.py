"""The curation index: `index.parquet`, one row per input sample, one row group per input shard.

    shard      input shard name (what the bootstrap names its output after)
    key        sample key (as shard I/O names it: `safe_key`)
    sha256     SHA-256 of the image bytes, hex (null when the sample could not be read)
    phash      64-bit perceptual hash, 16 hex digits (null when not read)
    width, height   decoded image size
    reason     null: kept; duplicate_exact | duplicate_near | contaminated:BENCHMARK: the curation
               decision; unreadable:REASON: shard I/O skipped it (the bootstrap skips it too)
    of_shard, of_key   the kept sample this one duplicates (duplicates), or null
    of_example the benchmark example it copies (contaminated), or null
    match      image | caption (contaminated), distance: pHash bits apart (near matches)

A row group per shard lets a data-loader worker of the bootstrap read just the rows of the shard it
is reading (`shard_decisions`), so no process ever holds the whole index.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

INDEX_FILE = "index.parquet"
CURATION_REASONS = ("duplicate_exact", "duplicate_near", "contaminated:")


def index_schema():
    """The pyarrow schema of index.parquet."""
    import pyarrow as pa

    return pa.schema([("shard", pa.string()), ("key", pa.string()), ("sha256", pa.string()),
                      ("phash", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                      ("reason", pa.string()), ("of_shard", pa.string()), ("of_key", pa.string()),
                      ("of_example", pa.string()), ("match", pa.string()), ("distance", pa.int16())])


class IndexWriter:
    """Writes `out/index.parquet.partial`, one row group per shard; `close` renames it into place."""

    def __init__(self, path: str | Path) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.schema = index_schema()
        self.writer = pq.ParquetWriter(self.partial, self.schema, compression="zstd")

    def write_shard(self, rows: list[dict]) -> None:
        """One shard's rows (possibly none: an empty or unreadable shard has no row group)."""
        import pyarrow as pa

        if rows:
            self.writer.write_table(pa.Table.from_pylist(rows, schema=self.schema), row_group_size=len(rows))

    def close(self) -> None:
        self.writer.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        self.writer.close()
        self.partial.unlink(missing_ok=True)


def is_curation_reason(reason: str | None) -> bool:
    """Whether a reason is a curation decision (not kept, not a sample shard I/O could not read)."""
    return bool(reason) and reason.startswith(CURATION_REASONS)


def indexed_shards(path: str | Path) -> set[str]:
    """The shard names an index covers (read from its row-group statistics, not its rows)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    column = meta.schema.names.index("shard")
    names = set()
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        names.update({stats.min, stats.max} if stats is not None and stats.has_min_max else set())
    return names


def shard_rows(path: str | Path, shard: str) -> list[dict]:
    """Every row of one shard (its row group is found by its statistics; the others are not read)."""
    import pyarrow.parquet as pq

    return pq.read_table(path, filters=[("shard", "=", shard)]).to_pylist()


def shard_decisions(path: str | Path, shard: str) -> dict[str, dict]:
    """key -> row of the samples of `shard` that curation took a decision on (duplicates, contaminated)."""
    return {r["key"]: r for r in shard_rows(path, shard) if is_curation_reason(r["reason"])}


def all_rows(path: str | Path, columns: Iterable[str] | None = None) -> list[dict]:
    """The whole index as dicts (tests and small reports)."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=list(columns) if columns else None).to_pylist()
