"""Everything that reads or writes data, and knows no model.

- reading untrusted webdataset shards in img2dataset's schema: `urls` (shard specs -> URLs),
  `tar_reader` (one tar member loop: safe keys, member-size limits), `sample_decode` (images,
  captions, JSON), `loader` (the webdataset pipeline and DataLoader over them, `RecordLoader`),
  `replay` (a training stream's repeated shards from memory) and `shard_errors` (failures named
  by their shard);
- writing: `writer` (`ShardWriter`: atomic, hashed, locked; `write_json_atomic`), `shard_state`
  (stats files, resume);
- `world`: the synthetic web world (scenes, renderer, alt-text noise model, shards with the truth);
- `benchmarks`: zero-shot benchmarks (the world's suites, CLIP_benchmark-style folders);
- `vqa`: the world's visual-question suite; `instructions`: LLaVA-format instruction data.

The names below are the public API (``from mmw2s.data_pipelines import ShardWriter, iter_samples``);
each loads its module on first use (PEP 562), so importing the package stays light.

Imports run one way: `mmw2s` imports this package; this package imports neither `mmw2s` nor `models`.
"""
import importlib
from typing import Any

# Public names -> the submodule defining them.
_EXPORTS = {
    **dict.fromkeys(["DEFAULT_MAX_PIXELS", "IMAGE_EXTS", "READ_EXTS", "DecodedSample", "ReadLimits", "Skip",
                     "clip_text", "decode_sample", "is_safe_key", "safe_key"], "sample_decode"),
    **dict.fromkeys(["OtherSettings", "StateFileError", "complete_with", "is_complete", "read_state_json",
                     "stats_path", "verified_stats"], "shard_state"),
    **dict.fromkeys(["Event", "ShardEnd", "shard_events", "shard_name"], "tar_reader"),
    **dict.fromkeys(["expand_urls"], "urls"),
    **dict.fromkeys(["RecordLoader", "event_loader", "event_pipeline", "iter_samples", "pass_through"], "loader"),
    **dict.fromkeys(["ShardReplay"], "replay"),
    **dict.fromkeys(["CurrentShard", "ShardError"], "shard_errors"),
    **dict.fromkeys(["ShardWriter", "write_json_atomic"], "writer"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
