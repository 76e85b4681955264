"""The VQA suite of the synthetic world: short-answer questions built from the test split's truth.

Five question types, each answered by one word, a number, a position phrase or yes / no:

- ``color``:    "What color is the circle?" -> "red"
- ``shape``:    "What shape is the small red object?" -> "star"
- ``count``:    "How many objects are there?" / "How many red objects are there?" /
                "How many circles are there?" -> "0".."3"
- ``position``: "Where is the blue square?" -> "top left" (one of the world's 9 grid cells)
- ``relation``: "Is the red circle to the left of the blue square?" -> "yes" / "no"

Objects are named by the shortest description that is unique in their scene, never by the
attribute asked about. Within each type, answers are balanced (round-robin over answer values) and
each image is asked at most one question per type. The suite is a pure function of the scenes and
the seed. This module is the one place besides the world benchmarks that reads ``truth`` (it is
evaluation); `parse_question` inverts the templates for teachers that answer from captions.
"""
from __future__ import annotations

import json
import os
import re
import string
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mmw2s.data_pipelines.loader import iter_samples
from mmw2s.data_pipelines.sample_decode import ReadLimits
from mmw2s.data_pipelines.tar_reader import shard_name
from mmw2s.data_pipelines.world.vocab import COLORS, RELATION_PHRASE, SHAPES, SIZES

QUESTION_TYPES: tuple[str, ...] = ("color", "shape", "count", "position", "relation")
# LLaVA-1.5's instruction for short-answer VQA; the student sees it at training and evaluation.
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
ATTRIBUTE_ORDER = ("size", "color", "shape")
PHRASE_RELATION = {phrase: rel for rel, phrase in RELATION_PHRASE.items()}
UNKNOWN = "unknown"

# Attribute sets tried in order for the shortest unique description, per question type.
_REF_OPTIONS = {
    "color": (("shape",), ("size", "shape")),
    "shape": (("color",), ("size", "color"), ("size",)),
    "any": (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape")),
}
# "no" stays a word: it is the answer to half the relation questions.
_NUMBER_WORDS = {"zero": "0", "none": "0", "one": "1", "two": "2", "three": "3",
                 "four": "4", "five": "5"}


def plural(shape: str) -> str:
    """``"cross"`` -> ``"crosses"``, ``"circle"`` -> ``"circles"``."""
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


_PLURALS = {plural(s): s for s in SHAPES}


# --------------------------------------------------------------------------------------------
# Questions of one scene


def describe(obj: dict, attributes: Iterable[str]) -> str:
    """The words of ``obj``'s ``attributes`` in caption order, e.g. ``"large red circle"``."""
    keep = set(attributes)
    return " ".join(obj[a] for a in ATTRIBUTE_ORDER if a in keep)


def unique_ref(objects: list[dict], i: int, kind: str = "any") -> str | None:
    """Shortest description of object ``i`` that no other object of the scene shares, or None."""
    for attrs in _REF_OPTIONS[kind]:
        mine = tuple(objects[i][a] for a in attrs)
        if all(tuple(o[a] for a in attrs) != mine for j, o in enumerate(objects) if j != i):
            return describe(objects[i], attrs)
    return None


def scene_questions(scene: dict) -> dict[str, list[tuple[str, str]]]:
    """Every (question, answer) the templates can ask about ``scene``, by type."""
    objects = scene["objects"]
    out: dict[str, list[tuple[str, str]]] = {t: [] for t in QUESTION_TYPES}
    for i, obj in enumerate(objects):
        if (ref := unique_ref(objects, i, "color")) is not None:
            out["color"].append((f"What color is the {ref}?", obj["color"]))
        if (ref := unique_ref(objects, i, "shape")) is not None:
            out["shape"].append((f"What shape is the {ref} object?", obj["shape"]))
        if (ref := unique_ref(objects, i)) is not None:
            out["position"].append((f"Where is the {ref}?", obj["position"]))
    out["count"].append(("How many objects are there?", str(len(objects))))
    out["count"] += [(f"How many {c} objects are there?", str(sum(o["color"] == c for o in objects)))
                     for c in COLORS]
    out["count"] += [(f"How many {plural(s)} are there?", str(sum(o["shape"] == s for o in objects)))
                     for s in SHAPES]
    out["relation"] = _relation_questions(scene)
    return out


def _relation_questions(scene: dict) -> list[tuple[str, str]]:
    objects = scene["objects"]
    true = {(r["subject"], r["relation"], r["object"]) for r in scene["relations"]}
    questions = []
    for i in range(len(objects)):
        for j in range(len(objects)):
            a, b = unique_ref(objects, i), unique_ref(objects, j)
            if i == j or a is None or b is None or a == b:
                continue
            for rel, phrase in RELATION_PHRASE.items():
                answer = "yes" if (i, rel, j) in true else "no"
                questions.append((f"Is the {a} {phrase} the {b}?", answer))
    return questions


# --------------------------------------------------------------------------------------------
# The suite


def build_suite(scenes: Iterable[tuple[str, dict]], per_type: int = 300, seed: int = 0) -> list[dict]:
    """Balanced questions about ``(image_id, scene)`` pairs: up to ``per_type`` of each type.

    Returns records ``{"id", "image", "type", "question", "answer"}`` sorted by image then type;
    ``image`` is the id given (``SHARD/KEY.EXT`` for shard-built suites).
    """
    rng = np.random.default_rng(seed)
    candidates: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for image, scene in scenes:
        for qtype, pairs in scene_questions(scene).items():
            candidates[qtype] += [(image, q, a) for q, a in pairs]
    suite = []
    for qtype in QUESTION_TYPES:
        for image, question, answer in _balanced(candidates[qtype], per_type, rng):
            suite.append({"id": f"{image}#{qtype}", "image": image, "type": qtype,
                          "question": question, "answer": answer})
    order = {t: k for k, t in enumerate(QUESTION_TYPES)}
    return sorted(suite, key=lambda r: (r["image"], order[r["type"]]))


def _balanced(items: list[tuple[str, str, str]], n: int, rng: np.random.Generator) -> list[tuple]:
    """Up to ``n`` items, round-robin over answer values, at most one per image."""
    groups: dict[str, list] = defaultdict(list)
    for k in rng.permutation(len(items)):
        groups[items[k][2]].append(items[k])
    queues = [groups[a] for a in sorted(groups)]
    picked, used = [], set()
    while len(picked) < n and any(queues):
        for queue in queues:
            while queue and queue[0][0] in used:
                queue.pop(0)
            if queue and len(picked) < n:
                item = queue.pop(0)
                used.add(item[0])
                picked.append(item)
    return picked


def suite_from_shards(urls: str | Iterable[str], per_type: int = 300, seed: int = 0) -> list[dict]:
    """The suite of a world split (normally ``WORLD/test``), read from the shards' truth."""
    limits = ReadLimits(decode_images=False, require_caption=False)

    def scenes() -> Iterable[tuple[str, dict]]:
        for sample in iter_samples(urls, limits):
            scene = (sample["json"].get("truth") or {}).get("scene")
            if scene:
                yield f"{shard_name(sample['__url__'])}/{sample['__key__']}.{sample['image_ext']}", scene
    return build_suite(scenes(), per_type, seed)


def write_suite(path: str | os.PathLike, suite: list[dict]) -> None:
    """Save a suite as a JSON list."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(suite, indent=1))


def read_suite(path: str | os.PathLike) -> list[dict]:
    """Load a suite written by `write_suite`."""
    return json.loads(Path(path).read_text())


def vqa_prompt(question: str) -> str:
    """The prompt a model sees: the question and the short-answer instruction."""
    return f"{question}\n{SHORT_ANSWER_PROMPT}"


# --------------------------------------------------------------------------------------------
# Scoring


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, number words to digits, squeeze spaces."""
    text = text.lower().translate(str.maketrans({c: " " for c in string.punctuation}))
    words = [_NUMBER_WORDS.get(w, w) for w in text.split() if w not in ("a", "an", "the")]
    return " ".join(words)


def exact_match(prediction: str, answer: str) -> bool:
    """Whether the normalised prediction equals the normalised answer."""
    return normalize_answer(prediction) == normalize_answer(answer)


def vqa_accuracy(suite: list[dict], predictions: dict[str, str]) -> dict[str, Any]:
    """Exact-match accuracy overall and per type; ``predictions`` maps question id to answer."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for q in suite:
        hit = exact_match(predictions.get(q["id"], ""), q["answer"])
        hits[q["type"]].append(hit)
        hits["all"].append(hit)
    return {"accuracy": float(np.mean(hits["all"])) if hits["all"] else 0.0,
            "per_type": {t: float(np.mean(hits[t])) for t in QUESTION_TYPES if hits[t]},
            "questions": len(hits["all"])}


# --------------------------------------------------------------------------------------------
# Reading a question back (for teachers that answer from text)


def parse_ref(text: str) -> dict[str, str]:
    """``"small red circle"`` -> ``{"size": "small", "color": "red", "shape": "circle"}``."""
    ref = {}
    for word in text.lower().split():
        for attr, vocab in (("size", SIZES), ("color", COLORS), ("shape", SHAPES)):
            if word in vocab:
                ref[attr] = word
    return ref


_RELATIONS = "|".join(map(re.escape, sorted(PHRASE_RELATION, key=len, reverse=True)))
_PATTERNS = [
    ("color", re.compile(r"^what colou?r is the (?P<ref>.+?)\s*\??$")),
    ("shape", re.compile(r"^what shape is the (?P<ref>.+?) object\s*\??$")),
    ("count", re.compile(r"^how many (?P<what>.+?) are there\s*\??$")),
    ("position", re.compile(r"^where is the (?P<ref>.+?)\s*\??$")),
    ("relation", re.compile(rf"^is the (?P<a>.+?) (?P<rel>{_RELATIONS}) the (?P<b>.+?)\s*\??$")),
]


def parse_question(question: str) -> dict[str, Any] | None:
    """The type and slots of a suite question, or None for a question of another form.

    ``{"type": "color", "ref": {...}}``, ``{"type": "count", "ref": {...}}`` (empty ref: all
    objects), ``{"type": "relation", "a": {...}, "relation": "left of", "b": {...}}``.
    """
    text = question.replace("<image>", "").replace(SHORT_ANSWER_PROMPT, "").strip().lower()
    for qtype, pattern in _PATTERNS:
        m = pattern.match(text)
        if not m:
            continue
        if qtype == "relation":
            return {"type": qtype, "a": parse_ref(m["a"]), "relation": PHRASE_RELATION[m["rel"]],
                    "b": parse_ref(m["b"])}
        if qtype == "count":
            words = m["what"].split()
            ref = parse_ref(" ".join(_PLURALS.get(w, w) for w in words))
            return {"type": qtype, "ref": ref}
        return {"type": qtype, "ref": parse_ref(m["ref"])}
    return None
