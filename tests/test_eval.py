"""`mmw2s eval`: metrics against CLIP_benchmark's definitions, the tasks, and end-to-end runs."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mmw2s.data_pipelines.benchmark_types import CLASSIFICATION, RETRIEVAL, SELECTION, Benchmark, Example  # noqa: E402
from mmw2s.config import ConfigError, load_config  # noqa: E402
from mmw2s.evaluate import metrics as M  # noqa: E402
from mmw2s.evaluate.config import EvalConfig, ModelEntry, PairwiseConfig  # noqa: E402
from mmw2s.evaluate.scorers import EmbeddingScorer  # noqa: E402
from mmw2s.evaluate.tasks import TaskSettings, class_prompts, pairwise_class_logits, run_task  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# Metrics on hand-made cases


def test_topk_accuracy_and_mean_per_class_recall():
    # 4 samples, 5 classes. Sample 0: target best; 1: target 2nd; 2: target 5th; 3: target best.
    logits = torch.tensor([[9., 1, 2, 3, 4], [1., 9, 8, 3, 4], [5., 4, 3, 2, 1], [0., 0, 0, 9, 1]])
    target = torch.tensor([0, 2, 4, 3])
    assert M.topk_accuracy(logits, target, (1, 2, 5)) == [0.5, 0.75, 1.0]
    out = M.classification_metrics(logits, target)
    assert out["acc1"] == 0.5 and out["acc5"] == 1.0
    # Classes 0 and 3 are recalled, 2 and 4 are not; class 1 never occurs and is not averaged.
    assert out["mean_per_class_recall"] == pytest.approx(0.5)


def test_mean_per_class_recall_is_balanced_accuracy():
    pred = torch.tensor([0, 0, 0, 0, 1, 1])
    target = torch.tensor([0, 0, 0, 1, 1, 1])
    # Accuracy 5/6, but per class: 3/3 and 2/3 -> (1 + 2/3) / 2.
    assert M.mean_per_class_recall(pred, target) == pytest.approx(5 / 6)
    target = torch.tensor([0, 0, 0, 0, 0, 1])
    pred = torch.zeros(6, dtype=torch.long)
    assert M.mean_per_class_recall(pred, target) == pytest.approx(0.5)


def test_acc5_is_undefined_below_five_classes():
    out = M.classification_metrics(torch.tensor([[0., 1.], [1., 0.]]), torch.tensor([1, 1]))
    assert out == {"acc1": 0.5, "acc5": None, "mean_per_class_recall": 0.5}


def test_retrieval_recall_with_several_captions_per_image():
    # Image 0 has texts t0, t1; image 1 has t2. Scores are text x image.
    scores = torch.tensor([[0.1, 0.9],   # t0 prefers image 1: miss @1, hit @2
                           [0.8, 0.2],   # t1 -> image 0: hit
                           [0.7, 0.3]])  # t2 prefers image 0: miss @1
    texts, positives = M.positives_from_captions([["t0", "t1"], ["t2"]])
    assert texts == ["t0", "t1", "t2"]
    out = M.retrieval_metrics(scores, positives, ks=(1, 2))
    assert out["image_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert out["image_retrieval_recall@2"] == 1.0
    # Image 0 ranks t1 (0.8, positive) first: hit. Image 1 ranks t0 (0.9), t2 (0.3), t1 (0.2):
    # its one caption t2 is second, a miss at 1 and a hit at 2.
    assert out["text_retrieval_recall@1"] == 0.5
    assert out["text_retrieval_recall@2"] == 1.0
    # Image 0 is a hit at 1 through t1 alone: any positive in the top k counts (CLIP_benchmark).
    only_t0 = M.retrieval_metrics(scores, positives & torch.tensor([[True], [False], [True]]), ks=(1,))
    assert only_t0["text_retrieval_recall@1"] == 0.0


def test_a_shared_caption_is_a_positive_of_its_own_image_only_as_in_clip_benchmark():
    captions = [["a red circle"], ["a red circle", "a blue star"]]
    texts, positives = M.positives_from_captions(captions)
    assert positives.tolist() == [[True, False], [False, True], [False, True]]
    # Image 1 ranks the first "a red circle" (image 0's) highest: CLIP_benchmark calls that a miss.
    scores = torch.tensor([[0.2, 0.9], [0.8, 0.1], [0.1, 0.0]])  # (T, I)
    assert M.retrieval_metrics(scores, positives, ks=(1,))["text_retrieval_recall@1"] == 0.0
    _, shared = M.positives_from_captions(captions, shared=True)  # our variant, by name
    assert shared.tolist() == [[True, True], [True, True], [False, True]]
    assert M.retrieval_metrics(scores, shared, ks=(1,))["text_retrieval_recall@1"] == 1.0


def test_selection_accuracy_counts_the_true_caption_first():
    assert M.selection_accuracy([torch.tensor([2., 1.]), torch.tensor([0., 3., 1.])]) == {"acc": 0.5}


def test_caption_scores_against_the_scene():
    scene = {"objects": [{"size": "large", "color": "red", "shape": "circle"},
                         {"size": "small", "color": "blue", "shape": "cross"}]}
    gold = "a large red circle to the left of a small blue cross"
    assert M.caption_scores(gold, scene, gold) == {"exact_match": 1.0, "object_recall": 1.0,
                                                   "hallucination_rate": 0.0}
    out = M.caption_scores("a red circle and a green cross", scene, gold)
    assert out["exact_match"] == 0.0 and out["object_recall"] == 0.5
    assert out["hallucination_rate"] == pytest.approx(1 / 4)  # green of red, circle, green, cross
    assert M.caption_scores("IMG_2031.jpg", scene, gold)["hallucination_rate"] == 0.0


def test_pairwise_class_scores_marginalise_over_prompts():
    scores = torch.log(torch.tensor([[0.2, 0.4, 0.9]]))  # class 0: two prompts, class 1: one
    out = pairwise_class_logits(scores, [["a", "b"], ["c"]])
    assert torch.allclose(out.exp(), torch.tensor([[0.3, 0.9]]))


# --------------------------------------------------------------------------------------------
# A perfect scorer (a test stub for the metric plumbing, not a model) scores 100%

COLOR_NAMES = ["red", "green", "blue"]
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class _OracleStub(EmbeddingScorer):
    """Embeds a solid-colour image and a text mentioning that colour onto the same one-hot axis."""

    name = "oracle_stub"

    def encode_images(self, images):
        return torch.stack([torch.tensor(im.getpixel((0, 0)), dtype=torch.float) / 255 for im in images])

    def encode_texts(self, texts):
        return torch.stack([torch.tensor(RGB[next(c for c in COLOR_NAMES if c in t)], dtype=torch.float) / 255
                            for t in texts])


def _images(labels):
    return [Image.new("RGB", (4, 4), RGB[COLOR_NAMES[i]]) for i in labels]


def test_a_perfect_scorer_gets_100_percent_everywhere():
    labels = [0, 1, 2, 2, 1, 0, 0]
    examples = [Example(im, str(i), label=lab) for i, (im, lab) in enumerate(zip(_images(labels), labels))]
    cls = Benchmark("stub", CLASSIFICATION, lambda: iter(examples), COLOR_NAMES, ["a {c} thing", "{c}"])
    metrics, details = run_task(_OracleStub(), cls, TaskSettings(batch_size=3))
    assert metrics == {"acc1": 1.0, "acc5": None, "mean_per_class_recall": 1.0}
    assert details["class_counts"] == [3, 2, 2]
    ret = [Example(im, texts=[f"a {COLOR_NAMES[i]} square", f"something {COLOR_NAMES[i]}"])
           for im, i in zip(_images([0, 1, 2]), [0, 1, 2])]
    metrics, _ = run_task(_OracleStub(), Benchmark("r", RETRIEVAL, lambda: iter(ret)), TaskSettings(batch_size=2))
    assert set(metrics.values()) == {1.0} and len(metrics) == 6
    sel = [Example(im, texts=[COLOR_NAMES[i], COLOR_NAMES[i - 1]]) for im, i in zip(_images([0, 1, 2]), [0, 1, 2])]
    metrics, _ = run_task(_OracleStub(), Benchmark("s", SELECTION, lambda: iter(sel)), TaskSettings(batch_size=2))
    assert metrics == {"acc": 1.0}


def test_class_prompts_are_capped_evenly_for_pairwise_scorers():
    bench = Benchmark("b", CLASSIFICATION, lambda: iter(()), ["x"], [f"{{c}} {i}" for i in range(12)])
    assert class_prompts(bench, 4) == [["x 0", "x 3", "x 6", "x 9"]]
    assert len(class_prompts(bench)[0]) == 12


# --------------------------------------------------------------------------------------------
# Config


def test_default_config_loads_and_bad_entries_are_refused():
    cfg = load_config(EvalConfig, REPO / "configs" / "eval.yaml")
    assert [m.kind for m in cfg.models] == ["captioner", "dual_encoder", "dual_encoder"]
    with pytest.raises(ConfigError, match="unique"):
        load_config(EvalConfig, REPO / "configs" / "eval.yaml", ["models=[{name: a, kind: captioner}, "
                                                                 "{name: a, kind: captioner}]"])
    with pytest.raises(ConfigError, match="need world"):
        load_config(EvalConfig, None, ["out=x", "benchmarks=[world:color]"])


# --------------------------------------------------------------------------------------------
# End to end: tiny real models, saved and loaded the way a trained one would be


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from mmw2s.data_pipelines.benchmarks import load_world_test
    from mmw2s.data_pipelines.world import WorldConfig, generate_world
    from mmw2s.data_pipelines.world.spec import SplitConfig
    from mmw2s.models.captioners.build import build_captioner
    from mmw2s.models.dual_encoders import build_dual_encoder
    from mmw2s.models.filters.blip_itm import build_itm_filter
    from mmw2s.models.specs import CaptionerSpec, DualEncoderSpec, ItmSpec

    root = tmp_path_factory.mktemp("eval")
    generate_world(WorldConfig(out=str(root / "world"), workers=1, clean=SplitConfig(0), web=SplitConfig(0),
                               test=SplitConfig(60)))
    captions = [it["gold_caption"] for it in load_world_test(root / "world")]
    build_captioner(CaptionerSpec(name="blip-tiny"), captions).save(root / "captioner")
    build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny")).save(root / "dual")
    build_itm_filter(ItmSpec(name="blip-tiny"), captions).save(root / "itm")
    return root


@pytest.mark.slow
def test_eval_writes_clip_benchmark_json_per_model_and_benchmark(tiny_setup, monkeypatch):
    from mmw2s.evaluate import run as R

    root = tiny_setup
    benchmarks = ["world:color", "world:count", "world:relation", "world:retrieval", "world:captions"]
    cfg = load_config(EvalConfig, None, [
        f"out={root / 'out'}", f"world={root / 'world'}", f"benchmarks={json.dumps(benchmarks)}",
        "limit=16", "batch_size=16", "pairwise.retrieval_images=8", "pairwise.caption_max_new_tokens=8",
        f"models=[{{name: cap, kind: captioner, path: {root / 'captioner'}}}, "
        f"{{name: clip, kind: dual_encoder, path: {root / 'dual'}}}, "
        f"{{name: itm, kind: filter, path: {root / 'itm'}}}]"])
    summary = R.run(cfg)
    for model in ("cap", "clip", "itm"):
        for bench in benchmarks:
            record = json.loads(R.result_path(root / "out", model, bench).read_text())
            assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(record)
            assert record["dataset"] == bench and record["model"] == model
    color = json.loads((root / "out" / "clip__world-color.json").read_text())
    assert color["task"] == "zeroshot_classification"
    assert set(color["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert 0.0 <= color["metrics"]["acc1"] <= color["metrics"]["acc5"] <= 1.0
    retrieval = json.loads((root / "out" / "cap__world-retrieval.json").read_text())
    assert set(retrieval["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert retrieval["details"]["images"] == 8 and "first 8 images" in retrieval["details"]["notes"]
    captions = json.loads((root / "out" / "cap__world-captions.json").read_text())
    assert set(captions["metrics"]) == {"exact_match", "object_recall", "hallucination_rate"}
    assert summary["clip"]["world:captions"]["skipped"]  # a dual encoder writes no captions
    assert json.loads((root / "out" / "itm__world-relation.json").read_text())["task"] == "image_caption_selection"
    table = (root / "out" / "results.md").read_text()
    assert "| cap |" in table and "| model | world:captions exact | world:captions obj recall |" in table
    assert len((root / "out" / "results.jsonl").read_text().splitlines()) == 15

    # A rerun reuses every result: no model is even loaded.
    def refuse(*args, **kwargs):
        raise AssertionError("a finished result was recomputed")

    monkeypatch.setattr("mmw2s.evaluate.adapters.build_scorer", refuse)
    assert R.run(cfg) == summary


@pytest.mark.slow
def test_evaluate_model_api_with_a_scorer_and_itc_mode(tiny_setup, tmp_path):
    from mmw2s.evaluate.adapters import build_scorer
    from mmw2s.evaluate.run import evaluate_model
    from mmw2s.evaluate.scorers import EmbeddingScorer

    entry = ModelEntry(name="itc", kind="filter", path=str(tiny_setup / "itm"))
    entry.filter.mode = "itc"
    scorer = build_scorer(entry, "cpu", PairwiseConfig())
    assert isinstance(scorer, EmbeddingScorer)
    emb = scorer.encode_texts(["a red circle", "a blue star"])
    assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    results = evaluate_model(scorer, ["world:shape"], tmp_path, TaskSettings(limit=10), world=str(tiny_setup / "world"))
    assert set(results["world:shape"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert (tmp_path / "itc__world-shape.json").is_file()
    assert not math.isnan(results["world:shape"]["acc1"])


def test_confusion_matrix_rows_are_true_classes():
    from mmw2s.evaluate.metrics import confusion_matrix

    pred, target = torch.tensor([0, 2, 2, 1, 2]), torch.tensor([0, 0, 2, 1, 1])
    assert confusion_matrix(pred, target, 3).tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 1]]
    labels = [0, 1, 2, 2]
    examples = [Example(im, str(i), label=lab) for i, (im, lab) in enumerate(zip(_images(labels), labels))]
    cls = Benchmark("stub", CLASSIFICATION, lambda: iter(examples), COLOR_NAMES, ["{c}"])
    _, details = run_task(_OracleStub(), cls, TaskSettings(batch_size=3))
    assert details["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]


def test_retrieval_images_puts_every_scorer_on_the_same_images():
    ret = [Example(im, texts=[f"a {COLOR_NAMES[i % 3]} square"]) for im, i in zip(_images([0, 1, 2] * 3), range(9))]
    bench = Benchmark("r", RETRIEVAL, lambda: iter(ret))
    _, everything = run_task(_OracleStub(), bench, TaskSettings(batch_size=4))
    _, subset = run_task(_OracleStub(), bench, TaskSettings(batch_size=4, retrieval_images=3))
    assert (everything["images"], subset["images"]) == (9, 3)
    assert subset["texts"] == 3 and "notes" not in subset
