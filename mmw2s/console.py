"""What the console shows: log levels of our packages, and the filters that drop the libraries'
warnings that are expected for what we do on purpose.

Each filter names the one logger and the one message it drops, so any other warning of the same
library still shows. (open_clip's "No pretrained weights loaded" for a tower we build from scratch
is dropped where we build it, in `models/dual_encoders.py`: `models` does not import `mmw2s`.)
"""
from __future__ import annotations

import logging
import re

PACKAGES = ("mmw2s", "data_pipelines", "models")
FORMAT = "%(levelname)s %(name)s: %(message)s"

# accelerate's `save_state` writes safetensors, which cannot hold two names for one tensor, so it
# keeps one name of each tied pair and warns "Removed shared tensor {...} while saving ... check by
# verifying that you don't receive any warning while reloading". Our captioners tie their output
# layer to their input embeddings (transformers' `tie_word_embeddings`), which `load_state` re-ties;
# tests/test_resume_exact.py checks that a resumed run ends bit-identical, the check it asks for.
TIED_WEIGHTS_LOGGER = "accelerate.utils.other"
# accelerate's logger adapter puts "[RANK n] " before the message
TIED_WEIGHTS_MESSAGE = re.compile(r"(\[RANK \d+\] )?Removed shared tensor \{.*\} while saving\.")


class DropMessages(logging.Filter):
    """A logging filter that drops the records whose message `pattern` matches (from its start)."""

    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


def quiet_tied_weights_warning() -> None:
    """Drop accelerate's shared-tensor warning at every checkpoint (see above); idempotent."""
    logger = logging.getLogger(TIED_WEIGHTS_LOGGER)
    if not any(isinstance(f, DropMessages) and f.pattern is TIED_WEIGHTS_MESSAGE for f in logger.filters):
        logger.addFilter(DropMessages(TIED_WEIGHTS_MESSAGE))


def level_of(quiet: bool = False, verbose: bool = False) -> int:
    """The level of our packages: `-q` warnings and errors, `-v` debug too, else info."""
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


def setup_logging(level: int) -> None:
    """Our packages log at `level`; libraries (open_clip logs every load at INFO) only warn."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
