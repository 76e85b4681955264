"""Reading objects, positions and relations out of caption text with the world's vocabulary.

Instruction synthesis must work from what the caption says, never from the scene truth, so that a
weak caption gives weak instructions. The parser is lenient on purpose: a weak captioner's
captions may drop words or break the grammar; every shape word is a mention, the size and colour
words right before it are its attributes, ``in the <position>`` attaches to the latest mention,
and a relation phrase between two mentions relates them. A definite mention ("the red circle")
whose attributes agree with an earlier object refers back to it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from mmw2s.data_pipelines.world import COLORS, POSITIONS, RELATIONS, SHAPES, SIZES
from mmw2s.data_pipelines.world.vocab import RELATION_PHRASE

ATTRIBUTES = ("size", "color", "shape")


def _alternatives(words) -> str:
    # Longest first, so "top left" wins over a shorter prefix.
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_MENTION = (rf"(?:(?P<det>a|an|the)\s+)?(?:(?P<size>{_alternatives(SIZES)})\s+)?"
            rf"(?:(?P<color>{_alternatives(COLORS)})\s+)?(?P<shape>{_alternatives(SHAPES)})(?:e?s)?")
_POSITION = rf"in\s+the\s+(?P<position>{_alternatives(POSITIONS)})"
_RELATION = rf"(?P<relation>{_alternatives(RELATION_PHRASE.values())})"
_TOKEN = re.compile(rf"\b(?:{_POSITION}|{_RELATION}|{_MENTION})\b")
_PHRASE_TO_RELATION = {phrase: rel for rel, phrase in RELATION_PHRASE.items()}
assert set(_PHRASE_TO_RELATION.values()) == set(RELATIONS)


@dataclass
class CaptionObject:
    """One object a caption mentions; unknown attributes are None."""

    shape: str
    size: str | None = None
    color: str | None = None
    position: str | None = None

    def words(self, attributes: tuple[str, ...] = ATTRIBUTES) -> str:
        """The known attributes among ``attributes``, in caption order (``"large red circle"``)."""
        return " ".join(getattr(self, a) for a in ATTRIBUTES if a in attributes and getattr(self, a))


@dataclass
class ParsedCaption:
    """What a caption states: its objects and ``(subject, relation, object)`` index triples."""

    objects: list[CaptionObject] = field(default_factory=list)
    relations: list[tuple[int, str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.objects)


def parse_caption(text: str) -> ParsedCaption:
    """Parse ``text`` into objects and relations; an empty result for text about nothing."""
    parsed = ParsedCaption()
    last: int | None = None  # index of the latest mentioned object
    pending: str | None = None  # a relation phrase waiting for its second object
    for m in _TOKEN.finditer(text.lower()):
        if m["position"]:
            if last is not None:
                parsed.objects[last].position = m["position"]
        elif m["relation"]:
            pending = _PHRASE_TO_RELATION[m["relation"]]
        else:
            index = _resolve(parsed.objects, m)
            if pending and last is not None and last != index:
                parsed.relations.append((last, pending, index))
            pending, last = None, index
    return parsed


def _resolve(objects: list[CaptionObject], m: re.Match) -> int:
    """Index of the object a mention names: an earlier one for an agreeing "the ...", else new."""
    mention = CaptionObject(shape=m["shape"], size=m["size"], color=m["color"])
    if m["det"] == "the":
        for i, obj in enumerate(objects):
            if all(getattr(mention, a) in (None, getattr(obj, a)) for a in ATTRIBUTES):
                return i
    objects.append(mention)
    return len(objects) - 1


def unique_ref(objects: list[CaptionObject], i: int, options: tuple[tuple[str, ...], ...]) -> str | None:
    """Shortest description of object ``i`` from ``options`` that surely names only it.

    Every attribute of an option must be known for object ``i``; another object whose attribute
    is unknown might share it, so it counts as a clash (a caption may leave colours out).
    """
    me = objects[i]
    for attrs in options:
        if any(getattr(me, a) is None for a in attrs):
            continue
        clash = any(all(getattr(o, a) in (None, getattr(me, a)) for a in attrs)
                    for j, o in enumerate(objects) if j != i)
        if not clash:
            return me.words(attrs)
    return None


REF_ANY = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))
REF_NO_COLOR = (("shape",), ("size", "shape"))
REF_NO_SHAPE = (("color",), ("size", "color"), ("size",))
