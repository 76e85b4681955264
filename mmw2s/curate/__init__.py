"""`mmw2s curate`: one pass over input shards that writes a deduplication and decontamination index
(`index.py`, `decontam.py`, `run.py`); `mmw2s bootstrap curation.index=...` reads it."""
