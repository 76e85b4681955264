"""`mmw2s bootstrap`: BLIP CapFilt over webdataset shards.

Module map: `config` (the schema), `stages` (generator stages: batch -> caption -> score -> decide),
`thresholds` (absolute / calibrated top-fraction), `writer` (per-shard output and stats),
`capfilt` (the captioner + filter as the callables the stages take), `shard` (the one function that
bootstraps shards, whoever calls it), `engines` (who calls it on which shard: `local` process or
accelerate ranks, a `ray` actor pool), `run` (thresholds, resume, summary), `ceiling` (forward passes
alone, for the throughput ratio).
"""
