"""Prompted VLM captioners (BLIP-2, LLaVA, Qwen2-VL, SmolVLM, Florence-2, PaliGemma): tiny random real models saved with
their processors, loaded by path by `mmw2s bootstrap`; and the caption rules every captioner obeys
(no empty / prompt-only caption kept; every written sample has a .txt)."""
from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from mmw2s.data_pipelines import ReadLimits, ShardEnd, iter_samples
from mmw2s.bootstrap.pipeline import Batch, Selection, decide, decide_stage, invalid_caption
from mmw2s.bootstrap.thresholds import Thresholds
from mmw2s.bootstrap.writer import ShardOutputs, write_stage
from mmw2s.config import load_config
from mmw2s.errors import StageError

PROMPT = "Describe this image in one sentence."
FAMILIES = ["blip-2", "llava", "qwen2_vl", "smolvlm", "florence2"]  # florence2: an encoder-decoder
NO_CHAT = {"blip-2", "florence2"}  # processors without a chat template
ABS = Thresholds(mode="absolute", web=0.5, synthetic=0.5)


# --------------------------------------------------------------------------------------------
# Caption rules (no model)


@pytest.mark.parametrize("caption, reason", [("", "empty"), ("   \n ", "empty"), (" . ", "empty"),
                                             ("<loc0042><loc0100> ", "special_tokens"),
                                             ("describe this image in one sentence", "prompt"),
                                             ("a red circle", None)])
def test_invalid_captions_are_named(caption, reason):
    assert invalid_caption(caption, PROMPT) == reason


def test_a_prompt_echo_is_found_around_markup():
    assert invalid_caption("Caption en.", "<image>caption en") == "prompt"
    assert invalid_caption("<image> caption en", "caption en") == "prompt"
    assert invalid_caption("caption en of a red circle", "<image>caption en") is None


def test_empty_or_prompt_only_caption_is_never_kept_nor_chosen():
    """A top score does not save a caption with no words, or one that only echoes the prompt."""
    block = decide("junk", 0.1, ["", "  ", PROMPT, "<seg001>"], [0.99, 0.98, 0.97, 0.96], ABS,
                   Selection(choose="synthetic_first"), prompt=PROMPT)
    assert [s["kept"] for s in block["synthetic"]] == [False] * 4
    assert [s["invalid"] for s in block["synthetic"]] == ["empty", "empty", "prompt", "special_tokens"]
    assert block["chosen"] is None and block["nothing_kept"]
    block = decide("junk", 0.1, ["", "a blue square"], [0.99, 0.6], ABS, Selection(choose="best"))
    assert block["chosen"] == "a blue square" and "invalid" not in block["synthetic"][1]


def test_invalid_captions_and_truncation_are_counted_in_shard_stats(tmp_path):
    batch = Batch("in/00000.tar", [{"__key__": k, "caption": "web", "image_ext": "jpg", "image_bytes": b"J",
                                    "json": {"key": k}} for k in ("a", "b")],
                  synthetic=[["", "a red circle"], [PROMPT, " "]], web_scores=[0.9, 0.9],
                  synthetic_scores=[[0.9, 0.9], [0.9, 0.9]], truncated=[[False, False, True], [True, True, False]])
    provenance = {"captioner": {"name": "c", "prompt": PROMPT}, "filter": {"name": "f"}, "seed": 0}
    stream = decide_stage(iter([batch, ShardEnd("in/00000.tar")]), ABS, Selection(), provenance)
    with ShardOutputs(tmp_path) as outputs:
        (stats,) = [item[1] for item in write_stage(stream, outputs) if isinstance(item, tuple)]
    assert stats["synthetic_invalid"] == 3 and stats["synthetic_invalid_by_reason"] == {"empty": 2, "prompt": 1}
    assert stats["synthetic_kept"] == 1 and stats["filter_truncated"] == 3


# --------------------------------------------------------------------------------------------
# Tiny real VLMs, saved and loaded by path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(out=str(out), workers=1, samples_per_shard=6, image_size=32,
                               clean=SplitConfig(0), web=SplitConfig(12), test=SplitConfig(0)))
    return out / "web"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from mmw2s.models import DualEncoderSpec, build_dual_encoder

    folder = tmp_path_factory.mktemp("clip") / "clip"
    build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny")).save(folder)
    return folder


@pytest.fixture(scope="module")
def vlms(tmp_path_factory, world):
    """family -> a saved tiny random VLM whose vocabulary is the world's caption words."""
    from mmw2s.models.vlm_tiny import build_tiny_vlm

    words = {w for s in iter_samples(str(world), ReadLimits(decode_images=False)) for w in s["caption"].split()}
    root = tmp_path_factory.mktemp("vlms")
    return {f: build_tiny_vlm(f, root / f, words) for f in [*FAMILIES, "paligemma"]}


def bootstrap(world, clip, captioner, out, *extra):
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.bootstrap.run import run

    args = [f"input={world}", f"out={out}", f"captioner.name={captioner}", "filter.kind=clip",
            f"filter.dual_encoder.arch=local-dir:{clip}", "decoding.method=nucleus", "decoding.num_captions=2",
            "decoding.max_new_tokens=8", "decoding.min_new_tokens=1", "thresholds.web=-1.0", "thresholds.synthetic=-1.0",
            "batch_size=4", "workers=0", "cpu_threads=1", "progress=false", *extra]
    return run(load_config(BootstrapConfig, None, args))


def blocks(out) -> dict[str, dict]:
    found = {}
    for path in sorted((Path(out) / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    found[m.name.split(".", 1)[0]] = json.loads(tar.extractfile(m).read())["mmw2s"]
    return found


def words(text: str) -> str:
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


@pytest.mark.parametrize("family", FAMILIES)
def test_bootstrap_captions_with_a_prompted_vlm(world, clip, vlms, family, tmp_path):
    """Loaded by path, its kind read from its config: captions written, the same for a seed (with
    the processor run in 0 or 2 data-loader workers), the prompt (and the chat template around it)
    never in them, and the provenance says how they came."""
    summary = bootstrap(world, clip, vlms[family], tmp_path / "a", f"captioner.prompt={PROMPT}")
    bootstrap(world, clip, vlms[family], tmp_path / "b", f"captioner.prompt={PROMPT}", "workers=2")
    first, second = blocks(tmp_path / "a"), blocks(tmp_path / "b")
    assert summary["written"] == 12 and len(first) == 12
    captions = [s["caption"] for b in first.values() for s in b["synthetic"]]
    assert len(captions) == 24 and sum(bool(c.strip()) for c in captions) >= 12
    assert [[s["caption"] for s in b["synthetic"]] for b in first.values()] == \
        [[s["caption"] for s in b["synthetic"]] for b in second.values()]
    assert all(words(PROMPT) not in words(c) and "<" not in c for c in captions)  # no prompt, no markup
    cap = next(iter(first.values()))["captioner"]
    assert cap["kind"] == "prompted" and cap["model_type"] == family and cap["prompt"] == PROMPT
    assert cap["decoding"]["method"] == "nucleus" and cap["decoding"]["max_new_tokens"] == 8
    assert (cap["chat_template"] is None) == (family in NO_CHAT) and PROMPT in cap["model_input"]


@pytest.mark.parametrize("family", ["qwen2_vl", "smolvlm"])
def test_a_padded_row_gives_the_caption_it_gives_alone(vlms, family):
    """Images of different sizes get different numbers of image tokens (Qwen2-VL) or tiles (SmolVLM):
    the batch is padded, on the left, and each row still decodes as it would alone."""
    from mmw2s.models import CaptionerSpec
    from mmw2s.models.captioners.build import load_captioner

    cap = load_captioner(CaptionerSpec(name=str(vlms[family]), prompt=PROMPT))
    images = [Image.new("RGB", (28, 28), "red"), Image.new("RGB", (64, 16), "blue"), Image.new("RGB", (56, 56), "green")]
    batch = cap.input_builder()(images)
    assert (batch["attention_mask"] == 0).any() and (batch["attention_mask"][:, -1] == 1).all()  # left-padded
    together = cap.caption(batch, method="greedy", max_new_tokens=12, min_new_tokens=4)
    alone = [cap.caption(cap.input_builder()([im]), method="greedy", max_new_tokens=12, min_new_tokens=4)[0]
             for im in images]
    assert together == alone and all(c[0] for c in together)


def test_markup_tokens_are_removed_from_captions(vlms):
    """PaliGemma's processor adds 1024 <locNNNN> and 128 <segNNN> tokens as plain added tokens, which
    skip_special_tokens keeps: they never reach a caption."""
    import torch

    from mmw2s.models import CaptionerSpec
    from mmw2s.models.captioners.build import load_captioner

    cap = load_captioner(CaptionerSpec(name=str(vlms["paligemma"]), prompt="caption en"))
    ids = cap.tokenizer.convert_tokens_to_ids(["red", "<loc0042>", "circle", "<seg007>"])
    assert cap.tokenizer.decode(ids, skip_special_tokens=True).count("<") == 2  # what we undo
    batch = cap.input_builder()([Image.new("RGB", (32, 32)), Image.new("RGB", (48, 32))])
    assert "labels" not in batch
    out = torch.cat([batch["input_ids"][:1], torch.tensor([ids])], dim=1)
    assert cap.decode(out, batch["input_ids"][:1]) == ["red circle"]  # decoder-only: prompt + new tokens
    assert cap.decode(torch.tensor([ids]), batch["input_ids"][:1]) == ["red circle"]  # encoder-decoder: new only
    captions = cap.caption(batch, method="nucleus", num_captions=3, max_new_tokens=12, seed=0)
    assert all("<" not in c for row in captions for c in row)


def test_long_captions_are_truncated_by_the_filter_and_counted(world, clip, vlms, tmp_path):
    """Dense captions longer than the CLIP filter's 32-token context: scored on what fits, counted."""
    summary = bootstrap(world, clip, vlms["llava"], tmp_path, f"captioner.prompt={PROMPT}",
                        "decoding.max_new_tokens=300", "decoding.min_new_tokens=40", "decoding.num_captions=1",
                        "input=" + str(world / "00000.tar"))
    stats = json.loads((tmp_path / "shards" / "00000_stats.json").read_text())
    lengths = [len(s["caption"].split()) for b in blocks(tmp_path).values() for s in b["synthetic"]]
    assert summary["written"] == 6 and min(lengths) >= 30
    assert stats["filter_truncated"] >= sum(n >= 32 for n in lengths) >= 1


# --------------------------------------------------------------------------------------------
# Clear errors before any work


def test_errors_before_any_work(world, clip, vlms, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    text_only = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(text_only)
    no_images = tmp_path / "no_image_processor"
    shutil.copytree(vlms["qwen2_vl"], no_images)
    for name in ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json"):
        (no_images / name).unlink(missing_ok=True)
    cases = [(text_only, [f"captioner.prompt={PROMPT}"], "not an image-text model"),
             (vlms["qwen2_vl"], [], "chat model"),
             (no_images, [f"captioner.prompt={PROMPT}"], "image processor"),
             (vlms["llava"], [f"captioner.prompt={PROMPT}", "captioner.chat_template=none"], "image token")]
    for i, (model, extra, message) in enumerate(cases):
        with pytest.raises(StageError, match=message):
            bootstrap(world, clip, model, tmp_path / f"run{i}", *extra)
        assert not list((tmp_path / f"run{i}").glob("shards/*.tar"))


def test_prompt_file_is_read_into_the_config(world, clip, vlms, tmp_path):
    from mmw2s.bootstrap.config import BootstrapConfig

    path = tmp_path / "prompt.txt"
    path.write_text(PROMPT + "\n")
    cfg = load_config(BootstrapConfig, None, [f"input={world}", f"out={tmp_path}", f"captioner.name={vlms['llava']}",
                                              f"captioner.prompt_file={path}"])
    assert cfg.captioner.prompt == PROMPT
    shipped = Path(__file__).resolve().parent.parent / "configs" / "prompts" / "caption"
    assert sorted(p.name for p in shipped.glob("*.txt")) and all(p.read_text().strip() for p in shipped.glob("*.txt"))


# --------------------------------------------------------------------------------------------
# nothing_kept=flag: every written sample has a .txt


def test_flagged_samples_carry_their_web_caption_as_txt(world, clip, vlms, tmp_path):
    """A trainer's plain `to_tuple("jpg;png;webp", "txt")` reads every sample; `mmw2s train` and the
    audit still see that nothing was kept."""
    import random

    import webdataset as wds

    from mmw2s.train.config import TextConfig
    from mmw2s.train.texts import TextSelector

    bootstrap(world, clip, vlms["blip-2"], tmp_path, "selection.nothing_kept=flag", "thresholds.web=1.0",
              "thresholds.synthetic=1.0")  # the top of the cosine range: nothing is kept
    webs = {s["__key__"]: s["caption"] for s in iter_samples(str(world), ReadLimits(decode_images=False))}
    seen = {}
    for path in sorted((tmp_path / "shards").glob("*.tar")):
        for key, image, txt, meta in wds.WebDataset(str(path), shardshuffle=False).to_tuple(
                "__key__", "jpg;png;webp", "txt", "json"):
            seen[key] = (txt.decode(), json.loads(meta))
    assert set(seen) == set(webs)
    select = TextSelector(TextConfig())
    for key, (txt, meta) in seen.items():
        assert txt == webs[key] and meta["mmw2s"]["nothing_kept"] and meta["mmw2s"]["chosen"] is None
        assert select({"caption": txt, "json": meta}, random.Random(0)) is None  # never trained on
    from mmw2s.audit import audit

    result, rows = audit(tmp_path)  # written, but no chosen caption: the .txt is not read as one
    assert len(rows) == 12 and all(r["written"] and r["chosen"] is None for r in rows)
    assert result["chosen"]["with_caption"] == 0


def test_invalid_captions_never_train_even_when_unkept_captions_may():
    from mmw2s.train.texts import mix_pools

    block = {"web_caption": "web", "web_kept": False, "synthetic": [
        {"caption": PROMPT, "kept": False, "invalid": "prompt"}, {"caption": "a red circle", "kept": False}]}
    web, synthetic = mix_pools({"mmw2s": block}, "web", kept_only=False)
    assert [c for c, _ in synthetic] == ["a red circle"] and [c for c, _ in web] == ["web"]


def test_the_shipped_vlm_config_loads_with_its_prompt_file(monkeypatch):
    from mmw2s.bootstrap.config import BootstrapConfig

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # prompt files are named relative to the repository, like configs/prompts/llava
    cfg = load_config(BootstrapConfig, root / "configs" / "bootstrap_vlm.yaml", [])
    assert cfg.captioner.prompt == (root / "configs/prompts/caption/short.txt").read_text().strip()
    assert cfg.filter.kind == "clip" and cfg.filter.dual_encoder.arch == "ViT-B-32"


def test_revision_of_a_git_clone_is_recorded(tmp_path):
    """`git clone https://huggingface.co/...` folders: HEAD's commit, loose or packed ref."""
    from mmw2s.models.captioners.prompted_vlm import checkpoint_revision

    sha = "0123456789abcdef0123456789abcdef01234567"
    git = tmp_path / "clone" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert checkpoint_revision(str(tmp_path / "clone")) is None  # a ref to nothing yet
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert checkpoint_revision(str(tmp_path / "clone")) == sha
    (git / "refs" / "heads" / "main").write_text(sha[::-1] + "\n")
    assert checkpoint_revision(str(tmp_path / "clone")) == sha[::-1]
    assert checkpoint_revision(str(tmp_path)) is None  # not a clone
