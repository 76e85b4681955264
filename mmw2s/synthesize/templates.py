"""The template synthesizer: LLaVA's three kinds of instruction data from caption facts alone.

Given a parsed caption (`mmw2s.synthesize.captions`), a wording file (``configs/prompts/
template.yaml``) and a seeded generator, `template_turns` writes the question/answer turns of one
record. Only what the caption states is used: a wrong or incomplete caption gives wrong or
incomplete instructions, exactly as a language model reading the caption would.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mmw2s.data_pipelines.vqa import plural
from mmw2s.data_pipelines.world import COLORS, SHAPES
from mmw2s.data_pipelines.world.vocab import INVERSE_RELATION, RELATION_PHRASE
from mmw2s.synthesize.captions import (REF_ANY, REF_NO_COLOR, REF_NO_SHAPE, CaptionObject, ParsedCaption,
                                       unique_ref)

Turn = tuple[str, str]
_HORIZONTAL = ("left of", "right of")


def _pick(rng: np.random.Generator, options: list[str] | str) -> str:
    return options if isinstance(options, str) else options[int(rng.integers(len(options)))]


def count_phrase(n: int, noun: str = "object") -> str:
    """``2`` -> ``"2 objects"``; digits, so short answers and long answers agree."""
    return f"{n} {noun if n == 1 else plural(noun)}"


def object_list(objects: list[CaptionObject]) -> str:
    """``"a large red circle, a blue square and a star"``."""
    items = [("an " if o.words()[0] in "aeiou" else "a ") + o.words() for o in objects]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------------------------
# Conversation: single facts, asked short or long


def fact_questions(parsed: ParsedCaption, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Every fact the caption states, as ``{"type", "slots", "answer"}`` question candidates."""
    objs, facts = parsed.objects, []
    for i, o in enumerate(objs):
        if o.color and (ref := unique_ref(objs, i, REF_NO_COLOR)):
            facts.append({"type": "color", "slots": {"ref": ref}, "answer": o.color})
        if (ref := unique_ref(objs, i, REF_NO_SHAPE)):
            facts.append({"type": "shape", "slots": {"ref": ref}, "answer": o.shape})
        if o.position and (ref := unique_ref(objs, i, REF_ANY)):
            facts.append({"type": "position", "slots": {"ref": ref}, "answer": o.position})
    facts.append({"type": "count", "slots": {}, "answer": len(objs), "noun": "object"})
    facts += _count_facts(objs, rng)
    for s, rel, o in parsed.relations:
        facts += _relation_facts(objs, s, rel, o)
    return facts


def _count_facts(objs: list[CaptionObject], rng: np.random.Generator) -> list[dict]:
    """Counts of each mentioned colour and shape, and of one colour and one shape not mentioned
    (a caption that lists the objects says that there are none of those)."""
    facts = []
    colors = sorted({o.color for o in objs if o.color})
    if not all(o.color for o in objs):  # an object of unstated colour might be of any of them
        colors = []
    elif colors:
        absent = [c for c in COLORS if c not in colors]
        colors.append(absent[int(rng.integers(len(absent)))])
    for c in colors:
        n = sum(o.color == c for o in objs)
        facts.append({"type": "count_color", "slots": {"color": c}, "answer": n, "noun": f"{c} object"})
    shapes = sorted({o.shape for o in objs})
    absent = [s for s in SHAPES if s not in shapes]
    shapes.append(absent[int(rng.integers(len(absent)))])
    for s in shapes:
        facts.append({"type": "count_shape", "slots": {"shapes": plural(s)},
                      "answer": sum(o.shape == s for o in objs), "noun": s})
    return facts


def _relation_facts(objs: list[CaptionObject], s: int, rel: str, o: int) -> list[dict]:
    a, b = unique_ref(objs, s, REF_ANY), unique_ref(objs, o, REF_ANY)
    if not a or not b or a == b:
        return []
    inverse = INVERSE_RELATION[rel]
    return [
        {"type": "relation", "slots": {"a": a, "b": b, "relation": RELATION_PHRASE[rel]}, "answer": "yes"},
        {"type": "relation", "slots": {"a": b, "b": a, "relation": RELATION_PHRASE[inverse]}, "answer": "yes"},
        {"type": "relation", "slots": {"a": a, "b": b, "relation": RELATION_PHRASE[inverse],
                                       "true_relation": RELATION_PHRASE[rel]}, "answer": "no"},
    ]


def ask(fact: dict, short: bool, rng: np.random.Generator, w: dict) -> Turn:
    """One fact as a (question, answer) turn, in the short-answer or the sentence form."""
    qkey = fact["type"]
    question = _pick(rng, w["questions"][qkey]).format(**fact["slots"])
    answer = str(fact["answer"])
    if short:
        return f"{question}\n{w['short_answer_suffix']}", answer
    if qkey.startswith("count"):
        n = fact["answer"]
        slots = {"count": count_phrase(n, fact["noun"]), "are": "is" if n == 1 else "are"}
        return question, _pick(rng, w["answers"]["count"]).format(**slots)
    akey = f"relation_{answer}" if qkey == "relation" else qkey
    return question, _pick(rng, w["answers"][akey]).format(answer=answer, **fact["slots"])


def conversation(parsed: ParsedCaption, rng: np.random.Generator, w: dict) -> list[Turn]:
    """A multi-turn conversation about the caption's facts, none asked twice."""
    facts = fact_questions(parsed, rng)
    lo, hi = w["conversation_turns"]
    n = min(len(facts), int(rng.integers(lo, hi + 1)))
    chosen = [facts[int(k)] for k in rng.choice(len(facts), size=n, replace=False)]
    return [ask(f, bool(rng.random() < w["short_answer_fraction"]), rng, w) for f in chosen]


# --------------------------------------------------------------------------------------------
# Detailed description


def detail(parsed: ParsedCaption, rng: np.random.Generator, w: dict,
           boxes: list[dict] | None = None) -> list[Turn]:
    """One turn: a detail prompt and a paragraph of every stated object, position and relation."""
    d, objs = w["detail"], parsed.objects
    sentences = [d["intro"].format(count=count_phrase(len(objs)), objects=object_list(objs))]
    for i, o in enumerate(objs):
        if o.position and (ref := unique_ref(objs, i, REF_ANY)):
            sentences.append(d["position"].format(ref=ref, position=o.position))
    for s, rel, t in parsed.relations:
        a, b = unique_ref(objs, s, REF_ANY), unique_ref(objs, t, REF_ANY)
        if a and b and a != b:
            sentences.append(d["relation"].format(a=a, b=b, relation=RELATION_PHRASE[rel]))
    for box in boxes or []:
        coords = ", ".join(f"{v:.2f}" for v in box["box"])
        sentences.append(d["box"].format(label=box["label"], box=coords))
    return [(_pick(rng, w["detail_prompts"]), " ".join(sentences))]


# --------------------------------------------------------------------------------------------
# Complex reasoning


def reasoning(parsed: ParsedCaption, rng: np.random.Generator, w: dict) -> list[Turn]:
    """One turn: a question that takes a step of inference over the stated facts."""
    options = _reasoning_options(parsed, w["reasoning"])
    return [options[int(rng.integers(len(options)))]] if options else []


def _reasoning_options(parsed: ParsedCaption, r: dict) -> list[Turn]:
    objs, out = parsed.objects, []
    for s, rel, t in parsed.relations:
        a, b = unique_ref(objs, s, REF_ANY), unique_ref(objs, t, REF_ANY)
        if not a or not b or a == b:
            continue
        # The question names the two in caption order; the answer names the one nearer the edge.
        first = a if rel in ("left of", "above") else b
        slots = {"x": a, "y": b, "relation": RELATION_PHRASE[rel]}
        if rel in _HORIZONTAL:
            out.append((r["horizontal_q"].format(**slots), r["horizontal_a"].format(left=first, **slots)))
        else:
            out.append((r["vertical_q"].format(**slots), r["vertical_a"].format(top=first, **slots)))
    if len(objs) >= 2 and all(o.color for o in objs):
        colors = {o.color for o in objs}
        answer = (r["same_color_yes"].format(color=objs[0].color, objects=object_list(objs)) if len(colors) == 1
                  else r["same_color_no"].format(objects=object_list(objs), n_colors=len(colors)))
        out.append((r["same_color_q"], answer))
    for i, o in enumerate(objs):
        ref = unique_ref(objs, i, REF_ANY)
        if ref and len(objs) >= 2:
            rest = objs[:i] + objs[i + 1:]
            out.append((r["remove_q"].format(ref=ref), r["remove_a"].format(
                count_left=count_phrase(len(rest)).capitalize(), objects=object_list(rest), ref=ref)))
        if ref and o.position:
            side = ("left" if o.position.endswith("left") else "right" if o.position.endswith("right")
                    else "center")
            out.append((r["edge_q"].format(ref=ref), r[f"edge_a_{side}"].format(ref=ref, position=o.position)))
    return out


def template_turns(kind: str, parsed: ParsedCaption, rng: np.random.Generator, wording: dict,
                   boxes: list[dict] | None = None) -> list[Turn]:
    """The turns of one record of ``kind``; empty when the caption states nothing to ask about."""
    if not parsed:
        return []
    if kind == "conversation":
        return conversation(parsed, rng, wording)
    if kind == "detail":
        return detail(parsed, rng, wording, boxes)
    if kind == "reasoning":
        return reasoning(parsed, rng, wording)
    raise ValueError(f"unknown instruction kind {kind!r}")
