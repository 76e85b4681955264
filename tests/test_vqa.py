"""The VQA suite built from the world's test split: balance, correctness, determinism, scoring,
and the weak teacher that answers from captions."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mmw2s.data_pipelines import ShardWriter
from mmw2s.data_pipelines.vqa import (QUESTION_TYPES, build_suite, exact_match, normalize_answer, parse_question,
                                read_suite, scene_questions, suite_from_shards, vqa_accuracy, write_suite)
from mmw2s.data_pipelines.world import POSITIONS, gold_caption, sample_scene
from mmw2s.synthesize.answers import answer_from_caption


def scenes(n: int, seed: int = 0) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    return [(f"00000/{i:09d}.jpg", sample_scene(rng)) for i in range(n)]


@pytest.fixture(scope="module")
def world_1000():
    return scenes(1000)


@pytest.fixture(scope="module")
def suite(world_1000):
    return build_suite(world_1000, per_type=300, seed=0)


def test_suite_from_1000_images_is_large_balanced_and_one_question_per_type_per_image(suite):
    assert len(suite) == 1500
    by_type = Counter(q["type"] for q in suite)
    assert by_type == {t: 300 for t in QUESTION_TYPES}
    relation = Counter(q["answer"] for q in suite if q["type"] == "relation")
    assert relation == {"yes": 150, "no": 150}
    counts = Counter(q["answer"] for q in suite if q["type"] == "count")
    assert set(counts) == {"0", "1", "2", "3"} and max(counts.values()) - min(counts.values()) <= 1
    assert all(q["answer"] in POSITIONS for q in suite if q["type"] == "position")
    assert len({(q["image"], q["type"]) for q in suite}) == len(suite)
    assert all(len(normalize_answer(q["answer"]).split()) <= 2 for q in suite)  # short exact answers


def test_suite_is_deterministic_and_seeded(world_1000, suite):
    assert build_suite(world_1000, per_type=300, seed=0) == suite
    assert build_suite(world_1000, per_type=300, seed=1) != suite


def test_every_answer_is_true_of_its_scene(world_1000, suite):
    by_image = dict(world_1000)
    for q in suite[:300]:
        asked = dict(scene_questions(by_image[q["image"]])[q["type"]])
        assert asked[q["question"]] == q["answer"]


def test_questions_never_name_an_object_ambiguously():
    two_circles = {"objects": [
        {"shape": "circle", "color": "red", "size": "small", "position": "top left"},
        {"shape": "circle", "color": "blue", "size": "small", "position": "bottom right"}],
        "relations": [{"subject": 0, "relation": "left of", "object": 1}, {"subject": 0, "relation": "above", "object": 1},
                      {"subject": 1, "relation": "right of", "object": 0}, {"subject": 1, "relation": "below", "object": 0}]}
    qs = scene_questions(two_circles)
    assert qs["color"] == []  # "the circle" and "the small circle" name both
    assert ("What shape is the red object?", "circle") in qs["shape"]
    assert ("Is the red circle above the blue circle?", "yes") in qs["relation"]
    assert ("Is the red circle below the blue circle?", "no") in qs["relation"]


def test_exact_match_normalises_case_punctuation_articles_and_number_words():
    assert exact_match("Red.", "red") and exact_match("the top left", "top left") and exact_match("Two", "2")
    assert exact_match("No", "no") and not exact_match("yes", "no") and not exact_match("red circle", "red")


def test_accuracy_per_type(suite):
    perfect = vqa_accuracy(suite, {q["id"]: q["answer"] for q in suite})
    assert perfect["accuracy"] == 1.0 and set(perfect["per_type"]) == set(QUESTION_TYPES)
    yes = vqa_accuracy(suite, {q["id"]: "yes" for q in suite})
    assert yes["per_type"]["relation"] == 0.5 and yes["per_type"]["color"] == 0.0


def test_every_suite_question_parses_back(suite):
    for q in suite:
        parsed = parse_question(q["question"])
        assert parsed is not None and parsed["type"] == q["type"]


def test_weak_teacher_with_gold_captions_knows_what_captions_state(world_1000, suite):
    captions = {image: gold_caption(scene) for image, scene in world_1000}
    gold = vqa_accuracy(suite, {q["id"]: answer_from_caption(q["question"], captions[q["image"]]) for q in suite})
    # Gold captions state every colour, shape and count; positions only of lone objects, and only
    # one or two of the relations, so an image model can beat a caption reader there.
    assert gold["per_type"]["color"] == gold["per_type"]["shape"] == gold["per_type"]["count"] == 1.0
    assert gold["per_type"]["position"] < 0.5 and 0.5 <= gold["per_type"]["relation"] < 1.0
    junk = vqa_accuracy(suite, {q["id"]: answer_from_caption(q["question"], "IMG_2031.jpg") for q in suite})
    assert junk["accuracy"] < gold["accuracy"] - 0.4


def test_suite_from_test_shards_reads_truth_and_names_images_by_shard(tmp_path):
    items = scenes(20, seed=3)
    with ShardWriter(tmp_path / "test" / "00000.tar") as w:
        for image, scene in items:
            key = image.split("/")[1].split(".")[0]
            w.write({"__key__": key, "jpg": b"\xff\xd8not-decoded", "txt": gold_caption(scene),
                     "json": {"key": key, "truth": {"scene": scene}}})
        w.close({"count": 20})
    suite = suite_from_shards(str(tmp_path / "test"), per_type=10, seed=0)
    assert suite == build_suite(items, per_type=10, seed=0)
    write_suite(tmp_path / "vqa.json", suite)
    assert read_suite(tmp_path / "vqa.json") == suite
