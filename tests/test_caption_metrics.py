"""The captioning task: caption benchmark readers, pycocoevalcap metrics (against COCOEvalCap itself),
CLIPScore, CHAIR, the no-Java path, and an end-to-end `mmw2s eval` on the world's export."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmw2s.data_pipelines import caption_benchmarks as CB  # noqa: E402
from mmw2s.evaluate import caption_metrics as CM  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="java not installed (.ci/run installs default-jre-headless)")

REFS = {
    11: ["A man riding a horse on a beach.", "A person rides a brown horse near the sea.", "a man on a horse"],
    12: ["Two dogs playing in the snow.", "dogs run through snow", "Two puppies play outside in winter."],
    13: ["A plate with a slice of pizza and a fork.", "pizza on a white plate next to a fork"],
    14: ["A red bus driving down a city street.", "a double decker bus on the road"],
    15: ["A cat sleeping on a laptop keyboard.", "a kitten lying on a computer"],
}
PREDS = {11: "a man riding a horse on the beach", 12: "a dog playing in the snow",
         13: "a slice of pizza on a plate", 14: "a bus on a street", 15: "a cat sitting on a laptop"}


def _coco_folder(root: Path, refs: dict = REFS, objects: dict | None = None) -> Path:
    """A tiny COCO caption folder: captions_val.json, images/, optionally instances_val.json."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for n, (image_id, captions) in enumerate(refs.items()):
        name = f"images/{image_id:012d}.png"
        Image.new("RGB", (16, 16), (40 * n, 100, 200 - 30 * n)).save(root / name)
        images.append({"id": image_id, "file_name": name, "width": 16, "height": 16})
        anns += [{"id": len(anns), "image_id": image_id, "caption": c} for c in captions]
    (root / "captions_val.json").write_text(json.dumps({"images": images, "annotations": anns}))
    if objects is not None:
        cats = sorted({c for names in objects.values() for c in names})
        ids = {c: k + 1 for k, c in enumerate(cats)}
        inst = [{"id": k, "image_id": i, "category_id": ids[c], "bbox": [0, 0, 1, 1], "area": 1, "iscrowd": 0}
                for k, (i, c) in enumerate((i, c) for i, names in objects.items() for c in names)]
        (root / "instances_val.json").write_text(json.dumps({
            "images": images, "annotations": inst, "categories": [{"id": v, "name": k} for k, v in ids.items()]}))
    return root / "captions_val.json"


def _reference_scores(annotations: Path, predictions: Path, monkeypatch) -> dict:
    """pycocoevalcap's own COCOEvalCap on the two files (SPICE left out: it would download CoreNLP)."""
    import pycocoevalcap.eval as E
    from pycocotools.coco import COCO

    class NoSpice:  # COCOEvalCap runs SPICE last; its jars are not here and must not be downloaded
        def compute_score(self, gts, res):
            return 0.0, [0.0] * len(gts)

        def method(self):
            return "SPICE (left out)"

    monkeypatch.setattr(E, "Spice", NoSpice)
    coco = COCO(str(annotations))
    evaluator = E.COCOEvalCap(coco, coco.loadRes(str(predictions)))
    evaluator.evaluate()
    return evaluator.eval


# --------------------------------------------------------------------------------------------
# COCO metrics against COCOEvalCap


@needs_java
def test_bleu_rouge_cider_meteor_equal_coco_eval_cap(tmp_path, monkeypatch):
    ann = _coco_folder(tmp_path / "coco")
    preds_file = tmp_path / "preds.json"
    preds_file.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PREDS.items()]))
    ours = CM.coco_caption_scores(REFS, PREDS)
    theirs = _reference_scores(ann, preds_file, monkeypatch)
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert ours.metrics[name] == pytest.approx(theirs[name], abs=1e-6), name
    assert ours.tokenizer == "ptb" and 0.3 < ours.metrics["CIDEr"] < 5
    assert ours.metrics["SPICE"] is None and "CoreNLP" in ours.unavailable["SPICE"]
    assert len(ours.per_image["CIDEr"]) == len(REFS)


def test_without_java_meteor_and_spice_are_unavailable_and_the_rest_uses_the_python_tokenizer(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(CM.shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name))

    def no_java(*args, **kwargs):
        raise AssertionError("the Java tokenizer was called without Java")

    monkeypatch.setattr(CM, "ptb_tokenize", no_java)
    out = CM.coco_caption_scores(REFS, PREDS)
    assert out.tokenizer == "python-fallback"
    assert out.metrics["METEOR"] is None and "java not found" in out.unavailable["METEOR"]
    assert out.metrics["SPICE"] is None and "java" in out.unavailable["SPICE"]
    assert "pure-Python" in out.unavailable["tokenizer"]
    assert all(out.metrics[m] is not None for m in ("Bleu_4", "ROUGE_L", "CIDEr"))
    assert CM.python_tokenize({1: ["A man's horse, on the beach."]}) == {1: ["a man 's horse on the beach"]}


@needs_java
def test_the_python_tokenizer_matches_ptb_on_plain_captions():
    plain = {k: v for k, v in REFS.items()}
    java = CM.coco_caption_scores(plain, PREDS, spice=False)
    fallback = CM.coco_caption_scores(plain, PREDS, java=False, spice=False)
    for name in ("Bleu_4", "ROUGE_L", "CIDEr"):
        assert fallback.metrics[name] == pytest.approx(java.metrics[name], abs=1e-9)


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="without a prediction"):
        CM.coco_caption_scores(REFS, {11: "a man"}, java=False)
    with pytest.raises(ValueError, match="without a reference caption: \\[7\\]"):
        CM.coco_caption_scores({7: []}, {7: "a man"}, java=False)


# --------------------------------------------------------------------------------------------
# CLIPScore


def test_clip_score_and_ref_clip_score_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    cand = torch.tensor([[1.0, 1.0], [-1.0, 0.5]])
    refs = [torch.tensor([[1.0, 0.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0]])]
    out = CM.clip_scores(image, cand, refs)
    # pair 1: cos(image, cand) = 1/sqrt(2); best reference cosine = 1/sqrt(2)
    c1 = 2.5 * (1 / math.sqrt(2))
    r1 = 2 * c1 * (1 / math.sqrt(2)) / (c1 + 1 / math.sqrt(2))
    # pair 2: cos = 0.5 / sqrt(1.25) > 0; its one reference has cosine -1/sqrt(1.25) < 0: clipped to 0,
    # so the harmonic mean is 0
    c2 = 2.5 * 0.5 / math.sqrt(1.25)
    assert out["clip_score"].tolist() == pytest.approx([c1, c2], abs=1e-6)
    assert out["ref_clip_score"].tolist() == pytest.approx([r1, 0.0], abs=1e-6)
    flipped = CM.clip_scores(image, -cand)  # negative cosines are clipped at 0 (Hessel et al.)
    assert flipped["clip_score"].tolist() == [0.0, 0.0]


def test_clip_cosines_of_an_open_clip_model_are_its_normalised_embeddings():
    from mmw2s.evaluate.captioning import clip_cosines
    from mmw2s.models.dual_encoders import build_dual_encoder
    from mmw2s.models.specs import DualEncoderSpec

    dual = build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny"))
    dual.model.eval()
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    captions, refs = ["a red circle", "a blue star"], [["a red circle", "a small red circle"], ["a blue star"]]
    out = clip_cosines(dual, images, captions, refs, prefix="A photo depicts ")
    with torch.no_grad():
        img = dual.encode_image(dual.preprocess(images)).double()
        for i, (caption, rs) in enumerate(zip(captions, refs)):
            c = dual.encode_text(["A photo depicts " + caption]).double()[0]
            r = dual.encode_text(["A photo depicts " + t for t in rs]).double()
            cos = float(img[i] @ c / (img[i].norm() * c.norm()))
            ref = max(float(x @ c / (x.norm() * c.norm())) for x in r)
            assert out["clip_score"][i].item() == pytest.approx(2.5 * max(cos, 0.0), abs=1e-5)
            assert out["ref_cos"][i].item() == pytest.approx(max(ref, 0.0), abs=1e-5)


# --------------------------------------------------------------------------------------------
# CHAIR


def test_chair_counts_on_hand_made_captions():
    vocab = CM.ChairVocab.from_file(REPO / "data_pipelines" / "chair_coco_synonyms.txt")
    captions = ["A man and his puppy next to a hot dog stand.",  # person, dog, hot dog
                "Two women eating pizza at the dining table.",  # person, pizza, dining table
                "A cat on a laptop."]  # cat, laptop
    truths = [{"person", "dog"}, {"person", "pizza", "dining table"}, {"cat", "laptop", "mouse"}]
    assert vocab.objects(captions[0]) == ["person", "dog", "hot dog"]
    out = CM.chair(captions, truths, vocab)
    # mentioned: 3 + 3 + 2 = 8; hallucinated: 'hot dog' only; one caption of three hallucinates
    assert out["objects_mentioned"] == 8 and out["objects_hallucinated"] == 1
    assert out["chair_i"] == pytest.approx(1 / 8) and out["chair_s"] == pytest.approx(1 / 3)


def test_chair_with_the_world_vocabulary():
    from mmw2s.data_pipelines.world import SHAPES

    vocab = CM.ChairVocab.from_synonyms([], SHAPES)  # the world's shapes name themselves
    out = CM.chair(["a small red circle above a large blue star", "two crosses"],
                   [{"circle"}, {"cross"}], vocab)
    assert (out["objects_mentioned"], out["objects_hallucinated"], out["captions_hallucinating"]) == (3, 1, 1)


# --------------------------------------------------------------------------------------------
# Readers and their errors


def test_coco_reader_with_instances_beside_it(tmp_path):
    ann = _coco_folder(tmp_path, objects={11: ["person", "horse"], 12: ["dog"], 13: ["pizza", "fork"],
                                          14: ["bus"], 15: ["cat", "laptop"]})
    bench = CB.load_caption_benchmark(f"coco:{ann}")
    assert bench.task == "captioning" and [it.image_id for it in bench.items] == list(REFS)
    assert bench.items[0].references == REFS[11] and bench.items[0].objects == ["horse", "person"]
    assert sorted(bench.categories) == ["bus", "cat", "dog", "fork", "horse", "laptop", "person", "pizza"]
    examples = list(bench.examples())
    assert examples[2].image.size == (16, 16) and examples[2].texts == REFS[13]


def test_karpathy_split_file_keeps_its_split(tmp_path):
    (tmp_path / "val2014").mkdir()
    images = []
    for n, split in enumerate(["train", "test", "val", "test"]):
        Image.new("RGB", (8, 8)).save(tmp_path / "val2014" / f"im{n}.jpg")
        images.append({"filepath": "val2014", "filename": f"im{n}.jpg", "split": split, "cocoid": 100 + n,
                       "sentences": [{"raw": f"caption {n} a", "tokens": []}, {"raw": f"caption {n} b"}]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    test = CB.load_caption_benchmark(f"coco:{tmp_path / 'dataset_coco.json'}:{tmp_path}")
    assert [it.image_id for it in test.items] == [101, 103]
    assert test.items[0].references == ["caption 1 a", "caption 1 b"]
    val = CB.load_caption_benchmark(f"coco:{tmp_path / 'dataset_coco.json'}?split=val")
    assert [it.key for it in val.items] == ["val2014/im2.jpg"]


def test_bad_caption_files_get_clear_errors(tmp_path):
    bad = tmp_path / "captions_x.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"captions_x.json: not a COCO caption file \(no 'images' list\)"):
        CB.read_coco_captions(bad)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}]}))
    with pytest.raises(ValueError, match="no 'annotations' list"):
        CB.read_coco_captions(bad)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
                               "annotations": [{"id": 0, "image_id": 1, "caption": "a cat"}]}))
    with pytest.raises(ValueError, match="captions_x.json: 1 images have an empty reference list, e.g. image id 2"):
        CB.read_coco_captions(bad)
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}],
                               "annotations": [{"id": 0, "image_id": 1, "caption": "a cat"}]}))
    with pytest.raises(FileNotFoundError, match="not under"):
        CB.read_coco_captions(bad)


def test_wds_caption_folder_with_an_empty_reference_list_is_refused(tmp_path):
    (tmp_path / "test").mkdir()
    with tarfile.open(tmp_path / "test" / "0.tar", "w") as tar:
        for name, data in (("s0.png", _png()), ("s0.txt", b"a red square\na red box"),
                           ("s1.png", _png()), ("s1.txt", b"\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="0.tar: sample s1 has an empty reference list"):
        CB.read_wds_captions(tmp_path)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(out, format="PNG")
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# End to end: the world's export, a tiny captioner, `mmw2s eval`, COCOEvalCap on its files


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mmw2s.data_pipelines.benchmarks import load_world_test
    from mmw2s.data_pipelines.world import WorldConfig, generate_world
    from mmw2s.data_pipelines.world.spec import SplitConfig
    from mmw2s.export import ExportConfig, run as export
    from mmw2s.models.captioners.build import build_captioner
    from mmw2s.models.dual_encoders import build_dual_encoder
    from mmw2s.models.specs import CaptionerSpec, DualEncoderSpec

    root = tmp_path_factory.mktemp("captioning")
    generate_world(WorldConfig(out=str(root / "world"), workers=1, clean=SplitConfig(0), web=SplitConfig(0),
                               test=SplitConfig(12)))
    captions = [it["gold_caption"] for it in load_world_test(root / "world")]
    build_captioner(CaptionerSpec(name="blip-tiny"), captions).save(root / "captioner")
    build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny")).save(root / "clip")
    folders = export(ExportConfig(world=str(root / "world"), out=str(root / "bench"), suites=["captioning"]))
    return root, folders


def _eval_config(root: Path, out: Path, benchmarks: list[str]):
    from mmw2s.config import load_config
    from mmw2s.evaluate.config import EvalConfig

    return load_config(EvalConfig, None, [
        f"out={out}", f"world={root / 'world'}", f"benchmarks={json.dumps(benchmarks)}", "batch_size=4",
        "captioning.chunk_size=5", "captioning.max_new_tokens=8", "captioning.min_new_tokens=2",
        "captioning.spice=false", f"captioning.clip_path={root / 'clip'}",
        f"models=[{{name: cap, kind: captioner, path: {root / 'captioner'}}}]"])


def test_export_writes_both_forms_with_every_gold_caption(exported):
    from mmw2s.data_pipelines.benchmarks import load_world_test
    from mmw2s.data_pipelines.world.scene import paraphrases

    root, folders = exported
    coco = json.loads((Path(folders["captioning_coco"]) / "captions_test.json").read_text())
    items = load_world_test(root / "world")
    assert len(coco["images"]) == len(items) == 12
    assert len(coco["annotations"]) == sum(len(paraphrases(it["scene"])) for it in items)
    instances = json.loads((Path(folders["captioning_coco"]) / "instances_test.json").read_text())
    assert len(instances["annotations"]) == sum(len(it["scene"]["objects"]) for it in items)
    from_wds = CB.read_wds_captions(folders["captioning_wds"])
    from_coco = CB.load_caption_benchmark(f"coco:{folders['captioning_coco']}/captions_test.json")
    assert [it.references for it in from_wds.items] == [it.references for it in from_coco.items]
    assert [it.objects for it in from_wds.items] == [[o["shape"] for o in it["scene"]["objects"]] for it in items]
    first = next(from_wds.images([0]))[1]
    assert first.tobytes() == items[0]["image"].convert("RGB").tobytes()  # exact pixels


@pytest.mark.slow
@needs_java
def test_eval_captioning_end_to_end_agrees_with_coco_eval_cap_and_resumes(exported, tmp_path, monkeypatch):
    from mmw2s.evaluate import run as R
    from mmw2s.evaluate.adapters import CaptionerScorer

    root, folders = exported
    coco_spec = f"coco:{folders['captioning_coco']}/captions_test.json"
    benchmarks = [coco_spec, f"wds-captions:{folders['captioning_wds']}", "world:captioning"]
    R.run(_eval_config(root, tmp_path, benchmarks))
    records = [json.loads(R.result_path(tmp_path, "cap", b).read_text()) for b in benchmarks]
    record = records[0]
    assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(record) and record["task"] == "captioning"
    assert record["details"]["decoding"] == {"method": "beam", "num_beams": 3, "max_new_tokens": 8, "min_new_tokens": 2}
    assert record["details"]["clip_model"] == str(root / "clip") and record["details"]["chunks"] == 3
    for other in records[1:]:  # same images, references and captions in all three forms
        assert other["metrics"] == pytest.approx(record["metrics"], abs=1e-9)
    predictions = Path(record["details"]["predictions_file"])
    assert [set(p) for p in json.loads(predictions.read_text())] == [{"image_id", "caption"}] * 12
    theirs = _reference_scores(Path(folders["captioning_coco"]) / "captions_test.json", predictions, monkeypatch)
    for name in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert record["metrics"][name] == pytest.approx(theirs[name], abs=1e-6), name
    assert record["metrics"]["clip_score"] is not None and 0 <= record["metrics"]["chair_i"] <= 1
    assert "CIDEr" in (tmp_path / "results.md").read_text()

    # A killed run: the result and the last chunk are gone; only that chunk's 2 images are captioned again.
    R.result_path(tmp_path, "cap", coco_spec).unlink()
    chunks = sorted(Path(str(R.result_path(tmp_path, "cap", coco_spec)).removesuffix(".json") + ".chunks").iterdir())
    chunks[-1].unlink()
    seen = []
    real = CaptionerScorer.write_captions
    monkeypatch.setattr(CaptionerScorer, "write_captions",
                        lambda self, images, **d: seen.append(len(images)) or real(self, images, **d))
    R.run(_eval_config(root, tmp_path, [coco_spec]))
    again = json.loads(R.result_path(tmp_path, "cap", coco_spec).read_text())
    assert seen == [2] and again["details"]["chunks_reused"] == 2
    assert again["metrics"] == pytest.approx(record["metrics"], abs=1e-9)


def test_the_report_adds_cider_and_clip_score_with_their_pgr(tmp_path):
    from types import SimpleNamespace

    from mmw2s.experiment import captioning as C

    values = {"weak_captioner": (0.2, 0.3), "captioner_bootstrapped": (0.4, 0.5), "captioner_gold": (0.6, 0.9)}
    summary = {m: {"world:captions": {"exact_match": e, "object_recall": e, "hallucination_rate": 1 - e},
                   "world:captioning": {"CIDEr": c, "clip_score": c / 2, "Bleu_4": 0.1}}
               for m, (e, c) in values.items()}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    scores = C.caption_metrics([SimpleNamespace(stage="eval", cfg=SimpleNamespace(out=str(tmp_path)))])
    keys = C.metric_keys([scores])
    assert keys == ("exact_match", "object_recall", "hallucination_rate", "CIDEr", "clip_score")
    pgr = C.caption_pgr(scores, ["captioner_bootstrapped"], 1e-6, keys)["captioner_bootstrapped"]
    assert pgr["CIDEr"] == pytest.approx((0.5 - 0.3) / (0.9 - 0.3))
    assert pgr["clip_score"] == pytest.approx(pgr["CIDEr"])
    assert pgr["mean"] == pytest.approx(0.5)  # over the three caption-accuracy metrics only
    without = {m: {"world:captions": by["world:captions"]} for m, by in summary.items()}
    (tmp_path / "summary.json").write_text(json.dumps(without))
    assert C.metric_keys([C.caption_metrics([SimpleNamespace(stage="eval", cfg=SimpleNamespace(out=str(tmp_path)))])]) \
        == C.METRICS


def test_a_prompted_vlm_is_scored_by_the_captioning_task(exported, tmp_path, monkeypatch):
    from mmw2s.data_pipelines.benchmarks import load_world_test
    from mmw2s.config import load_config
    from mmw2s.evaluate import run as R
    from mmw2s.evaluate.config import EvalConfig
    from mmw2s.models.vlm_tiny import build_tiny_vlm

    root, _ = exported
    words = {w for it in load_world_test(root / "world") for w in it["gold_caption"].split()}
    vlm = build_tiny_vlm("qwen2_vl", tmp_path / "qwen", words)
    real_which = shutil.which  # no Java: the fast fallback path is enough to see the VLM scored
    monkeypatch.setattr(CM.shutil, "which", lambda name, *a, **k: None if name == "java" else real_which(name))
    cfg = load_config(EvalConfig, None, [
        f"out={tmp_path / 'out'}", f"world={root / 'world'}", "benchmarks=[world:captioning, world:color]",
        "batch_size=6",
        "captioning.method=greedy", "captioning.max_new_tokens=6", "captioning.min_new_tokens=1",
        "captioning.clip=null",
        f"models=[{{name: vlm, kind: captioner, path: {vlm}, captioner: {{prompt: describe this image .}}}}]"])
    summary = R.run(cfg)
    assert "no text likelihood" in summary["vlm"]["world:color"]["skipped"]  # a VLM only writes captions
    record = json.loads(R.result_path(tmp_path / "out", "vlm", "world:captioning").read_text())
    assert record["task"] == "captioning" and record["pretrained"] == str(vlm)
    assert record["details"]["decoding"]["method"] == "greedy" and record["details"]["tokenizer"] == "python-fallback"
    predictions = json.loads(Path(record["details"]["predictions_file"]).read_text())
    assert [p["image_id"] for p in predictions] == list(range(12))
    assert all(isinstance(p["caption"], str) for p in predictions)
    assert record["metrics"]["CIDEr"] is not None and record["metrics"]["clip_score"] is None
    assert "captioning.clip=null" in record["details"]["clip_model"]


def test_repeated_image_ids_are_refused(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    bad = tmp_path / "captions_x.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "a.png"}],
                               "annotations": [{"id": 0, "image_id": 1, "caption": "a cat"}]}))
    with pytest.raises(ValueError, match="image ids repeat"):
        CB.read_coco_captions(bad)


def test_captioning_students_are_scored_by_coco_metrics_with_the_weak_filter_as_clipscore_model(tmp_path):
    from mmw2s.config import load_config
    from mmw2s.experiment.config import ExperimentConfig
    from mmw2s.experiment.plan import plan
    from mmw2s.commands import CONFIG_DIR

    experiment = CONFIG_DIR / "experiments" / "captioner_student.yaml"
    steps = {s.name: s for s in plan(load_config(ExperimentConfig, experiment, [f"out={tmp_path}"]))[0]}
    evaluation = steps["eval"].cfg
    assert "world:captioning" in evaluation.benchmarks
    # no pretrained CLIP offline: the CLIP trained on the clean split scores, not a random ViT-B-32
    assert evaluation.captioning.clip_path == str(Path(steps["weak_filter"].out) / "final")
    # and the eval's parts wait for it: every part scores captions with it
    assert all(steps["weak_filter"].out in part.needs for part in steps["eval"].parts)
    own = plan(load_config(ExperimentConfig, experiment, [f"out={tmp_path}", "eval.captioning.clip_path=/my/clip"]))[0]
    assert next(s for s in own if s.name == "eval").cfg.captioning.clip_path == "/my/clip"
    demo = plan(load_config(ExperimentConfig, CONFIG_DIR / "demo.yaml", [f"out={tmp_path}"]))[0]
    assert next(s for s in demo if s.name == "eval").cfg.captioning.clip_path is None
