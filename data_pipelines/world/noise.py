"""The noise model of web alt-text: a known noise type per sample, applied to the gold caption.

Types that still describe the image (correct, wrong_attribute, incomplete) edit the caption *plan*
of the true scene, so the systematic colour bias can be applied to exactly the objects whose true
colour is the bias source; the others replace the caption altogether.
"""

from __future__ import annotations

import copy

import numpy as np

from mmw2s.data_pipelines.world.scene import Plan, Scene, gold_plan, render_plan, sample_scene
from mmw2s.data_pipelines.world.spec import BiasConfig, NoiseConfig
from mmw2s.data_pipelines.world.vocab import (
    BOILERPLATE, COLORS, INVERSE_RELATION, POSITIONS, RANDOM_WORDS, SHAPES, SIZES,
)

# Noise types whose caption is about this very image (and can therefore carry the colour bias).
DESCRIPTIVE = ("correct", "wrong_attribute", "incomplete")
_ATTRIBUTE_VALUES = {"color": COLORS, "shape": SHAPES, "size": SIZES}


def choose_noise_types(rng: np.random.Generator, n: int, noise: NoiseConfig) -> list[str]:
    """Draw ``n`` independent noise types with the configured fractions (correct = the rest)."""
    fractions = noise.fractions()
    names = list(fractions)
    p = np.clip(np.array([fractions[k] for k in names], dtype=np.float64), 0.0, None)
    return [names[int(i)] for i in rng.choice(len(names), size=n, p=p / p.sum())]


def web_caption(scene: Scene, noise_type: str, others: list[str], bias: BiasConfig,
                rng: np.random.Generator) -> tuple[str, str, bool]:
    """Alt-text for ``scene`` of the drawn ``noise_type``; returns (caption, noise type, biased).

    ``others`` are gold captions of other samples (for ``mismatched``). A correct caption that the
    bias changed is reported with noise type ``bias``.
    """
    biased_draw = rng.random() < bias.rate  # drawn for every sample so streams stay aligned
    if noise_type not in DESCRIPTIVE:
        return _replacement(noise_type, scene, others, rng), noise_type, False
    plan = gold_plan(scene)
    if noise_type == "wrong_attribute":
        plan = wrong_attribute(plan, rng)
    elif noise_type == "incomplete":
        plan = incomplete(plan, rng)
    plan, biased = apply_bias(plan, scene, bias) if biased_draw else (plan, False)
    if biased and noise_type == "correct":
        noise_type = "bias"
    return render_plan(plan), noise_type, biased


def _replacement(noise_type: str, scene: Scene, others: list[str], rng: np.random.Generator) -> str:
    if noise_type == "mismatched":
        return mismatched(render_plan(gold_plan(scene)), others, rng)
    if noise_type == "random_words":
        return " ".join(RANDOM_WORDS[int(i)] for i in rng.integers(len(RANDOM_WORDS), size=int(rng.integers(3, 11))))
    if noise_type == "boilerplate":
        template = BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]
        return template.replace("{n}", str(int(rng.integers(1000, 10000))))
    raise ValueError(f"unknown noise type {noise_type!r}")


def mismatched(gold: str, others: list[str], rng: np.random.Generator) -> str:
    """Another sample's gold caption (one that differs from ``gold``); a fresh scene's if none does."""
    candidates = [c for c in others if c != gold]
    if candidates:
        return candidates[int(rng.integers(len(candidates)))]
    while True:  # a one-sample shard: describe some other random scene instead
        caption = render_plan(gold_plan(sample_scene(rng)))
        if caption != gold:
            return caption


def wrong_attribute(plan: Plan, rng: np.random.Generator) -> Plan:
    """A copy of ``plan`` with one colour, shape, size, position or relation changed to a wrong one."""
    out = copy.deepcopy(plan)
    kind = ("color", "shape", "size", "spatial")[int(rng.integers(4))]
    if kind == "spatial" and out["position"]:
        out["position"] = _other(POSITIONS, out["position"], rng)
    elif kind == "spatial":
        k = int(rng.integers(len(out["relations"])))
        out["relations"][k][1] = INVERSE_RELATION[out["relations"][k][1]]
    else:
        obj = out["objects"][int(rng.integers(len(out["objects"])))]
        obj[kind] = _other(_ATTRIBUTE_VALUES[kind], obj[kind], rng)
    return out


def _other(values: tuple[str, ...], current: str, rng: np.random.Generator) -> str:
    choices = [v for v in values if v != current]
    return choices[int(rng.integers(len(choices)))]


def incomplete(plan: Plan, rng: np.random.Generator) -> Plan:
    """A copy of ``plan`` with some objects dropped (half the multi-object cases) or some of the
    size / colour / position words dropped; at least one thing is always dropped."""
    out = copy.deepcopy(plan)
    n = len(out["objects"])
    if n >= 2 and rng.random() < 0.5:
        keep = sorted(int(k) for k in rng.choice(n, size=int(rng.integers(1, n)), replace=False))
        new_index = {old: new for new, old in enumerate(keep)}
        out["objects"] = [out["objects"][k] for k in keep]
        out["relations"] = [[new_index[s], r, new_index[o]] for s, r, o in out["relations"]
                            if s in new_index and o in new_index]
        return out
    slots = [(i, attr) for i in range(n) for attr in ("size", "color")]
    slots += [(None, "position")] if out["position"] else []
    drop = rng.random(len(slots)) < 0.5
    if not drop.any():
        drop[int(rng.integers(len(slots)))] = True
    for (i, attr), dropped in zip(slots, drop):
        if dropped and i is None:
            out["position"] = None
        elif dropped:
            out["objects"][i][attr] = None
    return out


def apply_bias(plan: Plan, scene: Scene, bias: BiasConfig) -> tuple[Plan, bool]:
    """Call every mentioned object whose true and stated colour is ``bias.source`` by ``bias.target``."""
    out = copy.deepcopy(plan)
    changed = False
    for obj in out["objects"]:
        true_color = scene["objects"][obj["index"]]["color"]
        if true_color == bias.source and obj["color"] == bias.source:
            obj["color"] = bias.target
            changed = True
    return out, changed
