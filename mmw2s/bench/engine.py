"""The `engine` row: recaptioning through an inference engine (vLLM's OpenAI-compatible server)
against transformers `generate` in process, both as `mmw2s bootstrap` end to end on the same
shards, with the same tiny random Qwen2-VL decoding greedily.

- ours: the bootstrap with `captioner.kind=endpoint` against a vLLM server this row starts once
  (its start-up, minutes on a CPU, is timed apart and charged to neither side) with
  `engine.concurrency` requests in flight;
- theirs: the same bootstrap with the model as a prompted VLM captioner (`generate`, batches of
  `engine.batch_size`).

The details hold what the row alone cannot say: our client's overhead (the endpoint captioner
against the server alone, i.e. the same chat requests from a bare thread pool of the `openai`
client, no cache, no retries; target 0.9), the images/s per concurrency of `engine.sweep` (where
throughput stops rising), and the seconds of a rerun whose every answer is in the cache. The row
needs vLLM's own venv (`make vllm-venv`); without it the row is skipped, with that reason.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mmw2s.bench.bootstrap import bootstrap_args
from mmw2s.bench.caption_vlm import tiny_vlm
from mmw2s.bench.common import REPO_ROOT, row, run_child, skipped
from mmw2s.bench.config import BenchConfig
from mmw2s.bench.fixtures import web_shards

TARGET = 3.0  # the issue's: at least 3x the images/s of in-process generate on CPU
OVERHEAD_TARGET = 0.9


def bench_engine(cfg: BenchConfig, world: Path, models: Path, device: str, precision: str) -> dict:
    """Start the server, run both bootstraps and the overhead, sweep and cache measurements."""
    e = cfg.engine
    python = Path(e.vllm_python) if Path(e.vllm_python).is_absolute() else REPO_ROOT / e.vllm_python
    if not python.exists():
        return skipped("engine", f"no vLLM venv at {python}: build it with `make vllm-venv`", "images/s", TARGET)
    vlm = tiny_vlm(cfg, world, family="qwen2_vl_vllm")  # a text head_dim vLLM's CPU attention takes
    server, start_s = _start_server(cfg, python, vlm)
    try:
        base_url = server.server.base_url
        fresh = itertools.count(0, e.images)  # each measurement its own images
        size = cfg.world.image_size
        server.caption(fresh_images(4, next(fresh), size), num_captions=1, method="greedy",
                       max_new_tokens=e.max_new_tokens)  # warm-up
        theirs = _bootstrap(cfg, world, models, device, precision, "generate", f"captioner.name={vlm}",
                            f"batch_size={e.batch_size}")
        ours = _bootstrap(cfg, world, models, device, precision, "endpoint", *_endpoint_args(cfg, vlm, base_url),
                          fresh_cache=True)  # ours asks the server for every caption
        cached = _bootstrap(cfg, world, models, device, precision, "endpoint_cached",
                            *_endpoint_args(cfg, vlm, base_url))  # the same requests: all answered from the cache
        sweep = {c: _captioner_rate(cfg, vlm, base_url, c, fresh_images(e.images, next(fresh), size))
                 for c in e.sweep}
        # interleaved pairs, best of each: the machine's load changes between the two halves
        pairs = [(_captioner_rate(cfg, vlm, base_url, e.concurrency, fresh_images(e.images, next(fresh), size)),
                  _server_alone_rate(cfg, vlm, base_url, fresh_images(e.images, next(fresh), size)))
                 for _ in range(e.repeats)]
    finally:
        server.close()
    mine, alone = max(p[0] for p in pairs), max(p[1] for p in pairs)
    return row("engine", ours["images_per_s"], theirs["images_per_s"], "images/s", TARGET,
               images=ours["images_this_run"], server_start_s=round(start_s, 1), concurrency=e.concurrency,
               max_new_tokens=e.max_new_tokens, endpoint_requests=ours.get("endpoint", {}).get("requests"),
               overhead_ratio=round(mine / alone, 3), overhead_target=OVERHEAD_TARGET,
               captioner_images_per_s=round(mine, 2), server_alone_images_per_s=round(alone, 2),
               overhead_pairs=[(round(a, 2), round(b, 2)) for a, b in pairs],
               images_per_s_by_concurrency={str(c): round(v, 2) for c, v in sweep.items()},
               cache_hit_rerun_s=cached["seconds"], cache_hit_rerun_requests=cached.get("endpoint", {}).get("requests"),
               theirs_is="the same bootstrap with the same model under transformers generate in process")


def _start_server(cfg: BenchConfig, python: Path, vlm: Path):
    """A managed vLLM server for `vlm` on 127.0.0.1 (an endpoint captioner owns it); seconds to healthy."""
    from mmw2s.models.captioners.endpoint import EndpointCaptioner
    from mmw2s.models.specs import EndpointSpec

    # vLLM's CPU build otherwise reserves most of the machine's memory for its KV cache
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    spec = EndpointSpec(server="vllm", server_python=str(python), health_timeout_s=1200, timeout_s=600,
                        server_args=["--max-model-len", "512", "--dtype", "float32", "--max-num-seqs", "64"])
    start = time.perf_counter()
    captioner = EndpointCaptioner(spec, str(vlm), cfg.engine.prompt, log_dir=Path(cfg.out) / "runs" / "engine_server")
    return captioner, time.perf_counter() - start


def _endpoint_args(cfg: BenchConfig, vlm: Path, base_url: str) -> list[str]:
    e = cfg.engine
    return ["captioner.kind=endpoint", f"captioner.name={vlm}", "captioner.endpoint.server=external",
            f"captioner.endpoint.base_url={base_url}", f"captioner.endpoint.concurrency={e.concurrency}",
            "captioner.endpoint.timeout_s=600", f"captioner.endpoint.cache_dir={Path(cfg.out) / 'runs' / 'engine_cache'}",
            f"batch_size={max(e.batch_size, e.concurrency)}"]  # a batch's images are the requests in flight


def _bootstrap(cfg: BenchConfig, world: Path, models: Path, device: str, precision: str, name: str, *extra: str,
               fresh_cache: bool = False) -> dict:
    """One bootstrap subprocess over `engine.shards` shards, greedy; its summary."""
    e = cfg.engine
    out = Path(cfg.out) / "runs" / f"engine_{name}"
    shutil.rmtree(out, ignore_errors=True)  # a rerun of a complete run would time nothing
    if fresh_cache:
        shutil.rmtree(Path(cfg.out) / "runs" / "engine_cache", ignore_errors=True)
    args = bootstrap_args(cfg, models, web_shards(world, e.shards), out, device, precision, *extra,
                          f"captioner.prompt={e.prompt}", "decoding.method=greedy", "decoding.num_captions=1",
                          f"decoding.max_new_tokens={e.max_new_tokens}", "decoding.min_new_tokens=0",
                          "thresholds.mode=absolute", "thresholds.web=0.0", "thresholds.synthetic=0.0")
    run_child(args, cfg.threads, out.parent / f"engine_{name}.log", timeout=3600)
    return json.loads((out / "summary.json").read_text())


def fresh_images(count: int, offset: int, size: int) -> list:
    """`count` PNG images no other measurement of the row sends (a colour per index from `offset`):
    vLLM caches multimodal inputs by image hash and prefixes by token block, so an image sent twice
    is answered faster the second time. Measured: repeats of the same 64 images made the server's
    pace swing from 20 to 150 images/s, which is what made the earlier overhead pairs unreadable."""
    import io

    from PIL import Image

    from mmw2s.models.captioners.protocol import EncodedImage

    out = []
    for i in range(offset, offset + count):
        buf = io.BytesIO()
        Image.new("RGB", (size, size), (i % 256, (i // 256) % 256, (i * 7 + 90) % 256)).save(buf, "PNG")
        out.append(EncodedImage(f"{i:06d}", "bench", buf.getvalue(), "png", seed=i))
    return out


def _captioner_rate(cfg: BenchConfig, vlm: Path, base_url: str, concurrency: int, images: list) -> float:
    """Images/s of the endpoint captioner alone (no bootstrap, no cache) at `concurrency`."""
    from mmw2s.models.captioners.endpoint import EndpointCaptioner
    from mmw2s.models.specs import EndpointSpec

    captioner = EndpointCaptioner(EndpointSpec(base_url=base_url, concurrency=concurrency, timeout_s=600, cache=False),
                                  str(vlm), cfg.engine.prompt)
    try:
        start = time.perf_counter()
        captioner.caption(images, num_captions=1, method="greedy", max_new_tokens=cfg.engine.max_new_tokens)
        return len(images) / (time.perf_counter() - start)
    finally:
        captioner.close()


def _server_alone_rate(cfg: BenchConfig, vlm: Path, base_url: str, images: list) -> float:
    """Images/s of the same chat requests sent by a bare thread pool of the `openai` client: what
    the server gives with none of our code around it."""
    import openai

    from mmw2s.models.captioners.endpoint import data_url

    e = cfg.engine
    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=600, max_retries=0)

    def ask(image) -> str:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                                 {"type": "text", "text": e.prompt}]}]
        answer = client.chat.completions.create(model=str(vlm), messages=messages, temperature=0.0, n=1,
                                                max_tokens=e.max_new_tokens, seed=image.seed)
        return answer.choices[0].message.content or ""

    start = time.perf_counter()
    with ThreadPoolExecutor(e.concurrency) as pool:
        list(pool.map(ask, images))
    return len(images) / (time.perf_counter() - start)

