"""Instruction data in LLaVA's JSON format: build, validate, parse model responses, read, write.

A record is what LLaVA's training code reads, plus two fields of ours::

    {"id": "000000012-conversation",
     "image": "00000/000000012.jpg",          # SHARD/KEY.EXT: member KEY.EXT of images/SHARD.tar
     "conversations": [{"from": "human", "value": "<image>\\nWhat color is the circle?"},
                       {"from": "gpt", "value": "The circle is red."}, ...],
     "kind": "conversation" | "detail" | "reasoning",
     "provenance": {"backend": "api", "model": "gpt-4o-mini", "prompt_id": "conversation:1a2b3c4d"}}

The first human turn carries the ``<image>`` placeholder; turns alternate human / gpt. Pure data
code: no model and no shard I/O here.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

IMAGE_PLACEHOLDER = "<image>"
KINDS: tuple[str, ...] = ("conversation", "detail", "reasoning")
HUMAN, GPT = "human", "gpt"
PROVENANCE_KEYS = ("backend", "model", "prompt_id")

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class MalformedResponse(ValueError):
    """A model's response is not the expected JSON of question/answer turns."""


# --------------------------------------------------------------------------------------------
# Parsing model responses


def parse_turns(text: str) -> list[tuple[str, str]]:
    """Parse a synthesizer's response into ``[(question, answer), ...]``.

    Accepted, optionally inside a Markdown code fence (chat models often add one):

    - our prompt's format: ``{"turns": [{"question": str, "answer": str}, ...]}`` or a bare list of
      such objects;
    - LLaVA's own conversation format, ``[{"from": "human", "value": ...}, {"from": "gpt", ...}, ...]``
      (bare or under ``"conversations"``), since LLMs prompted with LLaVA's examples answer in it.

    Anything else raises `MalformedResponse`, saying what is wrong.
    """
    if not isinstance(text, str) or not text.strip():
        raise MalformedResponse("empty response")
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text.strip()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exn:
        raise MalformedResponse(f"not JSON: {getattr(exn, 'msg', exn)}") from None
    if isinstance(data, dict):
        data = data.get("turns", data.get("conversations"))
    if not isinstance(data, list) or not data:
        raise MalformedResponse("expected a non-empty list under 'turns' (or LLaVA 'conversations')")
    if all(isinstance(t, dict) and "from" in t for t in data):
        return _llava_turns(data)
    return _question_answer_turns(data)


def _question_answer_turns(turns: list) -> list[tuple[str, str]]:
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise MalformedResponse(f"turn {i} is not an object")
        q, a = turn.get("question"), turn.get("answer")
        if not (isinstance(q, str) and q.strip() and isinstance(a, str) and a.strip()):
            raise MalformedResponse(f"turn {i} needs non-empty string 'question' and 'answer'")
        out.append((q.strip(), a.strip()))
    return out


_ROLES = {"human": HUMAN, "user": HUMAN, "gpt": GPT, "assistant": GPT}


def _llava_turns(turns: list[dict]) -> list[tuple[str, str]]:
    """Pairs of (human, gpt) values from LLaVA-format turns; the ``<image>`` placeholder is dropped."""
    if len(turns) % 2:
        raise MalformedResponse(f"LLaVA turns come in human/gpt pairs, got {len(turns)} turns")
    out = []
    for i in range(0, len(turns), 2):
        (q, a) = turns[i], turns[i + 1]
        if _ROLES.get(str(q.get("from")).lower()) != HUMAN or _ROLES.get(str(a.get("from")).lower()) != GPT:
            raise MalformedResponse(f"turns {i} and {i + 1} must be from human, then gpt")
        qv, av = q.get("value"), a.get("value")
        if not (isinstance(qv, str) and isinstance(av, str)):
            raise MalformedResponse(f"turns {i} and {i + 1} need string 'value's")
        qv = qv.replace(IMAGE_PLACEHOLDER, "").strip()
        if not (qv and av.strip()):
            raise MalformedResponse(f"turns {i} and {i + 1} need non-empty 'value's")
        out.append((qv, av.strip()))
    return out


def turns_to_json(turns: Iterable[tuple[str, str]]) -> str:
    """The response format `parse_turns` reads (what the template backend emits)."""
    return json.dumps({"turns": [{"question": q, "answer": a} for q, a in turns]}, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# Records


def make_record(record_id: str, image: str, turns: list[tuple[str, str]], kind: str,
                provenance: dict[str, Any]) -> dict:
    """A LLaVA record from question/answer turns; ``<image>`` opens the first human turn."""
    conversations = []
    for i, (question, answer) in enumerate(turns):
        question = question.replace(IMAGE_PLACEHOLDER, "").strip()
        if i == 0:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
        conversations += [{"from": HUMAN, "value": question}, {"from": GPT, "value": answer}]
    record = {"id": record_id, "image": image, "conversations": conversations, "kind": kind,
              "provenance": dict(provenance)}
    validate_record(record)
    return record


def validate_record(record: Any) -> None:
    """Raise ValueError unless ``record`` is a well-formed LLaVA record (with our extra fields).

    LLaVA's own loader needs ``id``, ``image`` and ``conversations`` of alternating human / gpt
    turns, starting with human, with exactly one ``<image>`` placeholder (in the first turn).
    """
    if not isinstance(record, dict):
        raise ValueError(f"a record is a JSON object, got {type(record).__name__}")
    for key in ("id", "image"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise ValueError(f"record needs a non-empty string '{key}'")
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        raise ValueError(f"record {record['id']}: 'conversations' must hold human/gpt pairs")
    for i, turn in enumerate(turns):
        expected = HUMAN if i % 2 == 0 else GPT
        if not isinstance(turn, dict) or turn.get("from") != expected:
            raise ValueError(f"record {record['id']}: turn {i} must be from '{expected}'")
        if not isinstance(turn.get("value"), str) or not turn["value"].strip():
            raise ValueError(f"record {record['id']}: turn {i} has no text")
    placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)
    if placeholders != 1 or IMAGE_PLACEHOLDER not in turns[0]["value"]:
        raise ValueError(f"record {record['id']}: exactly one {IMAGE_PLACEHOLDER} is allowed, in the "
                         f"first human turn (found {placeholders})")
    if "kind" in record and record["kind"] not in KINDS:
        raise ValueError(f"record {record['id']}: kind must be one of {KINDS}, got {record['kind']!r}")
    prov = record.get("provenance")
    if prov is not None and not (isinstance(prov, dict) and all(k in prov for k in PROVENANCE_KEYS)):
        raise ValueError(f"record {record['id']}: provenance needs {PROVENANCE_KEYS}")


def image_member(image: str) -> tuple[str, str]:
    """``"00003/000030012.jpg"`` -> ``("00003", "000030012.jpg")``: the shard and its tar member."""
    shard, sep, member = image.rpartition("/")
    if not sep or not shard or not member:
        raise ValueError(f"image {image!r} is not of the form SHARD/KEY.EXT")
    return shard, member


def dialogue(record: dict, keep_image: bool = False) -> list[tuple[str, str]]:
    """The ``(question, answer)`` pairs of a record.

    ``keep_image``: the questions as written, ``<image>`` included (what a model trains on: the
    placeholder is where the image goes); otherwise ``<image>`` is removed (the text alone).
    """
    turns = record["conversations"]

    def text(value: str) -> str:
        return value.strip() if keep_image else value.replace(IMAGE_PLACEHOLDER, "").strip()
    return [(text(turns[i]["value"]), turns[i + 1]["value"]) for i in range(0, len(turns) - 1, 2)]


# LLaVA's stage-1 (feature alignment) data: each image-caption pair becomes a one-turn
# conversation whose question asks for a brief description (LLaVA's own list, reworded).
BRIEF_PROMPTS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Give a short and clear explanation of the image.",
    "Summarize the visual content of the image.",
    "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.",
    "Render a clear and concise summary of the photo.",
    "What is in the image? Answer briefly.",
)


def caption_turns(caption: str, choice: int) -> list[tuple[str, str]]:
    """The stage-1 conversation of a caption: brief-description prompt number ``choice`` (mod n)."""
    return [(f"{IMAGE_PLACEHOLDER}\n{BRIEF_PROMPTS[choice % len(BRIEF_PROMPTS)]}", caption)]


# --------------------------------------------------------------------------------------------
# Joining records to the images of their shards


def records_by_member(path: str | os.PathLike) -> dict[str, list[dict]]:
    """``KEY.EXT`` -> the records of a shard's JSONL about that image (in file order)."""
    index: dict[str, list[dict]] = {}
    for record in read_jsonl(path):
        index.setdefault(image_member(record["image"])[1], []).append(record)
    return index


def attach_records(items: Iterable[Any], records_dir: str | os.PathLike) -> Iterator[Any]:
    """A stream stage: give each sample dict of an image shard its ``records`` (LLaVA records).

    ``items`` come from reading ``OUT/images/SHARD.tar`` (sample dicts with ``__url__``,
    ``__key__``, ``image_ext``; other items pass through); records are looked up in
    ``records_dir/SHARD.jsonl``, loaded once per shard. A sample without records is dropped.
    """
    shard, index = None, {}
    for item in items:
        if not (isinstance(item, dict) and "__key__" in item):
            yield item
            continue
        name = os.path.basename(item["__url__"]).removesuffix(".tar")
        if name != shard:
            path = Path(records_dir) / f"{name}.jsonl"
            shard, index = name, (records_by_member(path) if path.exists() else {})
        records = index.get(f"{item['__key__']}.{item['image_ext']}")
        if records:
            yield {**item, "records": records}


# --------------------------------------------------------------------------------------------
# Files


def _atomic_write(path: Path, text: str) -> None:
    # A unique temporary name: two writers of the same file never rename each other's half file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".partial")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write one record per line, atomically; returns the number written."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    _atomic_write(Path(path), "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Records of a JSONL file (blank lines ignored)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_llava_json(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records as one JSON list (LLaVA's ``llava_instruct_*.json`` layout), atomically."""
    records = list(records)
    _atomic_write(Path(path), json.dumps(records, ensure_ascii=False, indent=1))
    return len(records)


def read_llava_json(path: str | os.PathLike, validate: bool = True) -> list[dict]:
    """Read a LLaVA JSON list (or a JSONL file); each record is validated unless told not to."""
    path = Path(path)
    if path.suffix == ".jsonl":
        records = list(read_jsonl(path))
    else:
        records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: LLaVA JSON is a list of records")
    if validate:
        for record in records:
            validate_record(record)
    return records
