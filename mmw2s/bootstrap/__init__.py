"""`mmw2s bootstrap`: BLIP CapFilt over webdataset shards.

Module map: `config` (the schema), `stages` (generator stages: batch -> caption -> score -> decide),
`thresholds` (absolute / calibrated top-fraction), `writer` (per-shard output and stats),
`capfilt` (the captioner + filter as the callables the stages take), `run` (resume, ranks, summary),
`ceiling` (forward passes alone, for the throughput ratio).
"""
