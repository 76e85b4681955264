"""Small convolutional vision towers registered in timm's model registry.

Why conv towers: a ViT trained from scratch on 64x64 images for a few CPU minutes stays badly
undertrained, while a small ConvNeXt (patchify stem + strided downsampling convs) learns in a
minute. The towers are timm's own ``ConvNeXt`` class at small widths and depths, registered the
way timm registers its variants (``@register_model`` + ``default_cfgs``), so that
``timm.create_model("mmw2s_convnet_tiny")`` works and open_clip can reference them by
``vision_cfg.timm_model_name`` in a model-config JSON.

The registration happens on import of this module; ``models.dual_encoders`` imports it, so any
process that builds or loads an ``mmw2s-conv-*`` dual encoder must import ``models`` first.

Layer scale is disabled (``ls_init_value=None``): timm's 1e-6 init makes every block start as
an identity, which costs many steps in short from-scratch runs and produces denormal floats that
are very slow on CPU.
"""

from __future__ import annotations

from typing import Any

from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt

# (depths, dims) per variant; parameter counts are for the trunk without a classifier head.
TOWER_ARGS: dict[str, dict[str, Any]] = {
    "mmw2s_convnet_tiny": dict(depths=(1, 1, 1, 1), dims=(24, 48, 96, 192)),  # ~0.5M
    "mmw2s_convnet_small": dict(depths=(1, 1, 2, 1), dims=(32, 64, 128, 256)),  # ~1.1M
    "mmw2s_convnet_base": dict(depths=(1, 1, 3, 1), dims=(48, 96, 192, 384)),  # ~2.9M
}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """timm pretrained cfg without weights: only the input contract of the architecture."""
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 64, 64),
        "pool_size": (2, 2),
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": OPENAI_CLIP_MEAN,
        "std": OPENAI_CLIP_STD,
        "first_conv": "stem.0",
        "classifier": "head.fc",
        **kwargs,
    }


# timm's register_model looks up this module-level name to attach the cfgs to each entrypoint.
default_cfgs = generate_default_cfgs({name: _cfg() for name in TOWER_ARGS})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> ConvNeXt:
    """Build one registered variant through timm's builder (handles cfgs and features_only)."""
    model_args = dict(TOWER_ARGS[variant], ls_init_value=None, conv_mlp=True, patch_size=4)
    return build_model_with_cfg(
        ConvNeXt,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **dict(model_args, **kwargs),
    )


@register_model
def mmw2s_convnet_tiny(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt, 4 stages of 1 block, widths 24..192: the weak / fast demo tower."""
    return _create("mmw2s_convnet_tiny", pretrained, **kwargs)


@register_model
def mmw2s_convnet_small(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt, depths (1, 1, 2, 1), widths 32..256: the default student tower."""
    return _create("mmw2s_convnet_small", pretrained, **kwargs)


@register_model
def mmw2s_convnet_base(pretrained: bool = False, **kwargs: Any) -> ConvNeXt:
    """ConvNeXt, depths (1, 1, 3, 1), widths 48..384: the largest tower of the size sweep."""
    return _create("mmw2s_convnet_base", pretrained, **kwargs)
