"""The weak teacher on the VQA suite: answers read off a caption, without looking at the image.

A captioner answers a question about an image the only way it can: by what its caption says.
Reading is the same lenient parse the template synthesizer uses, so the teacher's accuracy is the
accuracy of the facts its captions state; what a caption leaves out is answered ``unknown`` (or
``no`` for a yes/no question, the better guess on a balanced suite).
"""
from __future__ import annotations

from mmw2s.data_pipelines.vqa import UNKNOWN, parse_question
from mmw2s.data_pipelines.world.vocab import INVERSE_RELATION
from mmw2s.synthesize.captions import ATTRIBUTES, CaptionObject, ParsedCaption, parse_caption


def _agrees(obj: CaptionObject, ref: dict[str, str], strict: bool) -> bool:
    """Whether ``obj`` fits the description; unknown attributes fit unless ``strict``."""
    return all(getattr(obj, a) == v or (not strict and getattr(obj, a) is None)
               for a, v in ref.items() if a in ATTRIBUTES)


def find_object(parsed: ParsedCaption, ref: dict[str, str]) -> int | None:
    """Index of the object the description names: an exact fit first, else a compatible one."""
    for strict in (True, False):
        hits = [i for i, o in enumerate(parsed.objects) if _agrees(o, ref, strict)]
        if hits:
            return hits[0]
    return None


def _relation_answer(parsed: ParsedCaption, q: dict) -> str:
    a, b = find_object(parsed, q["a"]), find_object(parsed, q["b"])
    if a is None or b is None or a == b:
        return "no"
    rel, inverse = q["relation"], INVERSE_RELATION[q["relation"]]
    stated = set(parsed.relations)
    if (a, rel, b) in stated or (b, inverse, a) in stated:
        return "yes"
    return "no"


def answer_from_caption(question: str, caption: str) -> str:
    """The answer to a VQA suite question that ``caption`` gives (``unknown`` when it is silent)."""
    q = parse_question(question)
    if q is None:
        return UNKNOWN
    parsed = parse_caption(caption)
    if q["type"] == "count":
        return str(sum(_agrees(o, q["ref"], strict=True) for o in parsed.objects))
    if q["type"] == "relation":
        return _relation_answer(parsed, q)
    index = find_object(parsed, q["ref"])
    if index is None:
        return UNKNOWN
    obj = parsed.objects[index]
    value = {"color": obj.color, "shape": obj.shape, "position": obj.position}[q["type"]]
    return value or UNKNOWN
