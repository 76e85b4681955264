"""Rendering scenes to images: textured, noisy backgrounds and flat, saturated objects.

The background is desaturated and of lower contrast than the objects, so that a small conv net can
learn colour, shape, size and position in about a minute of CPU training, while the texture and the
pixel noise keep the task from being a lookup of exact pixel values.
"""

from __future__ import annotations

import colorsys
import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from mmw2s.data_pipelines.world.scene import Scene
from mmw2s.data_pipelines.world.vocab import COLOR_RGB

# Shapes are drawn at this multiple of their pixel size and box-filtered down: anti-aliased edges
# keep a 12 px star distinguishable from a 12 px diamond.
SUPERSAMPLE = 4
PIXEL_NOISE_STD = 6.0  # grey levels, over the whole image
COLOR_JITTER = 12.0  # grey levels per channel, per object

# Polygons in a unit box, (x, y) with y pointing down.
_TRIANGLE = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
_DIAMOND = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]


def _star(points: int = 5, inner: float = 0.5) -> list[tuple[float, float]]:
    """A top-pointing star stretched to fill the unit box; a fat inner radius keeps small stars solid."""
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    xy = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # (2P, 2)
    xy = (xy - xy.min(axis=0)) / (xy.max(axis=0) - xy.min(axis=0))
    return [(float(x), float(y)) for x, y in xy]


_STAR = _star()


@lru_cache(maxsize=1024)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Anti-aliased coverage of ``shape`` filling a ``side`` x ``side`` box, float32 in [0, 1]."""
    big = side * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    last = big - 1

    def poly(unit: list[tuple[float, float]]) -> None:
        draw.polygon([(x * last, y * last) for x, y in unit], fill=255)

    if shape == "circle":
        draw.ellipse([0, 0, last, last], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, last, last], fill=255)
    elif shape == "triangle":
        poly(_TRIANGLE)
    elif shape == "diamond":
        poly(_DIAMOND)
    elif shape == "star":
        poly(_STAR)
    elif shape == "cross":
        third = big // 3
        draw.rectangle([third, 0, big - third - 1, last], fill=255)
        draw.rectangle([0, third, last, big - third - 1], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    mask = np.asarray(img.resize((side, side), Image.Resampling.BOX), dtype=np.float32) / 255.0
    mask.flags.writeable = False  # shared by the cache
    return mask  # (side, side)


@lru_cache(maxsize=8)
def _unit_grid(size: int) -> np.ndarray:
    grid = np.mgrid[0:size, 0:size].astype(np.float32) / size  # (2, H, W)
    grid.flags.writeable = False
    return grid


def render_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A desaturated base colour with blotches, stripes of random angle, float32 (size, size, 3)."""
    hue, sat, val = rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.7)
    base = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0  # (3,)
    grid = int(rng.integers(3, 9))
    coarse = rng.normal(0.0, 1.0, (grid, grid)).astype(np.float32)
    blotches = np.asarray(
        Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))  # (H, W)
    theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(2.0, 10.0), rng.uniform(0, 2 * np.pi)
    yy, xx = _unit_grid(size)  # (H, W) each
    stripes = np.sin((2 * np.pi * freq) * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    texture = rng.uniform(6.0, 14.0) * blotches + rng.uniform(0.0, 12.0) * stripes  # (H, W)
    tint = rng.uniform(0.8, 1.2, 3).astype(np.float32)  # a slightly coloured texture
    return base + texture[..., None] * tint  # (H, W, 3)


def render_scene(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw ``scene`` (boxes in pixels of a ``size`` x ``size`` image) as an RGB PIL image."""
    canvas = render_background(size, rng)  # (H, W, 3)
    for obj in scene["objects"]:
        x0, y0, x1, y1 = obj["box"]
        alpha = shape_mask(obj["shape"], x1 - x0)[..., None]  # (s, s, 1)
        color = np.asarray(COLOR_RGB[obj["color"]], dtype=np.float32) + rng.uniform(
            -COLOR_JITTER, COLOR_JITTER, 3).astype(np.float32)  # (3,)
        patch = canvas[y0:y1, x0:x1]  # (s, s, 3), a view
        patch[...] = patch * (1.0 - alpha) + color * alpha
    canvas += PIXEL_NOISE_STD * rng.standard_normal(canvas.shape, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """JPEG bytes of ``image``; chroma is kept at full resolution (4:4:4) because the default 4:2:0
    halves colour resolution, which smears the colour of 12 px objects into the background."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()
