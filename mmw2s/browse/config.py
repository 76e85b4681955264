"""Config schema of `mmw2s browse` (kept light: no heavy imports, `mmw2s --help` loads it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class BrowseConfig:
    """`mmw2s browse`: a static HTML site of a bootstrap run's decisions, opened from disk."""

    run: str = field(metadata={"help": "a bootstrap run folder (the one holding shards/), e.g. an "
                                       "experiment's seed_0/bootstrap-1a2b3c4d"})
    out: Optional[str] = field(default=None, metadata={"help": "where the site goes; default: RUN/browse"})
    samples: int = field(default=1000, metadata={
        "help": "cards on the index page, sampled at random with an equal share per decision "
                "(kept / dropped / nothing kept); every sample when the run has fewer"})
    page_size: int = field(default=200, metadata={"help": "cards per page (index and full listings)"})
    thumb: int = field(default=160, metadata={
        "help": "longest side of a thumbnail in pixels; smaller images are copied as they are"})
    workers: int = field(default=0, metadata={"help": "processes extracting thumbnails (0: this one)"})
    seed: int = field(default=0, metadata={"help": "seed of the index page's sample"})
    serve: bool = field(default=False, metadata={"help": "serve the site on 127.0.0.1:PORT after building it"})
    port: int = field(default=8000, metadata={"help": "port of serve=true (0: any free port)"})

    def validate(self) -> None:
        """Raise ValueError for sizes that make no page."""
        if self.samples < 1 or self.page_size < 1:
            raise ValueError("samples and page_size must be >= 1")
        if self.thumb < 16:
            raise ValueError(f"thumb must be >= 16 pixels, got {self.thumb}")
        if self.workers < 0 or not 0 <= self.port <= 65535:
            raise ValueError("workers must be >= 0 and port in 0..65535")
