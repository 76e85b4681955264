"""`mmw2s bootstrap`: CapFilt stages on fake streams, then end to end with tiny real models."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from mmw2s.data_pipelines import ReadLimits, ShardEnd, ShardWriter, Skip, is_complete, iter_samples
from mmw2s.errors import StageError
from mmw2s.bootstrap.pipeline import (Batch, OutputSample, Selection, batch_seed, batch_stage, caption_stage, decide,
                                    decide_stage, score_stage)
from mmw2s.bootstrap.thresholds import Thresholds, calibrate, load_thresholds, save_thresholds, top_fraction_threshold
from mmw2s.bootstrap.writer import ShardOutputs, write_stage
from mmw2s.config import load_config

ABS = Thresholds(mode="absolute", web=0.5, synthetic=0.5)


def jpeg(color="red", size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def event(url: str, i: int, caption: str = "a red square") -> dict:
    """A sample dict as shard I/O yields it."""
    key = f"{url[-1]}{i:04d}"
    return {"__key__": key, "__url__": url, "image": Image.new("RGB", (8, 8)), "image_bytes": b"JPEG" + key.encode(),
            "image_ext": "jpg", "caption": caption, "json": {"key": key, "caption": caption}}


def shape_preprocess(images: list) -> dict:
    return {"captioner": [im.size for im in images]}


# --------------------------------------------------------------------------------------------
# Stage logic on iter([...]) with fakes


def test_batches_stay_inside_one_shard_and_records_pass_through():
    stream = [event("s/0", 0), event("s/0", 1), event("s/0", 2), Skip("s/0", "00003", "corrupt_image"),
              ShardEnd("s/0", samples=3), event("s/1", 0), ShardEnd("s/1", samples=1)]
    out = list(batch_stage(iter(stream), batch_size=2, preprocess=shape_preprocess))
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["Batch", "Skip", "Batch", "ShardEnd", "Batch", "ShardEnd"]
    batches = [x for x in out if isinstance(x, Batch)]
    assert [b.keys for b in batches] == [["00000", "00001"], ["00002"], ["10000"]]
    assert [b.url for b in batches] == ["s/0", "s/0", "s/1"]
    assert "image" not in batches[0].samples[0] and batches[0].samples[0]["image_bytes"] == b"JPEG00000"
    assert batches[0].inputs == {"captioner": [(8, 8), (8, 8)]}


def test_an_image_the_preprocessor_rejects_costs_one_sample():
    def picky(images):
        if any(im.size == (1, 1) for im in images):
            raise ValueError("too small")
        return {"n": len(images)}

    bad = event("s/0", 1)
    bad["image"] = Image.new("RGB", (1, 1))
    out = list(batch_stage(iter([event("s/0", 0), bad, event("s/0", 2), ShardEnd("s/0")]), 4, picky))
    assert [type(x).__name__ for x in out] == ["Skip", "Batch", "ShardEnd"]
    assert out[0].reason == "preprocess_error" and out[0].key == "00001"
    assert out[1].keys == ["00000", "00002"] and out[1].inputs == {"n": 2}


def test_sampling_seed_depends_on_seed_shard_and_first_key_only():
    seen = []

    def fake_caption(inputs, seed):
        seen.append(seed)
        return [[f"caption {seed % 7}"] for _ in inputs["captioner"]]

    a = Batch("x/00000.tar", [{"__key__": "k1"}, {"__key__": "k2"}], {"captioner": [1, 2]})
    b = Batch("other/folder/00000.tar", [{"__key__": "k1"}], {"captioner": [1]})  # same shard name
    c = Batch("x/00000.tar", [{"__key__": "k2"}], {"captioner": [1]})
    out = list(caption_stage(iter([a, ShardEnd("x"), b, c]), fake_caption, seed=3))
    assert isinstance(out[1], ShardEnd) and len(out[0].synthetic) == 2
    assert seen[0] == seen[1] != seen[2]
    assert batch_seed(4, a) != batch_seed(3, a)


def test_score_stage_scores_web_then_every_synthetic_caption():
    batch = Batch("s/0", [{"__key__": "a", "caption": "web a"}, {"__key__": "b", "caption": "web b"}],
                  synthetic=[["s1", "s2"], ["s3", "s4"]])
    calls = []

    def fake_score(inputs, texts):
        calls.append(texts)
        return [[len(t) / 10 for t in row] for row in texts]

    (out,) = list(score_stage(iter([batch]), fake_score))
    assert calls == [[["web a", "s1", "s2"], ["web b", "s3", "s4"]]]
    assert out.web_scores == [0.5, 0.5] and out.synthetic_scores == [[0.2, 0.2], [0.2, 0.2]]


@pytest.mark.parametrize("choose, expected", [("web_first", ("web", "web")), ("best", ("s-high", "synthetic")),
                                              ("synthetic_first", ("s-high", "synthetic"))])
def test_selection_rules(choose, expected):
    block = decide("web", 0.6, ["s-low", "s-high", "s-rejected"], [0.55, 0.9, 0.1], ABS, Selection(choose=choose))
    assert (block["chosen"], block["chosen_source"]) == expected
    assert block["web_kept"] and [s["kept"] for s in block["synthetic"]] == [True, True, False]
    assert block["nothing_kept"] is False


def test_threshold_is_inclusive_like_blips_itm_rule():
    block = decide("web", 0.5, ["s"], [0.4999], ABS, Selection())
    assert block["web_kept"] and not block["synthetic"][0]["kept"] and block["chosen"] == "web"


def test_web_rejected_falls_back_to_best_synthetic():
    block = decide("junk", 0.1, ["a", "b"], [0.7, 0.8], ABS, Selection("web_first"))
    assert not block["web_kept"] and block["chosen"] == "b" and block["chosen_score"] == 0.8


def test_non_finite_scores_are_never_kept_and_recorded_as_null():
    block = decide("web", float("nan"), ["a"], [float("inf") * 0], ABS, Selection())
    assert block["web_score"] is None and not block["web_kept"] and block["nothing_kept"]
    json.dumps(block, allow_nan=False)  # valid JSON


@pytest.mark.parametrize("policy", ["drop", "flag"])
def test_nothing_kept_is_dropped_or_flagged(policy):
    batch = Batch("s/0", [{"__key__": "a", "caption": "junk", "image_ext": "png", "image_bytes": b"PNG",
                           "json": {"key": "a", "status": "success"}}],
                  synthetic=[["x"]], web_scores=[0.1], synthetic_scores=[[0.2]])
    provenance = {"captioner": {"name": "c"}, "filter": {"name": "f", "mode": "itm"}, "seed": 0}
    (out,) = list(decide_stage(iter([batch]), ABS, Selection(nothing_kept=policy), provenance))
    assert out.drop is (policy == "drop") and out.txt == "junk" and out.members()["png"] == b"PNG"  # the web caption
    block = out.json["mmw2s"]
    assert block["nothing_kept"] and block["chosen"] is None and block["chosen_source"] is None
    assert block["threshold"] == {"mode": "absolute", "web": 0.5, "synthetic": 0.5} and block["seed"] == 0
    assert out.json["status"] == "success"  # input fields kept


def test_top_fraction_threshold_keeps_that_fraction():
    scores = [0.1 * i for i in range(10)]
    t = top_fraction_threshold(scores, 0.3)
    assert sum(s >= t for s in scores) == 3
    assert top_fraction_threshold(scores, 1.0) == 0.0
    assert sum(s >= top_fraction_threshold(scores, 0.01) for s in scores) == 1
    with pytest.raises(ValueError):
        top_fraction_threshold([], 0.5)


def test_calibrated_thresholds_round_trip(tmp_path):
    t = calibrate([0.1, 0.2, 0.3, 0.4], [0.5, 0.6], 0.5, 0.5, samples=4)
    assert (t.web, t.synthetic) == (0.3, 0.6)
    save_thresholds(tmp_path, t)
    assert load_thresholds(tmp_path) == t and load_thresholds(tmp_path / "nothing") is None


def test_writer_counts_and_closes_each_shard_at_its_end(tmp_path):
    provenance = {"captioner": {"name": "c"}, "filter": {"name": "f", "mode": "itm"}, "seed": 0}

    def batch(url, keys, web, syn):
        samples = [{"__key__": k, "caption": "web", "image_ext": "jpg", "image_bytes": jpeg(), "json": {"key": k}}
                   for k in keys]
        return Batch(url, samples, synthetic=[["s"]] * len(keys), web_scores=web, synthetic_scores=syn)

    stream = [batch("in/00000.tar", ["a", "b"], [0.9, 0.1], [[0.1], [0.1]]),
              batch("in/00001.tar", ["c"], [0.1], [[0.8]]),  # interleaved, as workers do
              Skip("in/00000.tar", "z", "corrupt_image"), ShardEnd("in/00000.tar", samples=2),
              ShardEnd("in/00002.tar", damaged="truncated"), ShardEnd("in/00001.tar", samples=1)]
    with ShardOutputs(tmp_path, {"fingerprint": "abc"}) as outputs:
        decided = decide_stage(iter(stream), ABS, Selection(nothing_kept="drop"), provenance)
        ends = [x for x in write_stage(decided, outputs) if isinstance(x, tuple)]
    stats = {end.url: s for end, s in ends}
    s0 = stats["in/00000.tar"]
    assert (s0["inputs"], s0["decoded"], s0["skipped"], s0["web_kept"], s0["dropped"], s0["written"]) == (3, 2, 1, 1, 1, 1)
    assert s0["skipped_by_reason"] == {"corrupt_image": 1} and s0["fingerprint"] == "abc"
    assert s0["web_score_quantiles"]["q50"] == pytest.approx(0.5)
    assert stats["in/00001.tar"]["chosen_synthetic"] == 1 and stats["in/00002.tar"]["damaged"] == "truncated"
    for name in ("00000", "00001", "00002"):
        assert is_complete(tmp_path / f"{name}.tar")
    got = list(iter_samples(str(tmp_path / "00001.tar")))
    assert got[0]["caption"] == "s" and got[0]["json"]["mmw2s"]["chosen_source"] == "synthetic"
    assert [s["__key__"] for s in iter_samples(str(tmp_path / "00000.tar"))] == ["a"]


def test_an_error_mid_run_leaves_no_complete_output(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardOutputs(tmp_path) as outputs:
            sample = OutputSample("a", "in/00000.tar", False, "jpg", jpeg(),
                                  {"mmw2s": decide("w", 0.9, [], [], ABS, Selection())}, "w")
            outputs.write(sample)
            raise RuntimeError("killed")
    assert not (tmp_path / "00000.tar").exists() and not list(tmp_path.glob("*.partial"))


# --------------------------------------------------------------------------------------------
# End to end: tiny real models (random weights, saved like trained ones) on a tiny world

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(out=str(out), workers=1, samples_per_shard=8, clean=SplitConfig(0),
                               web=SplitConfig(24), test=SplitConfig(0)))
    return out / "web"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, world):
    """A BLIP captioner, a BLIP ITM filter and an open_clip dual encoder, saved as users' would be."""
    from mmw2s.models import CaptionerSpec, DualEncoderSpec, ItmSpec, build_captioner, build_dual_encoder, build_itm_filter

    folder = tmp_path_factory.mktemp("models")
    captions = [s["caption"] for s in iter_samples(str(world))]
    build_captioner(CaptionerSpec(name="blip-tiny"), train_captions=captions).save(folder / "captioner")
    build_itm_filter(ItmSpec(name="blip-tiny"), train_captions=captions).save(folder / "itm")
    build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny")).save(folder / "clip")
    return folder


def overrides(world, models, out, *extra) -> list[str]:
    return [f"input={world}", f"out={out}", f"captioner.name={models / 'captioner'}",
            f"filter.itm.name={models / 'itm'}", f"filter.dual_encoder.arch=local-dir:{models / 'clip'}",
            "decoding.num_captions=2", "decoding.max_new_tokens=8", "decoding.min_new_tokens=2",
            "batch_size=4", "workers=0", "cpu_threads=1", "progress=false", "selection.nothing_kept=flag", *extra]


def bootstrap(world, models, out, *extra) -> dict:
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.bootstrap.run import run

    return run(load_config(BootstrapConfig, None, overrides(world, models, out, *extra)))


def outputs(out) -> dict[str, dict]:
    """key -> raw members of every output sample (keys must be unique across shards)."""
    found = {}
    for path in sorted((Path(out) / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                found.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return found


def decisions(out) -> dict[str, dict]:
    """key -> the mmw2s block without provenance."""
    return {k: {f: v for f, v in json.loads(m["json"])["mmw2s"].items() if f in ("web_score", "synthetic", "chosen")}
            for k, m in outputs(out).items()}


@pytest.fixture(scope="module")
def reference(world, tiny_models, tmp_path_factory):
    """One uninterrupted single-process run (BLIP ITM filter), shared by the tests below."""
    out = tmp_path_factory.mktemp("reference")
    summary = bootstrap(world, tiny_models, out)
    return out, summary


def test_output_contract(world, tiny_models, reference):
    out, summary = reference
    inputs = {s["__key__"]: s for s in iter_samples(str(world), ReadLimits(decode_images=False))}
    got = outputs(out)
    assert set(got) == set(inputs) and summary["written"] == summary["decoded"] == 24
    for key, members in got.items():
        assert members["jpg"] == inputs[key]["image_bytes"]  # never re-encoded
        meta = json.loads(members["json"])
        block = meta["mmw2s"]
        assert {k: v for k, v in meta.items() if k != "mmw2s"} == inputs[key]["json"]  # input fields kept
        assert block["web_caption"] == inputs[key]["caption"] and len(block["synthetic"]) == 2
        assert block["captioner"] == {"name": str(tiny_models / "captioner"), "decoding": {
            "method": "nucleus", "num_captions": 2, "top_p": 0.9, "num_beams": 3, "max_new_tokens": 8,
            "min_new_tokens": 2}}
        assert block["filter"]["mode"] == "itm" and block["seed"] == 0
        assert block["threshold"] == {"mode": "absolute", "web": 0.5, "synthetic": 0.5}
        assert 0.0 <= block["web_score"] <= 1.0 and block["web_kept"] == (block["web_score"] >= 0.5)
        if block["chosen"] is None:
            assert block["nothing_kept"] and members["txt"].decode() == inputs[key]["caption"]  # flag: web caption
        else:
            assert members["txt"].decode() == block["chosen"] and block["chosen_source"] in ("web", "synthetic")
    stats = json.loads((out / "shards" / "00000_stats.json").read_text())
    assert stats["inputs"] == stats["decoded"] == 8 and stats["skipped"] == 0
    assert stats["web_score_quantiles"]["q50"] is not None and stats["images_per_s"] > 0
    written = json.loads((out / "summary.json").read_text())
    assert written["complete_shards"] == 3
    shard_stats = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*_stats.json"))]
    for key in ("synthetic_invalid", "filter_truncated", "written"):  # the summary totals every counter
        assert written[key] == sum(st[key] for st in shard_stats), key
    assert (out / "config.yaml").exists() and json.loads((out / "thresholds.json").read_text())["web"] == 0.5


def test_captions_depend_on_neither_workers_nor_the_truth_block(world, tiny_models, reference, tmp_path):
    """Two data-loader workers on a copy of the input without `truth`: the same captions and scores."""
    stripped = tmp_path / "web"
    stripped.mkdir()
    for url in sorted(world.glob("*.tar")):
        with ShardWriter(stripped / url.name) as w:
            for s in iter_samples(str(url), ReadLimits(decode_images=False)):
                meta = {k: v for k, v in s["json"].items() if k != "truth"}
                w.write({"__key__": s["__key__"], "jpg": s["image_bytes"], "txt": s["caption"], "json": meta})
            w.close()
    bootstrap(stripped, tiny_models, tmp_path / "out", "workers=2")
    assert decisions(tmp_path / "out") == decisions(reference[0])


def test_rerun_of_a_finished_run_loads_no_model(world, tiny_models, reference, tmp_path, monkeypatch):
    from mmw2s.bootstrap.capfilt import CapFilt

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run must not load models")

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    monkeypatch.setattr(CapFilt, "from_config", refuse)
    summary = bootstrap(world, tiny_models, out)
    assert summary["images_this_run"] == 0 and summary["written"] == 24


def test_rerun_skips_complete_shards_and_redoes_partial_ones(world, tiny_models, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    (out / "shards" / "00001_stats.json").unlink()  # as if killed between rename and stats
    (out / "shards" / "00002.tar").rename(out / "shards" / "00002.tar.partial")  # killed mid-shard
    before = (out / "shards" / "00000.tar").stat().st_mtime_ns
    summary = bootstrap(world, tiny_models, out)
    assert summary["images_this_run"] == 16 and (out / "shards" / "00000.tar").stat().st_mtime_ns == before
    assert decisions(out) == decisions(reference[0]) and not list(out.glob("shards/*.partial"))
    with pytest.raises(StageError, match="other settings"):
        bootstrap(world, tiny_models, out, "seed=1")


def test_clip_filter_with_calibrated_top_fraction(world, tiny_models, tmp_path):
    summary = bootstrap(world, tiny_models, tmp_path, "filter.kind=clip", "thresholds.mode=top_fraction",
                        "thresholds.web_fraction=0.25", "thresholds.synthetic_fraction=0.5",
                        "thresholds.calibration_samples=24", "selection.nothing_kept=drop")
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved["mode"] == "top_fraction" and saved["calibration_samples"] == 24 and saved["web_fraction"] == 0.25
    assert summary["web_kept"] == 6 and summary["synthetic_kept"] == 24  # calibrated on all 24 samples
    assert summary["thresholds"]["web"] == saved["web"]
    block = json.loads(next(iter(outputs(tmp_path).values()))["json"])["mmw2s"]
    assert block["threshold"]["web"] == saved["web"] and block["filter"]["mode"] == "clip"
    assert -1.0 <= block["web_score"] <= 1.0
    assert summary["written"] == 24 - summary["dropped"] == len(outputs(tmp_path))


def test_corrupt_inputs_are_skipped_and_counted(world, tiny_models, tmp_path):
    good = list(iter_samples(str(world / "00000.tar"), ReadLimits(decode_images=False)))[:3]
    with ShardWriter(tmp_path / "in" / "00000.tar") as w:
        for i, s in enumerate(good):
            w.write({"__key__": s["__key__"], "jpg": s["image_bytes"] if i != 1 else b"not a jpeg",
                     "txt": s["caption"], "json": s["json"]})
        w.close()
    raw = (tmp_path / "in" / "00000.tar").read_bytes()
    (tmp_path / "in" / "00001.tar").write_bytes(raw[: len(raw) // 2])  # a cut-off download
    summary = bootstrap(tmp_path / "in", tiny_models, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "shards" / "00000_stats.json").read_text())
    assert (stats["inputs"], stats["decoded"], stats["skipped"]) == (3, 2, 1)
    assert stats["skipped_by_reason"] == {"corrupt_image": 1}
    assert summary["complete_shards"] == 2 and summary["damaged_shards"] == [str(tmp_path / "in" / "00001.tar")]


def test_ceiling_ratio_is_recorded(world, tiny_models, tmp_path):
    summary = bootstrap(world, tiny_models, tmp_path, "measure_ceiling=true", "ceiling_images=8")
    ceiling = summary["ceiling"]
    assert ceiling["batch_size"] == 4 and ceiling["images"] == 8 and ceiling["images_per_s"] > 0
    assert ceiling["ratio"] == pytest.approx(summary["images_per_s"] / ceiling["images_per_s"], rel=0.05)


def all_keys(out) -> list[str]:
    """Every key written, with repeats (a key written twice shows up twice)."""
    keys = []
    for path in sorted((Path(out) / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            keys += [m.name.split(".", 1)[0] for m in tar.getmembers() if m.name.endswith(".json")]
    return keys


def schema_defaults(folder: Path) -> Path:
    """An empty config file: the CLI then runs on the schema's defaults, as `bootstrap()` does."""
    path = folder / "defaults.yaml"
    path.write_text("{}\n")
    return path


def cli_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_output(world, tiny_models, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mmw2s.cli", "bootstrap", "--config", str(schema_defaults(tmp_path)),
           *overrides(world, tiny_models, out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("shards/*_stats.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(out.glob("shards/*_stats.json"))
    assert 1 <= len(done) < 3, f"the kill did not land mid-run: {done}, {proc.stderr.read()[-2000:]}"
    summary = bootstrap(world, tiny_models, out)
    assert summary["images_this_run"] == 24 - 8 * len(done)
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) == 24  # none twice, none missing
    assert decisions(out) == decisions(reference[0])  # the same captions for the same seed


@pytest.mark.slow
def test_two_ranks_write_exactly_the_keys_of_one_process(world, tiny_models, reference, tmp_path):
    out = tmp_path / "out"
    # `--cpu` would make accelerate 1.x start ONE process (its simple launcher); `--multi_gpu`
    # starts torchrun, and on a machine without CUDA the ranks talk over gloo (MULTI_CPU).
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29517", "-m", "mmw2s.cli", "bootstrap", "--config", str(schema_defaults(tmp_path)),
           *overrides(world, tiny_models, out), "device=cpu"]
    result = subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    keys = all_keys(out)
    assert len(keys) == len(set(keys)) and set(keys) == set(all_keys(reference[0]))
    assert decisions(out) == decisions(reference[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete_shards"] == 3 and sorted(r["rank"] for r in summary["ranks"]) == [0, 1]
    assert sum(r["images"] for r in summary["ranks"]) == 24


def test_filter_only_needs_no_captioner(world, tiny_models, tmp_path):
    """num_captions=0: the web captions are only filtered (the 'filtered' baseline)."""
    summary = bootstrap(world, tiny_models, tmp_path, "decoding.num_captions=0", "captioner.name=blip-tiny",
                        "selection.nothing_kept=drop", "thresholds.web=0.3")
    blocks = [json.loads(m["json"])["mmw2s"] for m in outputs(tmp_path).values()]
    assert summary["synthetic"] == 0 and summary["written"] == summary["web_kept"] == len(blocks)
    assert all(b["synthetic"] == [] and b["chosen_source"] == "web" for b in blocks)
    assert all(b["captioner"]["name"] is None for b in blocks)
