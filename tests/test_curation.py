"""Curation around CapFilt: `mmw2s curate` (dedup, decontamination), the bootstrap's curation
filters (index, safety classifier) and the parquet metadata beside every output shard."""
from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmw2s.data_pipelines.image_hash import HashIndex, hamming, phash
from mmw2s.data_pipelines import ShardEnd, Skip, iter_samples
from hostile_tars import build_tiny_models, bootstrap, sample, write_tar
from mmw2s.bootstrap.curation import curation_stage
from mmw2s.bootstrap.curation_config import CurationConfig, SafetyConfig
from mmw2s.bootstrap.pipeline import Batch
from mmw2s.config import load_config
from mmw2s.curate.config import CurateConfig
from mmw2s.curate.index import all_rows


def reencoded(image: Image.Image, size: tuple[int, int], quality: int) -> bytes:
    buf = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Hashes


def test_phash_survives_resizing_and_recompression_and_separates_other_images():
    rng = np.random.default_rng(0)
    # smooth random scenes: 8x8 colour noise upsampled, like blurry photos
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 256), Image.Resampling.BICUBIC)
              for _ in range(6)]
    for im in images:
        copy = Image.open(io.BytesIO(reencoded(im, (100, 100), 40)))
        assert hamming(phash(im), phash(copy)) <= 4
    hashes = [phash(im) for im in images]
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[:i]) > 12


def test_banded_index_finds_exactly_what_a_full_scan_finds():
    rng = random.Random(1)
    stored = [rng.getrandbits(64) for _ in range(300)]
    index = HashIndex(max_distance=5)
    for h in stored:
        index.add(h)
    queries = [stored[rng.randrange(300)] ^ sum(1 << rng.randrange(64) for _ in range(rng.randrange(8)))
               for _ in range(200)] + [rng.getrandbits(64) for _ in range(50)]
    for q in queries:
        scan = min(((hamming(q, h), i) for i, h in enumerate(stored) if hamming(q, h) <= 5), default=None)
        got = index.nearest(q)
        assert (None if got is None else (got.distance, got.index)) == scan


# --------------------------------------------------------------------------------------------
# `mmw2s curate` on a world with planted copies


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The world's web shards, plus two shards planting: 3 test images re-encoded and resized, an exact
    and a near copy of web images (the exact copy twice, across shards), a truncated JPEG and a
    decompression bomb."""
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world

    root = tmp_path_factory.mktemp("planted")
    generate_world(WorldConfig(out=str(root / "world"), workers=1, samples_per_shard=8, clean=SplitConfig(0),
                               web=SplitConfig(16), test=SplitConfig(8)))
    web = {s["__key__"]: s for s in iter_samples(str(root / "world" / "web"))}
    test = list(iter_samples(str(root / "world" / "test")))
    inputs = root / "inputs"
    for path in sorted((root / "world" / "web").glob("*.tar")):
        (inputs / path.name).parent.mkdir(parents=True, exist_ok=True)
        (inputs / path.name).write_bytes(path.read_bytes())
    first, second = sorted(web)[1], sorted(web)[9]
    truncated = web[first]["image_bytes"][: len(web[first]["image_bytes"]) // 2]
    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, "PNG")  # 25 M pixels > max_pixels
    members = [*sample("p_test0", "a copied test image", reencoded(test[0]["image"], (100, 100), 60)),
               *sample("p_exact", "an exact copy", web[first]["image_bytes"]),
               *sample("p_test1", "another copied test image", reencoded(test[1]["image"], (48, 48), 80)),
               *sample("p_trunc", "a truncated image", truncated),
               *sample("p_near", "a resized copy", reencoded(web[second]["image"], (90, 90), 50))]
    write_tar(inputs / "00002.tar", members)
    write_tar(inputs / "00003.tar", [*sample("q_exact", "the exact copy again", web[first]["image_bytes"]),
                                     *sample("q_bomb", "a decompression bomb", bomb.getvalue()),
                                     *sample("q_test5", "a third test copy", reencoded(test[5]["image"], (80, 80), 70))])
    expected = {"p_test0": ("contaminated:world:retrieval", test[0]["__key__"]),
                "p_test1": ("contaminated:world:retrieval", test[1]["__key__"]),
                "q_test5": ("contaminated:world:retrieval", test[5]["__key__"]),
                "p_exact": ("duplicate_exact", first), "q_exact": ("duplicate_exact", first),
                "p_near": ("duplicate_near", second)}
    return root, expected


def curate(root: Path, out: Path, *extra: str) -> dict:
    from mmw2s.curate.run import run

    return run(load_config(CurateConfig, None, [f"input={root / 'inputs'}", f"out={out}",
                                                "decontam.benchmarks=[world:retrieval]",
                                                f"decontam.world={root / 'world'}", *extra]))


@pytest.fixture(scope="module")
def index(planted, tmp_path_factory):
    root, _ = planted
    out = tmp_path_factory.mktemp("curate")
    return out, curate(root, out, "workers=0")


def test_planted_copies_are_found_once_and_hostile_images_counted(planted, index):
    _, expected = planted
    out, report = index
    rows = all_rows(out / "index.parquet")
    decided = {r["key"]: (r["reason"], r["of_example"] or r["of_key"]) for r in rows if r["reason"]}
    assert {k: v for k, v in decided.items() if not v[0].startswith("unreadable")} == expected
    assert decided["p_trunc"][0] == "unreadable:corrupt_image" and decided["q_bomb"][0] == "unreadable:too_large"
    assert report["unreadable_by_reason"] == {"corrupt_image": 1, "too_large": 1}
    assert report["inputs"] == 16 + 8 and report["kept"] == 16 and len(rows) == 24
    assert report["by_reason"] == {"kept": 16, "contaminated:world:retrieval": 3, "duplicate_exact": 2,
                                   "duplicate_near": 1}
    bench = json.loads((out / "contamination.json").read_text())["benchmarks"]["world:retrieval"]
    assert bench["contaminated"] == bench["by_image"] == 3 and bench["images"] == 8
    assert {(p["key"], p["of_example"]) for p in bench["pairs"]} == {(k, v[1]) for k, v in expected.items()
                                                                    if v[0].startswith("contaminated")}
    page = (out / "contamination.html").read_text()
    assert page.count('class="pair"') == 3 and page.count('src="data:image/') == 6  # both images of each pair
    assert all(f"{k}</figcaption>" in page for k in ("p_test0", "p_test1", "q_test5"))


def test_index_is_the_same_bytes_for_any_number_of_workers_and_reruns_are_skipped(planted, index, tmp_path):
    root, _ = planted
    out, report = index
    again = curate(root, tmp_path, "workers=2")
    assert (tmp_path / "index.parquet").read_bytes() == (out / "index.parquet").read_bytes()
    assert again["by_reason"] == report["by_reason"]
    (tmp_path / "index.parquet").unlink()
    assert curate(root, tmp_path, "workers=2")["fingerprint"] == again["fingerprint"]  # complete: not redone
    assert not (tmp_path / "index.parquet").exists()


def test_caption_copies_of_a_benchmark_are_contamination(planted, tmp_path):
    root, _ = planted
    gold = next(iter_samples(str(root / "world" / "test")))["json"]["truth"]["gold_caption"]
    write_tar(tmp_path / "in" / "00000.tar", sample("c0", f"  {gold.upper()}. ", b"not even an image") +
              sample("c1", gold, next(iter_samples(str(root / "world" / "web")))["image_bytes"]))
    from mmw2s.curate.run import run

    report = run(load_config(CurateConfig, None, [f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}",
                                                  "decontam.benchmarks=[world:captions]",
                                                  f"decontam.world={root / 'world'}", "workers=0",
                                                  "decontam.min_caption_chars=5"]))
    assert report["by_reason"] == {"contaminated:world:captions": 1}  # c0 has no image: unreadable
    (row,) = [r for r in all_rows(tmp_path / "out" / "index.parquet") if r["key"] == "c1"]
    assert row["match"] == "caption"


# --------------------------------------------------------------------------------------------
# The bootstrap's curation stage on fakes


class FakeSafety:
    """Scores from the batch's `inputs["safety"]` values themselves (the test's known outcome)."""

    def score(self, pixels):
        from mmw2s.models.safety import SafetyScores

        values = pixels.tolist()
        return SafetyScores(values, ["nsfw"] * len(values))


def test_safety_drops_or_flags_over_threshold_and_cuts_the_batch_inputs():
    batch = Batch("s/00000.tar", [{"__key__": f"k{i}"} for i in range(4)],
                  {"safety": torch.tensor([0.1, 0.9, 0.5, 0.2]), "captioner": {"pixel_values": torch.arange(4)}})
    cfg = CurationConfig(safety=SafetyConfig(name="x", unsafe_labels=["nsfw"], threshold=0.5))
    out = list(curation_stage(iter([batch, ShardEnd("s/00000.tar")]), cfg, FakeSafety()))
    skips = [x for x in out if isinstance(x, Skip)]
    assert [(s.key, s.reason) for s in skips] == [("k1", "unsafe"), ("k2", "unsafe")]
    (kept,) = [x for x in out if isinstance(x, Batch)]
    assert kept.keys == ["k0", "k3"] and kept.inputs["captioner"]["pixel_values"].tolist() == [0, 3]
    assert kept.curation[0]["safety"] == {"score": pytest.approx(0.1), "label": "nsfw", "unsafe": False}
    cfg.safety.action = "flag"
    batch.samples = [{"__key__": f"k{i}"} for i in range(4)]
    (flagged, _) = list(curation_stage(iter([batch, ShardEnd("s/00000.tar")]), cfg, FakeSafety()))
    assert [c["reason"] for c in flagged.curation] == [None, "unsafe", "unsafe", None]


def test_samples_the_index_did_not_check_are_skipped_and_other_shards_refused(tmp_path):
    from mmw2s.curate.index import IndexWriter
    from mmw2s.errors import StageError

    writer = IndexWriter(tmp_path / "index.parquet")
    writer.write_shard([{"shard": "00000", "key": "a", "sha256": "0" * 64, "phash": "0" * 16, "reason": None},
                        {"shard": "00000", "key": "b", "reason": "unreadable:too_large"},
                        {"shard": "00000", "key": "c", "sha256": "1" * 64, "phash": "1" * 16,
                         "reason": "duplicate_near", "of_shard": "00000", "of_key": "a", "distance": 3}])
    writer.close()
    batch = Batch("in/00000.tar", [{"__key__": k} for k in "abcd"], {"filter": torch.arange(4)})
    out = list(curation_stage(iter([batch]), CurationConfig(index=str(tmp_path / "index.parquet"))))
    assert [(s.key, s.reason, s.detail) for s in out if isinstance(s, Skip)] == [
        ("b", "not_in_curation_index", "unreadable:too_large"), ("c", "duplicate_near", "00000/a"),
        ("d", "not_in_curation_index", "")]
    assert out[-1].keys == ["a"] and out[-1].inputs["filter"].tolist() == [0]
    other = Batch("in/00001.tar", [{"__key__": "a"}], {})
    with pytest.raises(StageError, match="input shard in/00001.tar is not in curation index"):
        list(curation_stage(iter([other]), CurationConfig(index=str(tmp_path / "index.parquet"))))


# --------------------------------------------------------------------------------------------
# End to end: the bootstrap reads the index, runs a tiny safety classifier, writes parquet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny BLIP pair, and a tiny ViT classifier whose classifier is zero but its bias: every
    image scores p(nsfw) = sigmoid(1) = 0.731, whatever its pixels."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = build_tiny_models(tmp_path_factory.mktemp("models"))
    config = ViTConfig(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, id2label={0: "safe", 1: "nsfw"}, label2id={"safe": 0, "nsfw": 1})
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 1.0]))
    model.save_pretrained(folder / "safety")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder / "safety")
    return folder


def shard_members(folder: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                found.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return found


@pytest.mark.slow
def test_bootstrap_drops_what_the_index_says_and_workers_give_the_same_bytes(planted, index, tiny, tmp_path):
    import pyarrow.parquet as pq

    root, expected = planted
    out, _ = index
    runs = {}
    for workers in (0, 2):
        runs[workers] = bootstrap(root / "inputs", tiny, tmp_path / f"w{workers}", workers,
                                  f"curation.index={out / 'index.parquet'}")
    for name in ("00000.tar", "00002.tar", "00003.tar", "00002.parquet"):
        assert (tmp_path / "w0" / "shards" / name).read_bytes() == (tmp_path / "w2" / "shards" / name).read_bytes()
    written = shard_members(tmp_path / "w0" / "shards")
    assert not set(expected) & set(written) and len(written) == 16
    stats = json.loads((tmp_path / "w0" / "shards" / "00002_stats.json").read_text())
    assert stats["skipped_by_reason"] == {"contaminated:world:retrieval": 2, "duplicate_exact": 1,
                                          "duplicate_near": 1, "corrupt_image": 1}
    assert runs[0]["skipped"] == 8 and stats["parquet_rows"] == 5
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "w0" / "shards" / "00002.parquet").to_pylist()}
    assert rows["p_near"]["decision"] == "skipped" and rows["p_near"]["detail"] == f"00001/{expected['p_near'][1]}"
    assert (rows["p_near"]["duplicate_of"], rows["p_near"]["web_caption"]) == (rows["p_near"]["detail"], "a resized copy")
    assert rows["p_test0"]["curation_reason"] == "contaminated:world:retrieval" and rows["p_trunc"]["url"] is None
    # a rerun with another index is refused rather than mixing two curations
    with pytest.raises(Exception, match="other settings"):
        bootstrap(root / "inputs", tiny, tmp_path / "w0", 0, f"curation.index={out / 'index.parquet'}",
                  "curation.action=flag")


@pytest.mark.slow
def test_flagged_samples_carry_their_reason_and_parquet_rows_equal_the_json(planted, index, tiny, tmp_path):
    import pyarrow.parquet as pq

    root, expected = planted
    summary = bootstrap(root / "inputs", tiny, tmp_path, 0, f"curation.index={index[0] / 'index.parquet'}",
                        "curation.action=flag", f"curation.safety.name={tiny / 'safety'}",
                        "curation.safety.unsafe_labels=[nsfw]", "curation.safety.threshold=0.9")
    written = shard_members(tmp_path / "shards")
    assert summary["written"] == 22 and set(expected) <= set(written)
    rows = {}
    for path in sorted((tmp_path / "shards").glob("*.parquet")):
        rows.update({r["key"]: r for r in pq.read_table(path).to_pylist()})
    assert len(rows) == 24 and rows["q_bomb"]["reason"] == "too_large"
    stats = json.loads((tmp_path / "shards" / "00002_stats.json").read_text())
    assert stats["flagged_by_reason"] == {"contaminated:world:retrieval": 2, "duplicate_exact": 1, "duplicate_near": 1}
    for key, members in written.items():
        meta = json.loads(members["json"])
        block, row = meta["mmw2s"], rows[key]
        assert block["curation"]["reason"] == (expected[key][0] if key in expected else None)
        assert block["curation"]["safety"]["score"] == pytest.approx(0.7311, abs=1e-4)
        assert block["safety"]["threshold"] == 0.9
        assert (row["url"], row["width"], row["height"]) == (meta.get("url"), meta.get("width"), meta.get("height"))
        assert (row["web_caption"], row["web_score"], row["web_kept"]) == (
            block["web_caption"], block["web_score"], block["web_kept"])
        assert row["synthetic"] == [{**s, "invalid": s.get("invalid")} for s in block["synthetic"]]
        assert (row["chosen"], row["chosen_source"], row["chosen_score"]) == (
            block["chosen"], block["chosen_source"], block["chosen_score"])
        assert (row["curation_reason"], row["safety_score"], row["phash"]) == (
            block["curation"]["reason"], block["curation"]["safety"]["score"], block["curation"]["phash"])
        assert row["decision"] == "written" and row["sha256"] == block["curation"]["sha256"]


@pytest.mark.slow
def test_a_tiny_classifier_with_a_fixed_bias_drops_every_image_over_threshold(planted, tiny, tmp_path):
    root, _ = planted
    summary = bootstrap(root / "world" / "web", tiny, tmp_path, 0, f"curation.safety.name={tiny / 'safety'}",
                        "curation.safety.unsafe_labels=[nsfw]", "curation.safety.threshold=0.7")
    assert summary["written"] == 0 and summary["skipped"] == 16
    stats = json.loads((tmp_path / "shards" / "00000_stats.json").read_text())
    assert stats["skipped_by_reason"] == {"unsafe": 8}
    assert stats["skipped_samples"][0]["detail"] == "nsfw 0.7311"


def test_a_safety_label_the_checkpoint_lacks_is_refused_by_name(tiny):
    from mmw2s.models.safety import SafetyClassifier

    with pytest.raises(ValueError, match=r"unsafe labels \['porn'\] are not among its labels \['nsfw', 'safe'\]"):
        SafetyClassifier.load(str(tiny / "safety"), ["porn"])
    scores = SafetyClassifier.load(str(tiny / "safety"), ["nsfw", "safe"]).score(torch.zeros(2, 3, 32, 32))
    assert scores.scores == pytest.approx([1.0, 1.0])  # both labels unsafe: their probabilities add up


@pytest.mark.parametrize("action", ["drop", "flag"])
def test_eval_results_say_whether_the_training_data_was_decontaminated(planted, index, tmp_path, action):
    """A model's `training_data` names the bootstrap run that made it; its curation index and action
    decide, per benchmark, what the eval result records."""
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.config import save_config
    from mmw2s.evaluate.run import decontamination, training_data_curation

    root, _ = planted
    out, _ = index
    run = tmp_path / "bootstrap"
    cfg = load_config(BootstrapConfig, None, [f"input={root / 'inputs'}", f"out={run}",
                                              f"curation.index={out / 'index.parquet'}", f"curation.action={action}"])
    save_config(cfg, run)  # what `mmw2s bootstrap` writes first
    curation = training_data_curation(str(run))
    checked = decontamination(str(run), "world:retrieval", "world:retrieval", curation)
    assert checked["checked"] and checked["contaminated_found"] == 3 and checked["action"] == action
    assert checked["decontaminated"] == (action == "drop")  # flagged copies stay in the training data
    other = decontamination(str(run), "world:color", "world:color", curation)
    assert not other["checked"] and not other["decontaminated"] and other["contaminated_found"] is None
    # the eval writes the same record into each result of a model that names the run
    from mmw2s.evaluate.config import ModelEntry
    from mmw2s.evaluate.run import evaluate_model, result_path
    from mmw2s.evaluate.tasks import TaskSettings
    from mmw2s.models.specs import DualEncoderSpec

    entry = ModelEntry(name="student", kind="dual_encoder", dual_encoder=DualEncoderSpec(arch="mmw2s-conv-tiny"),
                       training_data=str(run))
    evaluate_model(entry, ["world:retrieval", "world:color"], tmp_path / "eval", TaskSettings(limit=4),
                   world=str(root / "world"))
    for spec, expected in (("world:retrieval", checked), ("world:color", other)):
        assert json.loads(result_path(tmp_path / "eval", "student", spec).read_text())["training_data"] == expected
