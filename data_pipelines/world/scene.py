"""Scenes of 1-3 objects and their canonical gold captions.

A scene is a plain JSON-able dict, exactly what the shards store under ``truth.scene``::

    {"objects": [{"shape", "color", "size", "position", "box": [x0, y0, x1, y1]}, ...],
     "relations": [{"subject": i, "relation": "left of", "object": j}, ...]}

Captions go through a *plan* (which objects, attributes and relations to mention) so that the noise
model can edit a plan instead of a string; the gold caption is the plan of the full truth.
"""

from __future__ import annotations

import itertools

from typing import Any

import numpy as np

from mmw2s.data_pipelines.world.vocab import (
    COLORS, POSITION_CELL, RELATION_PHRASE, SHAPES, SIZE_RANGE_64, SIZES, position_word,
)

Scene = dict[str, Any]
Plan = dict[str, Any]

# Largest allowed intersection of two boxes, as a fraction of the smaller box: objects may touch a
# little (it is a cluttered web photo) but never hide each other's shape.
MAX_OVERLAP = 0.1
# Centres stay this fraction of a cell away from its borders when the box size allows.
CELL_MARGIN = 0.15
_PLACEMENT_TRIES = 20
_MAX_ATTEMPTS = 1000


def sample_scene(rng: np.random.Generator, image_size: int = 64, max_objects: int = 3) -> Scene:
    """Draw a scene of 1..max_objects objects in distinct cells of a 3x3 grid, boxes in pixels."""
    n = int(rng.integers(1, max_objects + 1))
    for _ in range(_MAX_ATTEMPTS):
        cells = [int(c) for c in rng.choice(9, size=n, replace=False)]
        sizes = [SIZES[int(rng.integers(len(SIZES)))] for _ in range(n)]
        sides = [_side(rng, size, image_size) for size in sizes]
        boxes = _place(rng, cells, sides, image_size)
        if boxes is not None:
            break
    else:  # pragma: no cover - each attempt succeeds with high probability at any image size
        raise RuntimeError(f"could not place {n} objects without overlap in {image_size} px")
    objects = [
        {
            "shape": SHAPES[int(rng.integers(len(SHAPES)))],
            "color": COLORS[int(rng.integers(len(COLORS)))],
            "size": size,
            "position": position_word(*divmod(cell, 3)),
            "box": box,
        }
        for cell, size, box in zip(cells, sizes, boxes)
    ]
    return {"objects": objects, "relations": scene_relations(objects)}


def _side(rng: np.random.Generator, size: str, image_size: int) -> int:
    """Side of an object's square box: the 64 px range of its size class, scaled to the image."""
    lo, hi = (round(v * image_size / 64) for v in SIZE_RANGE_64[size])
    return int(rng.integers(lo, hi + 1))


def _center_range(cell: int, side: int, n: int) -> tuple[int, int]:
    """Integer centres that lie in grid cell ``cell`` (one axis) and keep the box inside the image.

    Centres keep a margin from the cell borders where the box allows it, so that position words and
    relations are never decided by a pixel or two.
    """
    first, last = -(-cell * n // 3), -(-(cell + 1) * n // 3) - 1
    fits_lo, fits_hi = side // 2, n - side + side // 2
    margin = round(CELL_MARGIN * n / 3)
    lo, hi = max(first + margin, fits_lo), min(last - margin, fits_hi)
    if lo > hi:  # a large box near the image border: only the cell itself is guaranteed
        lo, hi = max(first, fits_lo), min(last, fits_hi)
    return lo, hi


def _place(rng: np.random.Generator, cells: list[int], sides: list[int], n: int) -> list[list[int]] | None:
    """Boxes centred in their cells with little overlap, or None when random tries fail."""
    ranges = [(_center_range(cell % 3, side, n), _center_range(cell // 3, side, n))
              for cell, side in zip(cells, sides)]
    for _ in range(_PLACEMENT_TRIES):
        boxes = []
        for ((xlo, xhi), (ylo, yhi)), side in zip(ranges, sides):
            x0 = int(rng.integers(xlo, xhi + 1)) - side // 2
            y0 = int(rng.integers(ylo, yhi + 1)) - side // 2
            boxes.append([x0, y0, x0 + side, y0 + side])
        if all(_overlap(a, b) <= MAX_OVERLAP for i, a in enumerate(boxes) for b in boxes[i + 1:]):
            return boxes
    return None


def _overlap(a: list[int], b: list[int]) -> float:
    """Intersection area as a fraction of the smaller box."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def scene_relations(objects: list[dict]) -> list[dict]:
    """Every true relation between ordered pairs of objects, read off their grid cells."""
    relations = []
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i != j:
                relations += [{"subject": i, "relation": r, "object": j} for r in _pair_relations(a, b)]
    return relations


def _pair_relations(a: dict, b: dict) -> list[str]:
    (ra, ca), (rb, cb) = POSITION_CELL[a["position"]], POSITION_CELL[b["position"]]
    out = []
    if ca != cb:
        out.append("left of" if ca < cb else "right of")
    if ra != rb:
        out.append("above" if ra < rb else "below")
    return out


def main_relation(a: dict, b: dict) -> str:
    """The one relation the caption states for a pair: horizontal when the columns differ."""
    return _pair_relations(a, b)[0]


def gold_plan(scene: Scene) -> Plan:
    """What the gold caption mentions: all objects with all attributes, and one or two relations.

    One object: its position. Two: the relation of the first to the second. Three: the first and
    the third, each related to the second.
    """
    objs = scene["objects"]
    plan_objects = [
        {"index": i, "size": o["size"], "color": o["color"], "shape": o["shape"]} for i, o in enumerate(objs)
    ]
    relations: list[list] = []
    if len(objs) >= 2:
        relations.append([0, main_relation(objs[0], objs[1]), 1])
    if len(objs) == 3:
        relations.append([2, main_relation(objs[2], objs[1]), 1])
    position = objs[0]["position"] if len(objs) == 1 else None
    return {"objects": plan_objects, "position": position, "relations": relations}


def render_plan(plan: Plan) -> str:
    """Turn a caption plan into text, e.g. ``"a large red circle to the left of a small blue square"``."""
    objects = plan["objects"]
    mentioned: set[int] = set()

    def mention(i: int) -> str:
        words = " ".join(objects[i][k] for k in ("size", "color", "shape") if objects[i].get(k))
        if i in mentioned:
            return f"the {words}"
        mentioned.add(i)
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"

    clauses = [f"{mention(s)} {RELATION_PHRASE[r]} {mention(o)}" for s, r, o in plan["relations"]]
    clauses += [mention(i) for i in range(len(objects)) if i not in mentioned]
    if plan.get("position"):
        clauses[0] += f" in the {plan['position']}"
    return (", and " if plan["relations"] else " and ").join(clauses)


def gold_caption(scene: Scene) -> str:
    """The canonical caption of a scene; deterministic given the scene."""
    return render_plan(gold_plan(scene))


def paraphrases(scene: dict) -> list[str]:
    """Every distinct gold caption of the scene's objects in any order (the world's grammar)."""
    captions: list[str] = []
    for order in itertools.permutations(scene["objects"]):
        caption = gold_caption({"objects": list(order)})
        if caption not in captions:
            captions.append(caption)
    return captions
