"""What a LLaVA-style student trains on: conversations, found next to the image shards.

- Stage 1 (feature alignment): each image-caption pair is a one-turn conversation, a brief
  description prompt answered by the caption (`data_pipelines.instructions.caption_turns`); the
  caption is chosen by the usual `text.*` settings.
- Stage 2 (instruction tuning): the LLaVA records `mmw2s synthesize` wrote for the image
  (`instructions/SHARD.jsonl`), one record drawn per visit among `instruction_kinds`.

`data` of a llava run is a `mmw2s synthesize` output folder (its `images/` shards and
`instructions/` records) or any image shards (stage 1, or stage 2 with `instructions=DIR`).
"""
from __future__ import annotations

import os
import random
import zlib
from pathlib import Path
from typing import Optional

from mmw2s.data_pipelines.instructions import BRIEF_PROMPTS, caption_turns, dialogue, read_jsonl, records_by_member
from mmw2s.data_pipelines.vqa import SHORT_ANSWER_PROMPT
from mmw2s.errors import StageError
from mmw2s.train.config import TextConfig, TrainConfig

Turns = list[tuple[str, str]]
IMAGES, INSTRUCTIONS = "images", "instructions"  # the folders `mmw2s synthesize` writes


def llava_sources(cfg: TrainConfig) -> tuple[str, Optional[Path]]:
    """The image shards a llava run reads and the folder of its records (None: none known).

    A `mmw2s synthesize` output folder stands for its `images/` shards and `instructions/`.
    """
    data, records = cfg.data, cfg.instructions
    root = Path(data)
    if root.is_dir() and (root / IMAGES).is_dir():
        data = str(root / IMAGES)
        records = records or str(root / INSTRUCTIONS)
    elif records is None and root.is_dir() and root.name == IMAGES and (root.parent / INSTRUCTIONS).is_dir():
        records = str(root.parent / INSTRUCTIONS)
    return data, Path(records) if records else None


def stage1_turns(caption: str, key: str) -> Turns:
    """The stage-1 conversation of a caption; the prompt wording is a stable function of the key."""
    return caption_turns(caption, zlib.crc32(key.encode()))


class ConversationSelector:
    """Picks `(turns, 1.0)` for a sample from the records about its image, or None when it has none.

    Used by the training stream where a `TextSelector` picks captions. Records are read once per
    shard in each worker. `cfg` is the text config: the stream reads it for its read limits.
    """

    def __init__(self, text: TextConfig, records_dir: Path, kinds: list[str]) -> None:
        self.cfg, self.records_dir, self.kinds = text, Path(records_dir), tuple(kinds)
        self._shard: Optional[str] = None
        self._index: dict[str, list[dict]] = {}

    def __call__(self, sample: dict, rng: random.Random) -> Optional[tuple[Turns, float]]:
        shard = os.path.basename(sample["__url__"]).removesuffix(".tar")
        if shard != self._shard:
            path = self.records_dir / f"{shard}.jsonl"
            self._shard, self._index = shard, records_by_member(path) if path.exists() else {}
        member = f"{sample['__key__']}.{sample['image_ext']}"
        records = [r for r in self._index.get(member, []) if r.get("kind", self.kinds[0]) in self.kinds]
        if not records:
            return None
        # The record's own <image> placeholder stays: it is where the image tokens go.
        return dialogue(rng.choice(records), keep_image=True), 1.0


def record_texts(records_dir: Path, kinds: list[str]) -> list[str]:
    """Every question and answer of the records in `records_dir` (for a from-scratch vocabulary)."""
    texts = []
    for path in sorted(Path(records_dir).glob("*.jsonl")):
        for record in read_jsonl(path):
            if record.get("kind", kinds[0]) in kinds:
                texts += [t for turn in dialogue(record) for t in turn]
    return texts


def vocabulary_texts(captions: list[str], records_dir: Optional[Path], kinds: list[str]) -> list[str]:
    """All texts the student will see in both stages: the stage-1 captions and prompts, the
    stage-2 records when they are known, and the short-answer instruction of VQA prompts."""
    texts = list(captions) + list(BRIEF_PROMPTS) + [SHORT_ANSWER_PROMPT]
    if records_dir is not None and records_dir.is_dir():
        texts += record_texts(records_dir, kinds)
    return texts


def stage2_selector(cfg: TrainConfig, records_dir: Optional[Path]) -> ConversationSelector:
    """The stage-2 selector; fails clearly when no records folder is known."""
    if records_dir is None or not records_dir.is_dir():
        raise StageError(
            f"llava_stage=2 trains on instruction records, and none were found for data={cfg.data}: "
            "pass a `mmw2s synthesize` output folder as data, or instructions=DIR")
    return ConversationSelector(cfg.text, records_dir, cfg.instruction_kinds)
