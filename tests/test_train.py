"""`mmw2s train`: text selection, the rank/worker data stream, training, checkpoints and resume."""
from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from mmw2s.data_pipelines import ShardWriter
from mmw2s.data_pipelines.world import WorldConfig, shard_samples
from mmw2s.config import ConfigError, load_config
from mmw2s.train.config import TextConfig, TrainConfig
from mmw2s.train.data import make_loader
from mmw2s.train.texts import TextSelector

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bootstrap_block(sample: dict, i: int) -> dict:
    """An `mmw2s` block as `mmw2s bootstrap` writes it: web kept on even samples."""
    web = sample["txt"]
    synthetic = [{"caption": f"synthetic caption {i} a", "score": 0.9, "kept": True},
                 {"caption": f"synthetic caption {i} b", "score": 0.1, "kept": False}]
    chosen = web if i % 2 == 0 else synthetic[0]["caption"]
    return {"web_caption": web, "web_score": 0.8 if i % 2 == 0 else 0.2, "web_kept": i % 2 == 0,
            "synthetic": synthetic, "chosen": chosen,
            "chosen_source": "web" if i % 2 == 0 else "synthetic", "chosen_score": 0.7,
            "nothing_kept": False}


def make_shards(folder: Path, shards: int = 2, per_shard: int = 16, split: str = "web",
                bootstrapped: bool = False, corrupt: int = 0, seed: int = 0) -> str:
    """Tiny synthetic-world shards (32x32 images) in `folder`; returns the shard spec."""
    cfg = WorldConfig(out=str(folder), image_size=32, seed=seed)
    for index in range(shards):
        with ShardWriter(folder / f"{index:05d}.tar") as writer:
            for i, sample in enumerate(shard_samples(cfg, split, index, per_shard)):
                if bootstrapped:
                    sample["json"]["mmw2s"] = bootstrap_block(sample, i)
                    sample["txt"] = sample["json"]["mmw2s"]["chosen"]
                if i < corrupt:
                    sample["jpg"] = b"not a jpeg"
                writer.write(sample)
            writer.close()
    return str(folder)


def to_tensor(images):
    return torch.stack([pil_to_tensor(im) for im in images])  # (B, 3, 32, 32) uint8


def sample_of(caption="a red circle", meta=None) -> dict:
    return {"__key__": "k", "__url__": "u", "image": None, "caption": caption, "json": meta or {}}


# ------------------------------------------------------------------------------------------
# Which caption to train on


def test_text_sources_pick_the_configured_caption():
    meta = {"caption": "web", "mmw2s": {"chosen": "the chosen one", "chosen_score": 0.25},
            "truth": {"gold_caption": "the gold caption"}}
    rng = random.Random(0)
    assert TextSelector(TextConfig())(sample_of("shard txt", meta), rng) == ("shard txt", 1.0)
    json_sel = TextSelector(TextConfig(source="json", weight_field="mmw2s.chosen_score"))
    assert json_sel(sample_of("x", meta), rng) == ("the chosen one", 0.25)
    assert TextSelector(TextConfig(source="gold"))(sample_of("x", meta), rng) == ("the gold caption", 1.0)
    # a null choice (nothing kept) drops the sample
    assert json_sel(sample_of("x", {"mmw2s": {"chosen": None}}), rng) is None


def test_only_the_gold_source_can_read_the_truth_block():
    meta = {"truth": {"gold_caption": "secret"}, "mmw2s": {"chosen": "c"}}
    # even a selector configured by hand (bypassing config validation) cannot reach `truth`
    sneaky = TextSelector(TextConfig(source="json", field="truth.gold_caption"))
    assert sneaky(sample_of("x", meta), random.Random(0)) is None
    with pytest.raises(ConfigError, match="truth"):
        load_config(TrainConfig, None, ["data=d", "out=o", "text.source=json",
                                        "text.field=truth.gold_caption"])
    with pytest.raises(ConfigError, match="reads_truth"):
        load_config(TrainConfig, None, ["data=d", "out=o", "text.source=gold"])
    cfg = load_config(TrainConfig, None, ["data=d", "out=o", "text.source=gold", "reads_truth=true"])
    assert cfg.reads_truth


def test_mix_draws_synthetic_captions_at_the_configured_ratio():
    block = {"web_caption": "web words", "web_score": 0.8, "web_kept": True,
             "synthetic": [{"caption": "syn a", "score": 0.9, "kept": True},
                           {"caption": "syn b", "score": 0.3, "kept": False}]}
    select = TextSelector(TextConfig(source="mix", mix_synthetic_ratio=0.25))
    rng = random.Random(0)
    picks = [select(sample_of("web words", {"mmw2s": block}), rng) for _ in range(4000)]
    synthetic = sum(text == "syn a" for text, _ in picks) / len(picks)
    assert abs(synthetic - 0.25) < 0.03
    assert {p for p in picks} == {("web words", 0.8), ("syn a", 0.9)}  # the unkept one never
    # when the web caption was filtered out, the synthetic one is used every time
    block["web_kept"] = False
    assert {select(sample_of("w", {"mmw2s": block}), rng)[0] for _ in range(50)} == {"syn a"}


# ------------------------------------------------------------------------------------------
# The data stream


def take(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def loader(spec, **kw):
    args = dict(batch_size=4, workers=1, seed=0, rank=0, world=1, shuffle_buffer=0)
    args.update(kw)
    return make_loader(spec, TextSelector(TextConfig()), to_tensor, **args)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def test_ranks_read_disjoint_shards_and_cycle_forever(tmp_path):
    spec = make_shards(tmp_path, shards=3, per_shard=8)
    # rank 0 holds two shards (4 batches per pass), rank 1 one shard (2 batches per pass)
    rank0 = keys_of(take(loader(spec, rank=0, world=2), 4))
    rank1 = keys_of(take(loader(spec, rank=1, world=2), 2))
    assert not set(rank0) & set(rank1) and len(set(rank0) | set(rank1)) == 24
    # the stream never runs dry: rank 1 keeps cycling its one shard
    again = keys_of(take(loader(spec, rank=1, world=2), 6))
    assert sorted(again) == sorted(rank1 * 3)


def test_fewer_shards_than_ranks_split_samples(tmp_path):
    spec = make_shards(tmp_path, shards=1, per_shard=8)
    halves = [keys_of(take(loader(spec, rank=r, world=2), 1)) for r in (0, 1)]
    assert not set(halves[0]) & set(halves[1]) and len(set(halves[0]) | set(halves[1])) == 8


def test_resumed_stream_continues_where_it_stopped(tmp_path):
    spec = make_shards(tmp_path, shards=3, per_shard=8)
    full = take(loader(spec, workers=2, shuffle_buffer=8), 9)
    resumed = take(loader(spec, workers=2, shuffle_buffer=8, consumed=5), 4)
    assert keys_of(resumed) == keys_of(full[5:])
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(resumed, full[5:]))


def test_corrupt_samples_are_counted_not_fatal(tmp_path):
    spec = make_shards(tmp_path, shards=1, per_shard=8, corrupt=3)
    batches = take(loader(spec), 5)  # 5 good samples per pass: cycles to fill the batches
    skipped = sum(b["events"]["skipped"].get("corrupt_image", 0) for b in batches)
    assert skipped >= 3 and all(len(b["keys"]) == 4 for b in batches)



def test_shards_without_a_readable_sample_fail_clearly_instead_of_spinning(tmp_path):
    spec = make_shards(tmp_path, shards=1, per_shard=4, corrupt=4)
    with pytest.raises(RuntimeError, match="no readable samples"):
        take(loader(spec, workers=0), 1)


# ------------------------------------------------------------------------------------------
# Training end to end (tiny models: conv-tiny dual encoder and blip-tiny at 32x32)


def train_cfg(spec: str, out: Path, *overrides: str) -> TrainConfig:
    base = [f"data={spec}", f"out={out}", "steps=16", "batch_size=16", "lr=0.002", "warmup_steps=2",
            "log_every=1", "checkpoint_every=8", "workers=1", "shuffle_buffer=32",
            "dual_encoder.arch=mmw2s-conv-tiny", "dual_encoder.image_size=32",
            "captioner.name=blip-tiny", "captioner.image_size=32"]
    return load_config(TrainConfig, None, base + list(overrides))


def falls(history: list[tuple[int, float]]) -> bool:
    losses = [loss for _, loss in history]
    return sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("shards"), shards=2, per_shard=48, split="clean")


def test_clip_student_trains_and_its_final_weights_load_in_open_clip(shards, tmp_path, caplog):
    import open_clip
    import safetensors.torch

    from mmw2s.train import loss_history, run

    cfg = train_cfg(shards, tmp_path / "run")
    final = run(cfg)
    history = loss_history(cfg.out)
    assert [s for s, _ in history] == list(range(1, 17)) and falls(history)
    assert final == tmp_path / "run" / "final" / "open_clip_model.safetensors"
    for name in ("loss.png", "config.yaml", "tensorboard"):
        assert (tmp_path / "run" / name).exists()
    # open_clip loads the exported state dict; it equals the weights the trainer held
    model, _, _ = open_clip.create_model_and_transforms("mmw2s-conv-tiny", pretrained=str(final),
                                                        force_image_size=32)
    trained, _, _ = open_clip.create_model_and_transforms("mmw2s-conv-tiny", force_image_size=32)
    state = tmp_path / "run" / "checkpoints" / "step_000016" / "state" / "model.safetensors"
    trained.load_state_dict(safetensors.torch.load_file(state))
    pixels, tokens = torch.randn(2, 3, 32, 32), open_clip.get_tokenizer("mmw2s-conv-tiny")(["a red star"] * 2)
    model.eval()
    trained.eval()
    assert torch.equal(model.encode_image(pixels), trained.encode_image(pixels))
    assert torch.equal(model.encode_text(tokens), trained.encode_text(tokens))
    # a complete run is not redone
    caplog.set_level("INFO")
    assert run(cfg) == final and "nothing to do" in caplog.text


def test_captioner_trains_resumes_and_final_is_a_save_pretrained_folder(shards, tmp_path):
    import shutil

    import safetensors.torch
    from transformers import AutoTokenizer, BlipForConditionalGeneration

    from mmw2s.train import loss_history, run
    from mmw2s.models.captioners.blip_ved import BlipVedCaptioner

    cfg = train_cfg(shards, tmp_path / "cap", "task=captioner", "steps=12", "checkpoint_every=6")
    run(cfg)
    # as if killed after step 6's checkpoint: resuming reloads the checkpoint's own tokenizer.
    # Step 12's checkpoint is left broken (its weights cut short by a copy): resume=latest must
    # skip it for step 6, the newest intact one.
    shutil.rmtree(tmp_path / "cap" / "final")
    broken = tmp_path / "cap" / "checkpoints" / "step_000012" / "state" / "model.safetensors"
    os.truncate(broken, broken.stat().st_size // 2)
    final = run(train_cfg(shards, tmp_path / "cap", "task=captioner", "steps=12",
                          "checkpoint_every=6", "resume=latest"))
    history = loss_history(tmp_path / "cap")
    assert [s for s, _ in history] == list(range(1, 13)) and falls(history)
    vocab = AutoTokenizer.from_pretrained(final).get_vocab()
    assert {"circle", "square", "red"} <= set(vocab)  # built from the training captions
    # the exported folder holds exactly the weights the trainer held
    trained = BlipForConditionalGeneration.from_pretrained(final).eval()
    state = tmp_path / "cap" / "checkpoints" / "step_000012" / "state" / "model.safetensors"
    loaded = trained.load_state_dict(safetensors.torch.load_file(state), strict=False)
    # accelerate's safetensors leave out the LM head tied to the word embeddings
    assert not loaded.unexpected_keys and all("predictions.decoder" in k for k in loaded.missing_keys)
    captioner, reference = BlipVedCaptioner.load(final), BlipVedCaptioner(trained, *_parts(final))
    images = [s["image"] for s in itertools.islice(_world_images(shards), 2)]
    pixels = captioner.preprocess(images)
    with torch.no_grad():
        texts = ["a small red circle", "a large blue square"]
        assert torch.equal(captioner.log_likelihood(pixels, texts), reference.log_likelihood(pixels, texts))
    out = captioner.generate(pixels, method="greedy", max_new_tokens=5)
    assert len(out) == 2 and all(isinstance(c[0], str) for c in out)


def _parts(folder):
    from transformers import AutoImageProcessor, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)


def _world_images(spec):
    from mmw2s.data_pipelines import iter_samples

    return iter_samples(spec)


@pytest.mark.parametrize("overrides", [
    ("loss.name=weighted", "text.source=json", "text.weight_field=mmw2s.chosen_score"),
    ("loss.name=aux_confidence", "text.source=mix", "loss.aux_warmup_frac=0.5"),
    ("loss.name=aux_confidence", "text.source=mix", "loss.duplicates=multi_positive"),
], ids=["weighted-json", "aux_confidence-mix", "aux_confidence-multi_positive"])
def test_student_losses_train_on_bootstrapped_shards(tmp_path, overrides):
    from mmw2s.train import loss_history, run

    spec = make_shards(tmp_path / "boot", shards=1, per_shard=32, bootstrapped=True)
    cfg = train_cfg(spec, tmp_path / "run", "steps=3", "batch_size=8", "checkpoint_every=0", *overrides)
    run(cfg)
    history = loss_history(cfg.out)
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(loss)) for _, loss in history)


def test_gold_ceiling_run_says_it_read_the_truth(shards, tmp_path, caplog):
    from mmw2s.train import run
    from mmw2s.train.metrics import read_jsonl

    caplog.set_level("WARNING")
    run(train_cfg(shards, tmp_path / "gold", "text.source=gold", "reads_truth=true", "steps=2",
                  "batch_size=8", "checkpoint_every=0"))
    assert "reads_truth: true" in (tmp_path / "gold" / "config.yaml").read_text()
    assert all(row["reads_truth"] for row in read_jsonl(tmp_path / "gold" / "metrics.jsonl"))
    assert "TRUTH BLOCK" in caplog.text


# ------------------------------------------------------------------------------------------
# Non-finite losses


def nan_loss_at(monkeypatch, steps: set[int] | None):
    """Make the CLIP loss NaN at `steps` (0-based; None: always)."""
    from mmw2s.train.tasks import ClipTask

    real = ClipTask.loss

    def loss(self, batch, step):
        value = real(self, batch, step)
        return value * float("nan") if steps is None or step in steps else value

    monkeypatch.setattr(ClipTask, "loss", loss)


def test_a_nonfinite_step_is_skipped_and_counted(shards, tmp_path, monkeypatch):
    from mmw2s.train import run
    from mmw2s.train.checkpoint import read_trainer_state
    from mmw2s.train.metrics import read_jsonl

    nan_loss_at(monkeypatch, {1})
    run(train_cfg(shards, tmp_path / "run", "steps=3", "batch_size=8", "checkpoint_every=0"))
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["loss"] is None and rows[0]["loss"] > 0 and rows[2]["loss"] > 0
    assert rows[-1]["nonfinite_skipped"] == 1
    assert read_trainer_state(tmp_path / "run" / "final")["nonfinite_skipped"] == 1


def test_nonfinite_steps_in_a_row_stop_the_run_without_checkpoints(shards, tmp_path, monkeypatch):
    from mmw2s.train import TrainingDiverged, run

    nan_loss_at(monkeypatch, None)
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        run(train_cfg(shards, tmp_path / "run", "max_nonfinite_in_a_row=3", "checkpoint_every=1",
                      "batch_size=8"))
    assert not (tmp_path / "run" / "final").exists()
    # checkpoints of skipped steps hold the last finite weights, never a NaN
    import safetensors.torch

    for folder in (tmp_path / "run" / "checkpoints").glob("step_*"):
        weights = safetensors.torch.load_file(folder / "model" / "open_clip_model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_no_checkpoint_is_written_from_nonfinite_weights(tmp_path):
    from accelerate import Accelerator

    from mmw2s.train.checkpoint import NonFiniteWeights, save_checkpoint

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeights, match="weight"):
        save_checkpoint(Accelerator(), tmp_path, 1, model, lambda folder: None, {}, keep=2)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------
# Several processes, kill and resume (subprocesses: the real command line)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmw2s.cli", "train", *args]


def cli_env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


def overrides(cfg: TrainConfig) -> list[str]:
    """The test config as command-line overrides (JSON values: `"no"` stays a string)."""
    from mmw2s.schema import describe

    return [f"{key}={json.dumps(_get(cfg, key))}" for key, *_ in describe(TrainConfig)
            if _get(cfg, key) is not None]


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.slow
def test_two_cpu_processes_with_uneven_shards_run_the_same_steps(tmp_path):
    from mmw2s.train.checkpoint import read_trainer_state

    # three shards of different sizes: rank 0 reads two of them, rank 1 one
    spec = make_shards(tmp_path / "shards", shards=3, per_shard=24)
    cfg = train_cfg(spec, tmp_path / "run", "steps=6", "batch_size=8", "checkpoint_every=3")
    # `--cpu` would take accelerate's single-process (or MPI) CPU launcher; `--multi_gpu` takes
    # torchrun, and the trainer forms a gloo group on a machine without GPUs.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "mmw2s.cli", "train", *overrides(cfg)]
    # one thread per process: two processes share the two cores without oversubscribing them
    done = subprocess.run(launch, env=cli_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    state = read_trainer_state(tmp_path / "run" / "final")
    assert state["world_size"] == 2 and state["step"] == 6
    # every rank consumed exactly steps x batch samples, and together they saw 2 x that
    assert [d["samples"] for d in state["data_by_rank"]] == [48, 48]
    assert state["samples_seen"] == 96
    assert (tmp_path / "run" / "final" / "open_clip_model.safetensors").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_final_step_and_loss_curve(shards, tmp_path):
    from mmw2s.train import loss_history, run
    from mmw2s.train.metrics import read_jsonl

    steps = 16
    cfg = train_cfg(shards, tmp_path / "killed", f"steps={steps}", "checkpoint_every=4")
    proc = subprocess.Popen(cli(*overrides(cfg)), env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = tmp_path / "killed" / "checkpoints" / "step_000004"
    try:
        deadline = time.time() + 180
        while not first.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: between checkpoints, no clean shutdown
    finally:
        proc.wait()
    assert first.exists() and not (tmp_path / "killed" / "final").exists()
    resumed = subprocess.run(cli(*overrides(cfg), "resume=latest"), env=cli_env(),
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # each step once
    # the curve continues: the same losses as a run that was never interrupted
    run(train_cfg(shards, tmp_path / "straight", f"steps={steps}", "checkpoint_every=0"))
    killed, straight = loss_history(tmp_path / "killed"), loss_history(tmp_path / "straight")
    assert [s for s, _ in killed] == [s for s, _ in straight]
    assert [loss for _, loss in killed] == pytest.approx([loss for _, loss in straight], rel=1e-4, abs=1e-5)


def test_bf16_with_gradient_accumulation_after_a_full_precision_run(shards, tmp_path):
    from mmw2s.train import loss_history, run
    from mmw2s.train.checkpoint import read_trainer_state

    # the same process ran fp32 trainings before: a second precision must still be accepted
    run(train_cfg(shards, tmp_path / "bf16", "mixed_precision=bf16", "grad_accum=2", "steps=2",
                  "batch_size=8", "checkpoint_every=0"))
    state = read_trainer_state(tmp_path / "bf16" / "final")
    assert state["batches_consumed"] == 4 and state["samples_seen"] == 32
    assert len(loss_history(tmp_path / "bf16")) == 2


def test_flagged_sample_with_nothing_kept_is_never_trained_on():
    """`nothing_kept=flag` writes no .txt; the reader's fallback caption is the rejected alt-text."""
    sample = {"caption": "click here to buy", "json": {
        "caption": "click here to buy",
        "mmw2s": {"web_caption": "click here to buy", "web_kept": False, "synthetic": [],
                  "chosen": None, "nothing_kept": True}}}
    for source in ("txt", "json", "mix"):
        assert TextSelector(TextConfig(source=source))(sample, random.Random(0)) is None, source


def test_token_cache_gives_the_tokenizers_ids_full_or_not():
    import open_clip

    from mmw2s.train.data import TokenCache

    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=12)
    texts = ["a red square", "two blue circles", "a red square", "one green star"]
    calls = {"roomy": [], "full": []}
    caches = {name: TokenCache(lambda t, name=name: calls[name].append(list(t)) or tokenizer(t),
                               max_texts=200 if name == "roomy" else 1) for name in calls}
    for cache in caches.values():
        assert torch.equal(cache(texts), tokenizer(texts)) and torch.equal(cache(texts[::-1]), tokenizer(texts[::-1]))
    # each distinct text tokenized once; a full cache re-tokenizes the texts it could not hold
    assert calls["roomy"] == [["a red square", "two blue circles", "one green star"]]
    assert calls["full"][1] == ["one green star", "two blue circles"]
