"""`mmw2s train`'s speed and GPU options: batched image transforms give the same tensors, the
loader options reach the DataLoader, `compile` is off by default and validated."""
import pytest
import torch
from PIL import Image

from mmw2s.data_pipelines import ShardWriter
from mmw2s.data_pipelines.world import WorldConfig, shard_samples
from mmw2s.config import ConfigError, load_config
from mmw2s.train.config import TextConfig, TrainConfig
from mmw2s.train.data import BatchedToTensor, loader_settings, make_loader
from mmw2s.train.loop import _compiled
from mmw2s.train.texts import TextSelector
from mmw2s.models import DualEncoderSpec, build_dual_encoder


def world_images(n: int = 12, size: int = 32) -> list[Image.Image]:
    samples = shard_samples(WorldConfig(out="unused", image_size=size), "clean", 0, n)
    import io

    return [Image.open(io.BytesIO(s["jpg"])).convert("RGB") for s in samples]


@pytest.mark.parametrize("train", [True, False])
def test_batched_transform_gives_the_per_image_tensors_bit_for_bit(train):
    dual = build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny", image_size=32))
    transform = dual.preprocess_train if train else dual.preprocess_val
    images = world_images()
    batched = BatchedToTensor(transform)
    assert batched.head is not None  # open_clip's transforms end in to-tensor + Normalize
    torch.manual_seed(3)  # the random crops draw from torch's RNG in the same order
    expected = torch.stack([transform(im) for im in images])
    torch.manual_seed(3)
    assert torch.equal(batched(images), expected)


def test_other_transforms_run_image_by_image():
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(16), T.PILToTensor()])
    batched = BatchedToTensor(transform)
    images = world_images(3)
    assert batched.head is None and torch.equal(batched(images), torch.stack([transform(im) for im in images]))


def test_loader_options_reach_the_data_loader(tmp_path):
    cfg = WorldConfig(out=str(tmp_path), image_size=32)
    for index in range(2):
        with ShardWriter(tmp_path / f"{index:05d}.tar") as writer:
            for sample in shard_samples(cfg, "clean", index, 8):
                writer.write(sample)
            writer.close()
    options = loader_settings(prefetch_factor=2, pin_memory=None, persistent_workers=True,
                              device=torch.device("cpu"))
    assert options == {"prefetch_factor": 2, "persistent_workers": True, "pin_memory": False}  # no pinning on CPU
    loader = make_loader(str(tmp_path), TextSelector(TextConfig()), lambda ims: torch.zeros(len(ims), 3, 2, 2),
                         batch_size=4, workers=1, seed=0, rank=0, world=1, **options)
    assert (loader.loader.prefetch_factor, loader.loader.persistent_workers) == (2, True)
    batches = [b for _, b in zip(range(5), loader)]  # endless: more batches than the 16 samples hold
    assert [len(b["keys"]) for b in batches] == [4] * 5
    assert "tokens" not in batches[0]  # without a tokenizer the training thread tokenizes


def test_batches_carry_the_tokens_the_model_would_make(tmp_path):
    cfg = WorldConfig(out=str(tmp_path), image_size=32)
    with ShardWriter(tmp_path / "00000.tar") as writer:
        for sample in shard_samples(cfg, "clean", 0, 8):
            writer.write(sample)
        writer.close()
    dual = build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny", image_size=32))
    loader = make_loader(str(tmp_path), TextSelector(TextConfig()), lambda ims: torch.zeros(len(ims), 3, 2, 2),
                         batch_size=4, workers=1, seed=0, rank=0, world=1, tokenize=dual.tokenizer)
    batch = next(iter(loader))
    assert torch.equal(batch["tokens"], dual.tokenize(batch["texts"]))  # (B, L), made in the worker


def test_compile_is_off_by_default_and_validated():
    cfg = load_config(TrainConfig, None, ["data=d", "out=o"])
    assert cfg.compile is False and cfg.pin_memory is None and cfg.prefetch_factor >= 1
    with pytest.raises(ConfigError):
        load_config(TrainConfig, None, ["data=d", "out=o", "compile=maybe"])
    with pytest.raises((ConfigError, ValueError), match="prefetch_factor"):
        load_config(TrainConfig, None, ["data=d", "out=o", "prefetch_factor=0"])


def test_compile_keeps_the_module_and_its_state_dict_keys():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    keys = list(model.state_dict())
    assert _compiled(model) is model and list(model.state_dict()) == keys  # no `_orig_mod.` prefix
    assert model._compiled_call_impl is not None  # its calls now go through torch.compile
