"""Everything that reads or writes data, and knows no model.

- `shards`: webdataset shards in img2dataset's schema (the one module touching webdataset): safe
  reading of untrusted tars, atomic writing, resume markers;
- `world`: the synthetic web world (scenes, renderer, alt-text noise model, shards with the truth);
- `benchmarks`: zero-shot benchmarks (the world's suites, CLIP_benchmark-style folders);
- `vqa`: the world's visual-question suite; `instructions`: LLaVA-format instruction data.

Imports run one way: `mmw2s` imports this package; this package imports neither `mmw2s` nor `models`.
"""
