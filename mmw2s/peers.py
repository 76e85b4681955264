"""The peers' own command lines on our output: `mmw2s-open-clip-train` and `mmw2s-clip-benchmark`.

Users read our shards and students with the tools they already know, unchanged; these launchers
only do what a stock process cannot:

- register our architectures (`models.register()`: the `mmw2s_convnet_*` timm towers and the
  `mmw2s-conv-*` open_clip configs), which a stock `open_clip_train` or `clip_benchmark` never calls,
  so `--model mmw2s-conv-small` and `--model local-dir:STUDENT` resolve;
- two compatibility fixes for the versions installed with us, each a no-op where not needed:
  * webdataset >= 0.2.96 ends each shard with an EOF record `{}` that open_clip_train's
    `group_by_keys_nothrow` fails on (KeyError 'fname'; open_clip issue #935, webdataset issue
    #384): its tar expander is given `eof_value=None`, as suggested there;
  * clip_benchmark 1.6.2's `accuracy` calls `float()` on a 1-element array, an error since NumPy
    2.4: replaced by the same top-k count.

Everything after the command name goes to the peer unchanged, e.g.::

    mmw2s-open-clip-train --train-data 'OUT/shards/{00000..00003}.tar' --dataset-type webdataset \\
        --train-num-samples 4000 --model mmw2s-conv-small --batch-size 64 --device cpu
    mmw2s-clip-benchmark eval --model local-dir:runs/demo/students/bootstrapped \\
        --pretrained '' --dataset wds/world_color --dataset_root BENCH/world_color --task auto

Both need the `peers` extra: `pip install -e ".[peers]"` (clip_benchmark, and pandas, which
open_clip_train imports).
"""
from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Sequence


def open_clip_train_main(argv: Sequence[str] | None = None) -> None:
    """`open_clip_train.main` with our architectures registered and the EOF fix applied."""
    from mmw2s import models

    models.register()
    fix_webdataset_eof()
    from open_clip_train.main import main

    main(list(sys.argv[1:] if argv is None else argv))


def clip_benchmark_main(argv: Sequence[str] | None = None) -> None:
    """`clip_benchmark`'s CLI with our architectures registered and the NumPy fix applied."""
    from mmw2s import models

    models.register()
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification

    fix_numpy_accuracy(zeroshot_classification)
    if argv is not None:  # its parser reads sys.argv itself
        sys.argv = ["clip_benchmark", *argv]
    cli.main()


def fix_webdataset_eof() -> None:
    """Make open_clip_train's webdataset pipeline run on webdataset >= 0.2.96 (see the docstring)."""
    import open_clip_train.data as data
    from webdataset.tariterators import tar_file_expander

    if "eof_value" in inspect.signature(tar_file_expander).parameters:
        data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


def _topk_accuracy(output: Any, target: Any, topk: tuple = (1,)) -> list[float]:
    """clip_benchmark's top-k accuracy (same definition), without float() of a 1-element array."""
    pred = output.topk(max(topk), 1, True, True)[1].t()  # (K, N)
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def fix_numpy_accuracy(module: Any) -> None:
    """Replace clip_benchmark's `accuracy` where NumPy >= 2.4 would make it fail."""
    import numpy as np

    try:
        float(np.zeros(1))
    except TypeError:
        module.accuracy = _topk_accuracy


if __name__ == "__main__":
    commands = {"open_clip_train": open_clip_train_main, "clip_benchmark": clip_benchmark_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m mmw2s.peers {{{'|'.join(commands)}}} ARGS...")
    commands[sys.argv[1]](sys.argv[2:])
