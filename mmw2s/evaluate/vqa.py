"""VQA in `mmw2s eval`: the `world:vqa` benchmark and the task that asks a model its questions.

The suite is `data_pipelines.vqa`'s (color, shape, count, position, relation; short answers,
balanced per type) over the world's test split. A model answers in words: a LLaVA-style student
generates its answer to `vqa_prompt(question)`; the weak teacher, a captioner, answers by reading
its own greedy caption of the image (`mmw2s.synthesize.answers.answer_from_caption`). Scoring is
exact match after normalisation; ``acc`` overall and ``acc_TYPE`` per question type.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from mmw2s.data_pipelines.benchmark_types import Benchmark, Example
from mmw2s.data_pipelines.vqa import QUESTION_TYPES, suite_from_shards, vqa_accuracy
from mmw2s.evaluate.common import Skipped, batched
from mmw2s.evaluate.scorers import Scorer

VQA = "visual_question_answering"
SHOWN = 8  # (question, answer, prediction) examples kept in the result's details


def vqa_benchmark(world: str | os.PathLike, items: list[dict], per_type: int = 300,
                  seed: int = 0) -> Benchmark:
    """`world:vqa`: one `Example` per question (image, ``texts=[question]``, ``truth`` = the record).

    ``items`` are the test split's samples (`load_world_test`); the suite is read from the same
    shards and its images are matched by key. Examples come grouped by image (the suite's order),
    so a batch asks all of an image's questions together.
    """
    suite = suite_from_shards(str(Path(world) / "test"), per_type=per_type, seed=seed)
    images = {item["key"]: item["image"] for item in items}

    def examples() -> Iterable[Example]:
        for q in suite:
            key = q["image"].rsplit("/", 1)[-1].split(".")[0]
            yield Example(image=images[key], key=q["id"], texts=[q["question"]], truth=q)

    counts = {t: sum(q["type"] == t for q in suite) for t in QUESTION_TYPES}
    return Benchmark("world:vqa", VQA, examples,
                     notes=f"{len(suite)} questions ({per_type} per type at most), exact match",
                     info={"questions": len(suite), "per_type": counts})


def answer(scorer: Scorer, bench: Benchmark, examples: Iterable[Example], settings) -> tuple[dict, dict]:
    """Ask every question; ``acc`` and ``acc_TYPE`` (exact match), examples in the details."""
    if not getattr(scorer, "can_answer", False):
        raise Skipped(f"{type(scorer).__name__} cannot answer questions (VQA needs a model that "
                      "writes text: kind llava or captioner)")
    suite, predictions = [], {}
    for batch in batched(examples, settings.batch_size):
        answers = scorer.answer([ex.image for ex in batch], [ex.texts[0] for ex in batch])
        for ex, prediction in zip(batch, answers):
            suite.append(ex.truth)
            predictions[ex.truth["id"]] = prediction
    if not suite:
        raise ValueError(f"benchmark {bench.name} has no questions")
    scores = vqa_accuracy(suite, predictions)
    metrics = {"acc": scores["accuracy"], **{f"acc_{t}": v for t, v in scores["per_type"].items()}}
    shown = [{"question": q["question"], "answer": q["answer"], "prediction": predictions[q["id"]]}
             for q in suite[:SHOWN]]
    return metrics, {"questions": scores["questions"], "per_type": scores["per_type"], "examples": shown}
