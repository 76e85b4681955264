"""`python -m mmw2s.bench.openclip_launcher ARGS`: open_clip_train with our architectures registered.

open_clip_train builds its model by name (`--model mmw2s-conv-tiny`); our model configs and timm
towers are registered by `models.register()`, which open_clip_train cannot know to call.

One compatibility fix, nothing else: webdataset >= 0.2.96 ends each shard with an EOF record `{}`
that open_clip_train's `group_by_keys_nothrow` fails on (KeyError 'fname'; open_clip issue #935,
webdataset issue #384). As suggested there, its tar expander is given `eof_value=None`.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    """Register our architectures, then hand `argv` to open_clip_train unchanged."""
    import models

    models.register()
    _fix_webdataset_eof()
    from open_clip_train.main import main as open_clip_train_main

    open_clip_train_main(argv)


def _fix_webdataset_eof() -> None:
    """Make open_clip_train's webdataset pipeline run on webdataset >= 0.2.96 (see the docstring)."""
    import functools
    import inspect

    import open_clip_train.data as data
    from webdataset.tariterators import tar_file_expander

    if "eof_value" in inspect.signature(tar_file_expander).parameters:
        data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


if __name__ == "__main__":
    main(sys.argv[1:])
