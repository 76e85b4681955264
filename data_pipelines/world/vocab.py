"""Vocabularies of the synthetic web world.

Evaluation builds its zero-shot benchmarks from these constants, so they are the single source of
truth for every attribute name that can appear in a scene or a caption.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")

# Saturated, well-separated colours: the background is kept desaturated, so chroma alone tells an
# object from the texture behind it and a small conv net can read the colour off a few pixels.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 60),
    "cyan": (30, 200, 215),
    "blue": (35, 70, 230),
    "purple": (145, 45, 200),
    "pink": (250, 120, 190),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)

SIZES: tuple[str, ...] = ("small", "large")

# Object-size ranges in pixels at a 64 px image; they scale linearly with the image size.
SIZE_RANGE_64: dict[str, tuple[int, int]] = {"small": (12, 18), "large": (24, 34)}

HORIZONTAL: tuple[str, ...] = ("left", "center", "right")
VERTICAL: tuple[str, ...] = ("top", "middle", "bottom")


def position_word(row: int, col: int) -> str:
    """Name of the 3x3 grid cell (row, col), e.g. ``"top left"``; the middle cell is ``"center"``."""
    if (row, col) == (1, 1):
        return "center"
    return f"{VERTICAL[row]} {HORIZONTAL[col]}"


POSITIONS: tuple[str, ...] = tuple(position_word(r, c) for r in range(3) for c in range(3))
POSITION_CELL: dict[str, tuple[int, int]] = {position_word(r, c): (r, c) for r in range(3) for c in range(3)}

# Relation names as stored in the truth, and the phrase the caption grammar uses for each.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_PHRASE: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

NOISE_TYPES: tuple[str, ...] = (
    "correct",
    "mismatched",
    "random_words",
    "wrong_attribute",
    "incomplete",
    "boilerplate",
    "bias",
)

# Words for the "random_words" noise: a mix of scene words and generic web words, so that a filter
# cannot reject such captions merely for containing no colour or shape.
RANDOM_WORDS: tuple[str, ...] = SHAPES + COLORS + SIZES + (
    "the", "and", "with", "new", "best", "summer", "sale", "photo", "house", "dog", "car",
    "vintage", "beach", "wedding", "kitchen", "design", "art", "logo", "free", "cheap", "top",
    "left", "right", "shoes", "garden", "party", "city", "night", "happy", "modern", "style",
)

# Boilerplate alt-text; "{n}" is replaced by a random number.
BOILERPLATE: tuple[str, ...] = (
    "IMG_{n}.jpg",
    "DSC{n}.JPG",
    "click here to buy",
    "stock photo {n}",
    "free shipping on all orders",
    "image {n} of 12",
    "no description available",
    "product image",
    "untitled-{n}.png",
    "see more at our online store",
)
