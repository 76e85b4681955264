"""The `mmw2s synthesize` runner: captioned shards in, LLaVA instruction data out.

    out/config.yaml                 resolved config
    out/images/SHARD.tar            the images that got records, bytes unchanged (+ .txt, .json)
    out/images/SHARD_stats.json     per-shard counts, usage and cost; written last = shard complete
    out/instructions/SHARD.jsonl    the shard's LLaVA records (renamed into place before the stats)
    out/llava.json                  every complete shard's records, merged (LLaVA's layout)
    out/summary.json                totals, this run's requests, cache hits and cost
    out/cache/                      model responses by (messages, model, parameters)

A rerun skips complete shards (checking they were made by the same settings) and redoes partial
ones; a shard with requests that failed after every retry is left incomplete, so a later rerun
redoes it, with the responses it already got served from the cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from mmw2s.data_pipelines.instructions import make_record, parse_turns, read_jsonl, write_jsonl, \
    write_llava_json
from mmw2s.data_pipelines import DecodedSample, Event, OtherSettings, ReadLimits, complete_with, ShardEnd, \
    ShardWriter, Skip, is_complete, shard_events, shard_name, verified_stats, write_json_atomic
from mmw2s.errors import StageError
from mmw2s.run_folder import hold_run_folder, input_urls, make_run_folder
from mmw2s.synthesize.backends import ApiBackend, LocalBackend, Request, Response, TemplateBackend, \
    request_seed, usage_cost
from mmw2s.models.openai_client import ResponseCache
from mmw2s.synthesize.captions import parse_caption
from mmw2s.synthesize.config import SynthesizeConfig
from mmw2s.synthesize.prompts import build_context, load_llm_prompts, load_wording

log = logging.getLogger(__name__)

LLAVA_FILE, SUMMARY_FILE = "llava.json", "summary.json"
MALFORMED_EXAMPLES = 5  # rejected responses kept per shard and in the summary, to say what was wrong
STATUSES = ("ok", "empty", "rejected", "failed", "malformed")
COUNT_KEYS = ("samples", "images", "records", "requests", "retries", "cache_hits", "malformed",
              "prompt_tokens", "completion_tokens", "cached_prompt_tokens", "cached_completion_tokens")


def run(cfg: SynthesizeConfig) -> dict:
    """Synthesize instruction data for every shard of ``cfg.input``; returns the summary."""
    from mmw2s.config import save_config

    out = Path(cfg.out)
    urls = input_urls(cfg.input)
    make_run_folder(out)
    backend = build_backend(cfg)
    fingerprint = run_fingerprint(cfg, backend)
    with hold_run_folder(out, fingerprint):  # one job per out= (see `mmw2s.run_folder`)
        save_config(cfg, out)
        return synthesize_locked(cfg, backend, urls, fingerprint)


def synthesize_locked(cfg: SynthesizeConfig, backend: Any, urls: list[str], fingerprint: str) -> dict:
    """The run once this job holds the run folder."""
    out = Path(cfg.out)
    todo = [u for u in urls if not shard_done(out, u, fingerprint)]
    log.info("%d input shards, %d complete, %d to do (backend %s)", len(urls), len(urls) - len(todo),
             len(todo), backend.name)
    from mmw2s.console import progress_bar as tqdm  # drawn by tqdm, as lines, or by `mmw2s run`

    start, this_run = time.perf_counter(), Counter()
    bar = tqdm(unit="img", desc="synthesize", disable=not cfg.progress)
    try:
        for url in todo:
            this_run.update(synthesize_shard(url, cfg, backend, fingerprint, bar))
    finally:
        bar.close()
        backend.close()
    summary = summarize(out, urls, cfg, this_run, time.perf_counter() - start)
    write_json_atomic(out / SUMMARY_FILE, summary)
    if summary["incomplete_shards"]:
        log.error("shards left incomplete (requests failed after every retry; rerun to redo them): %s",
                  summary["incomplete_shards"])
    return summary


def build_backend(cfg: SynthesizeConfig) -> Any:
    """The configured backend, with its prompts loaded and the response cache attached."""
    if cfg.backend == "template":
        wording, prompt_id = load_wording(cfg.prompts.template)
        return TemplateBackend(wording, prompt_id)
    prompts = load_llm_prompts(cfg.prompts.llm_dir, cfg.kinds)
    cache = ResponseCache(cfg.cache_dir or Path(cfg.out) / "cache") if cfg.cache else None
    if cfg.backend == "api":
        return ApiBackend(cfg.api, prompts, cache)
    return LocalBackend(cfg.local, prompts, cache)


def run_fingerprint(cfg: SynthesizeConfig, backend: Any) -> str:
    """Hash of every setting that decides an output shard (not paths, concurrency or progress)."""
    keys = {"backend": backend.fingerprint(), "kinds": cfg.kinds, "kind_policy": cfg.kind_policy,
            "captions": cfg.captions, "boxes_field": cfg.boxes_field, "seed": cfg.seed}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def images_path(out: Path, url: str) -> Path:
    """``OUT/images/SHARD.tar``: the image shard of input ``url``."""
    return out / "images" / f"{shard_name(url)}.tar"


def records_path(out: Path, url: str) -> Path:
    """``OUT/instructions/SHARD.jsonl``: the records of input ``url``."""
    return out / "instructions" / f"{shard_name(url)}.jsonl"


def shard_done(out: Path, url: str, fingerprint: str) -> bool:
    """Whether ``url`` is complete here, after checking the same settings made it."""
    try:
        return complete_with(images_path(out, url), fingerprint) and records_path(out, url).exists()
    except OtherSettings as exn:
        raise StageError(f"{exn}; use another out= or delete {out / 'images'} and "
                         f"{out / 'instructions'}") from None


# --------------------------------------------------------------------------------------------
# Inputs of one sample


def sample_captions(sample: DecodedSample, mode: str) -> list[str]:
    """The captions to synthesize from: the training caption first (never the truth block).

    A bootstrapped shard's caption is ``mmw2s.chosen``; with ``mode="kept"`` every other caption
    its filter kept follows. A raw shard has its one caption. Empty: nothing to use.
    """
    block = sample["json"].get("mmw2s")
    if not isinstance(block, dict):
        return [sample["caption"]] if sample.get("caption") else []
    if block.get("nothing_kept") or not block.get("chosen"):
        return []
    captions = [block["chosen"]]
    if mode == "kept":
        kept = ([block["web_caption"]] if block.get("web_kept") else [])
        kept += [s["caption"] for s in block.get("synthetic", []) if s.get("kept")]
        captions += [c for c in kept if c and c not in captions]
    return captions


def sample_boxes(sample: DecodedSample, dotted: str | None) -> list[dict] | None:
    """Boxes at the JSON path ``dotted`` as ``[{label, box}]`` with coordinates in [0, 1]."""
    if not dotted:
        return None
    node: Any = sample["json"]
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, list):
        return None
    w = sample["json"].get("width") or (sample["image"].width if sample.get("image") else 1)
    h = sample["json"].get("height") or (sample["image"].height if sample.get("image") else 1)
    boxes = []
    for item in node:
        box = item.get("box", item.get("bbox")) if isinstance(item, dict) else None
        if isinstance(box, list) and len(box) == 4 and item.get("label"):
            boxes.append({"label": str(item["label"]), "box": [box[0] / w, box[1] / h, box[2] / w, box[3] / h]})
    return boxes or None


def sample_requests(sample: DecodedSample, index: int, cfg: SynthesizeConfig, backend: Any) -> list[Request]:
    """The requests of one sample: one per kind it gets (``kind_policy``)."""
    captions = sample_captions(sample, cfg.captions)
    if not captions:
        return []
    kinds = cfg.kinds if cfg.kind_policy == "all" else [cfg.kinds[index % len(cfg.kinds)]]
    boxes = sample_boxes(sample, cfg.boxes_field)
    requests = []
    for kind in kinds:
        rid = f"{sample['__key__']}-{kind}"
        request = Request(id=rid, kind=kind, boxes=boxes, seed=request_seed(cfg.seed, rid))
        if backend.name == "template":
            request.parsed = parse_caption(captions[0])
        else:
            request.messages = backend.prompts[kind].messages(build_context(kind, captions, boxes))
        requests.append(request)
    return requests


# --------------------------------------------------------------------------------------------
# One shard


class ShardTally(Counter):
    """Counts of one shard (a Counter of `COUNT_KEYS`, statuses and skip reasons)."""

    def __init__(self) -> None:
        super().__init__()
        self.damaged: str | None = None  # what went wrong reading the input tar, if anything
        self.unreadable: str | None = None  # the input's source failed: nothing is written
        self.malformed_examples: list[dict] = []  # the first few rejected responses, to show the user

    def note_malformed(self, request_id: str, error: str | None, text: str | None) -> None:
        """Keep the first `MALFORMED_EXAMPLES` rejected responses (text cut to 500 characters)."""
        if len(self.malformed_examples) < MALFORMED_EXAMPLES:
            self.malformed_examples.append({"id": request_id, "error": error,
                                            "text": None if text is None else text[:500]})

    def add_response(self, r: Response) -> None:
        """Count one response: its status, tries, cache use and tokens."""
        self[f"status_{r.status}"] += 1
        if r.cached:
            self["cache_hits"] += 1
            self["cached_prompt_tokens"] += r.prompt_tokens
            self["cached_completion_tokens"] += r.completion_tokens
        else:
            self["requests"] += r.attempts
            self["retries"] += max(r.attempts - 1, 0)
            self["prompt_tokens"] += r.prompt_tokens
            self["completion_tokens"] += r.completion_tokens


def to_records(sample: DecodedSample, requests: list[Request], responses: list[Response], backend: Any,
               tally: ShardTally) -> list[dict]:
    """The records of one sample's responses; malformed ones are counted, sampled and skipped.

    A response whose transport succeeded but whose text is not turns we can read counts as
    ``malformed`` (not ``ok``), so ``responses.malformed`` and ``malformed`` are one number.
    """
    shard = shard_name(sample["__url__"])
    image = f"{shard}/{sample['__key__']}.{sample['image_ext']}"
    prompt_ids = backend.prompt_ids([r.kind for r in requests])
    records = []
    for request, response in zip(requests, responses):
        record, error = None, response.error
        if response.status == "ok":
            provenance = {"backend": backend.name, "model": backend.model, "prompt_id": prompt_ids[request.kind]}
            try:
                record = make_record(request.id, image, parse_turns(response.text), request.kind, provenance)
            except ValueError as exn:  # MalformedResponse, or turns LLaVA's format cannot hold
                response = dataclasses.replace(response, status="malformed")
                error = str(exn)
        tally.add_response(response)
        if response.status == "malformed":
            tally["malformed"] += 1
            tally.note_malformed(request.id, error, response.text)
        if record is not None:
            records.append(record)
            tally[f"records_{request.kind}"] += 1
    return records


def _chunks(events: Iterator[Event], size: int, tally: ShardTally) -> Iterator[list[DecodedSample]]:
    """Lists of up to ``size`` samples; skips are counted, the `ShardEnd` is noted."""
    chunk: list[DecodedSample] = []
    for item in events:
        if isinstance(item, ShardEnd):
            tally.damaged, tally.unreadable = item.damaged, item.unreadable
        elif isinstance(item, Skip):
            tally[f"skipped_{item.reason}"] += 1
        else:
            chunk.append(item)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def synthesize_shard(url: str, cfg: SynthesizeConfig, backend: Any, fingerprint: str, bar: Any = None) -> Counter:
    """Write the images, records and stats of input shard ``url``; returns its counts."""
    out, started = Path(cfg.out), time.perf_counter()
    tally, records, index = ShardTally(), [], 0
    limits = ReadLimits(require_caption=False, io_retries=3)  # a transient read failure is retried
    with ShardWriter(images_path(out, url)) as writer:
        for chunk in _chunks(shard_events(url, limits), cfg.chunk_size, tally):
            planned = [sample_requests(s, index + k, cfg, backend) for k, s in enumerate(chunk)]
            index += len(chunk)
            responses = iter(backend.respond([r for reqs in planned for r in reqs]))
            for sample, requests in zip(chunk, planned):
                tally["samples"] += 1
                if not requests:
                    tally["skipped_no_caption"] += 1
                    continue
                mine = to_records(sample, requests, [next(responses) for _ in requests], backend, tally)
                if mine:
                    writer.write({"__key__": sample["__key__"], sample["image_ext"]: sample["image_bytes"],
                                  "txt": sample_captions(sample, "chosen")[0], "json": sample["json"]})
                    tally["images"] += 1
                    records += mine
            if bar is not None:
                bar.update(len(chunk))
        tally["records"] = len(records)
        if tally.unreadable:
            log.error("shard %s could not be read (%s); left incomplete for a rerun", shard_name(url), tally.unreadable)
            return tally  # leaving the `with` aborts the writer
        if tally["status_failed"]:
            log.error("shard %s: %d requests failed after every retry; left incomplete", shard_name(url),
                      tally["status_failed"])
            return tally  # leaving the `with` aborts the writer: nothing is marked complete
        write_jsonl(records_path(out, url), records)
        writer.close(shard_stats(url, tally, cfg, backend, fingerprint, time.perf_counter() - started))
    return tally


def shard_stats(url: str, tally: ShardTally, cfg: SynthesizeConfig, backend: Any, fingerprint: str,
                seconds: float) -> dict:
    """The ``SHARD_stats.json`` content (img2dataset's ``count``/``successes`` included)."""
    prefixed = lambda p: {k[len(p):]: v for k, v in sorted(tally.items()) if k.startswith(p)}  # noqa: E731
    stats = {"input": url, "count": tally["images"], "successes": tally["images"],
             **{k: tally[k] for k in COUNT_KEYS}, "skipped": prefixed("skipped_"),
             "responses": {s: tally[f"status_{s}"] for s in STATUSES}, "records_by_kind": prefixed("records_"),
             "malformed_examples": tally.malformed_examples,
             "damaged": tally.damaged, "backend": backend.name, "model": backend.model,
             "prompt_ids": backend.prompt_ids(cfg.kinds), "fingerprint": fingerprint, "seconds": round(seconds, 3)}
    stats["estimated_cost_usd"] = round(usage_cost(tally["prompt_tokens"], tally["completion_tokens"], cfg.api), 6) \
        if cfg.backend == "api" else 0.0
    return stats


# --------------------------------------------------------------------------------------------
# Merge and summary


def merge_records(out: Path, urls: list[str]) -> int:
    """Write ``OUT/llava.json`` from the records of every complete shard, in input order."""
    records = []
    for url in urls:
        if is_complete(images_path(out, url)) and records_path(out, url).exists():
            records += list(read_jsonl(records_path(out, url)))
    return write_llava_json(out / LLAVA_FILE, records)


def summarize(out: Path, urls: list[str], cfg: SynthesizeConfig, this_run: Counter, seconds: float) -> dict:
    """Totals over the stats on disk, plus what this run sent and spent; merges ``llava.json``."""
    stats, incomplete = [], []
    for url in urls:
        found = verified_stats(images_path(out, url))
        (stats.append(found) if found is not None else incomplete.append(shard_name(url)))
    totals = {k: sum(s.get(k, 0) for s in stats) for k in COUNT_KEYS}
    responses = {s: sum(st["responses"].get(s, 0) for st in stats) for s in STATUSES}
    by_kind = Counter()
    for s in stats:
        by_kind.update(s["records_by_kind"])
    run_cost = usage_cost(this_run["prompt_tokens"], this_run["completion_tokens"], cfg.api) \
        if cfg.backend == "api" else 0.0
    return {
        "shards": len(urls), "complete_shards": len(stats), "incomplete_shards": incomplete,
        **totals, "responses": responses, "records_by_kind": dict(by_kind),
        "malformed_examples": [e for s in stats for e in s.get("malformed_examples", [])][:MALFORMED_EXAMPLES],
        "merged_records": merge_records(out, urls), "llava_json": str(out / LLAVA_FILE),
        "estimated_cost_usd": round(sum(s.get("estimated_cost_usd", 0.0) for s in stats), 6),
        "this_run": {"requests": this_run["requests"], "retries": this_run["retries"],
                     "cache_hits": this_run["cache_hits"], "failed": this_run["status_failed"],
                     "prompt_tokens": this_run["prompt_tokens"],
                     "completion_tokens": this_run["completion_tokens"],
                     "estimated_cost_usd": round(run_cost, 6), "seconds": round(seconds, 3)},
        "backend": cfg.backend, "config": {"kinds": cfg.kinds, "kind_policy": cfg.kind_policy,
                                           "captions": cfg.captions, "api_model": cfg.api.model
                                           if cfg.backend == "api" else None},
    }

