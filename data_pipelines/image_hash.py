"""Image fingerprints for deduplication and decontamination: SHA-256 of the bytes, and a 64-bit
perceptual hash (pHash) of the pixels, with an index that finds near-identical hashes.

pHash (Zauner 2010, as the `imagehash` package computes it): the image in grey at 32x32 pixels,
its 2-D DCT, the 8x8 lowest frequencies (DC included), one bit per coefficient: above their median.
Resizing, recompression and small colour shifts move few bits; a different image moves about half.
The DCT is a matrix product here (numpy only), so this module needs no scipy.

`HashIndex` answers "is there a stored hash within `t` bits of this one?" without comparing against
every stored hash: the 64 bits are cut into `t + 1` bands, and two hashes at most `t` bits apart agree
exactly on at least one band (pigeonhole), so only hashes that share a band value are compared.
"""
from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIZE = 8  # 8 x 8 = 64 bits
_SIDE = HASH_SIZE * 4  # the grey image the DCT runs on (imagehash's highfreq_factor = 4)


def _dct_matrix(n: int) -> np.ndarray:
    """The (unnormalised) DCT-II matrix: `C @ x` is scipy's `dct(x, type=2)` up to a factor 2."""
    k = np.arange(n)[:, None]
    return np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))


_DCT = _dct_matrix(_SIDE)[:HASH_SIZE]  # only the lowest 8 frequencies are ever used: (8, 32)
_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)  # first bit = most significant


def sha256_hex(data: bytes) -> str:
    """SHA-256 of the image bytes as 64 hex digits (an exact duplicate has the same bytes)."""
    return hashlib.sha256(data).hexdigest()


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of `image`, as an unsigned int."""
    grey = np.asarray(image.convert("L").resize((_SIDE, _SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = _DCT @ grey @ _DCT.T  # (8, 8): the lowest frequencies of the 2-D DCT
    bits = (low > np.median(low)).reshape(-1).astype(np.uint64)
    return int((bits * _WEIGHTS).sum(dtype=np.uint64))


def phash_hex(value: int) -> str:
    """A hash as 16 hex digits (how the index and the parquet metadata store it)."""
    return f"{value:016x}"


def hamming(a: int, b: int) -> int:
    """Bits in which two 64-bit hashes differ."""
    return (a ^ b).bit_count()


@dataclass(frozen=True)
class Match:
    """A stored entry near a query: its position in insertion order and its distance in bits."""

    index: int
    distance: int


class HashIndex:
    """64-bit hashes in insertion order, searchable for the nearest within `max_distance` bits.

    Memory per stored hash: 8 bytes for the hash, plus one list slot (8 bytes) in each of the
    `max_distance + 1` band tables, plus the int object of its position (28-32 bytes).
    """

    def __init__(self, max_distance: int) -> None:
        if not 0 <= max_distance < 64:
            raise ValueError(f"max_distance must be in 0..63 bits, got {max_distance}")
        self.max_distance = max_distance
        bands = max_distance + 1
        self.bands = [(64 * i // bands, 64 * (i + 1) // bands) for i in range(bands)]  # [start, end) bits
        self.tables: list[dict[int, list[int]]] = [{} for _ in self.bands]
        self.hashes = array("Q")

    def __len__(self) -> int:
        return len(self.hashes)

    def _band_values(self, value: int) -> list[int]:
        return [(value >> (64 - end)) & ((1 << (end - start)) - 1) for start, end in self.bands]

    def add(self, value: int) -> int:
        """Store `value`; returns its position."""
        position = len(self.hashes)
        self.hashes.append(value)
        for table, band in zip(self.tables, self._band_values(value)):
            table.setdefault(band, []).append(position)
        return position

    def nearest(self, value: int) -> Match | None:
        """The stored hash closest to `value` within `max_distance` (the earliest of equals), or None."""
        best: Match | None = None
        seen: set[int] = set()
        for table, band in zip(self.tables, self._band_values(value)):
            for position in table.get(band, ()):
                if position in seen:
                    continue
                seen.add(position)
                distance = (self.hashes[position] ^ value).bit_count()
                if distance > self.max_distance:
                    continue
                if best is None or (distance, position) < (best.distance, best.index):
                    best = Match(position, distance)
        return best

