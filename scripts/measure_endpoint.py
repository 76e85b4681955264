"""Images/s of the endpoint captioner against a real vLLM server, beside in-process `generate`.

    PYTHONPATH=. python scripts/measure_endpoint.py [--images 64] [--new-tokens 32] [--image-size 56]
        [--exact-tokens] [--no-server-cache] [--vllm-python .venv-vllm/bin/python]

A tiny random Qwen2-VL (models.vlm_tiny "qwen2_vl_vllm") captions PNG images greedily:
1. in process, transformers `generate` through `PromptedCaptioner` (batches of 16 and of 64);
2. through a managed vLLM server (`EndpointCaptioner`, server=vllm), at several concurrencies;
3. the same requests again from the answer cache.
Every measurement sends images no other one sent (vLLM caches multimodal inputs by image hash, so a
repeated image is answered faster). `--image-size` above 56 raises the processor's pixel cap so
the image is not shrunk (224 px: 64 image tokens). `--exact-tokens` makes both sides write exactly
`--new-tokens` tokens (`min_new_tokens`, vLLM's `min_tokens`); `--no-server-cache` starts vLLM
without prefix caching and without its multimodal processor cache. Prints one JSON object. The
server's start-up (model load, warm-up) is timed apart.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from mmw2s.bench.engine import fresh_images
from mmw2s.models.captioners.endpoint import EndpointCaptioner
from mmw2s.models.specs import EndpointSpec
from mmw2s.models.captioners.prompted_vlm import PromptedCaptioner
from mmw2s.models.vlm_tiny import build_tiny_vlm

PROMPT = "Describe this image in one sentence."
WORDS = "a red green blue small large circle square star triangle left right of the and".split()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def tiny_qwen(image_size: int) -> Path:
    """The tiny Qwen2-VL, its processor's pixel cap raised to `image_size` squared when larger."""
    folder = build_tiny_vlm("qwen2_vl_vllm", Path(tempfile.mkdtemp()) / "qwen", WORDS)
    config = folder / "processor_config.json"
    processor = json.loads(config.read_text())
    size = processor["image_processor"]["size"]
    size["longest_edge"] = max(size["longest_edge"], image_size * image_size)
    config.write_text(json.dumps(processor, indent=2))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--exact-tokens", action="store_true")
    parser.add_argument("--no-server-cache", action="store_true")
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    parser.add_argument("--concurrency", default="1,4,16,64")
    args = parser.parse_args()
    # vLLM's CPU build otherwise reserves 92% of the machine's memory (`--gpu-memory-utilization`)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    folder = tiny_qwen(args.image_size)
    offsets = itertools.count(0, args.images)
    fresh = lambda n=args.images: fresh_images(n, next(offsets), args.image_size)  # noqa: E731
    decoding = dict(num_captions=1, method="greedy", max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens if args.exact_tokens else 0)
    report = {"images": args.images, "new_tokens": args.new_tokens, "image_size": args.image_size,
              "exact_tokens": args.exact_tokens, "server_cache": not args.no_server_cache}

    local = PromptedCaptioner.load(folder, prompt=PROMPT)
    for batch in (16, 64):
        pil = [Image.open(io.BytesIO(im.data)) for im in fresh()]
        seconds, _ = timed(lambda: [local.caption(local.input_builder()(pil[i:i + batch]), **decoding)
                                    for i in range(0, len(pil), batch)])
        report[f"generate_b{batch}_images_per_s"] = round(args.images / seconds, 2)

    cache = Path(tempfile.mkdtemp())
    server_args = ["--max-model-len", "512", "--dtype", "float32", "--max-num-seqs", "64"]
    if args.no_server_cache:
        server_args += ["--no-enable-prefix-caching", "--mm-processor-cache-gb", "0"]
    spec = EndpointSpec(server="vllm", server_python=args.vllm_python, health_timeout_s=900, timeout_s=600,
                        server_args=server_args, min_tokens=True)
    start, managed = timed(lambda: EndpointCaptioner(spec, str(folder), PROMPT, log_dir=cache / "logs"))
    report["server_start_s"] = round(start, 1)
    try:
        managed.caption(fresh(4), **decoding)  # warm-up
        for c in [int(x) for x in args.concurrency.split(",")]:
            # the same server, reached as an external one with c requests in flight
            client = EndpointCaptioner(EndpointSpec(base_url=managed.server.base_url, concurrency=c, timeout_s=600,
                                                    cache=False, min_tokens=True), str(folder), PROMPT)
            batch = fresh()
            seconds, _ = timed(lambda: client.caption(batch, **decoding))
            client.close()
            report[f"endpoint_c{c}_images_per_s"] = round(args.images / seconds, 2)
        cached = EndpointCaptioner(EndpointSpec(base_url=managed.server.base_url, concurrency=16, timeout_s=600,
                                                min_tokens=True), str(folder), PROMPT, cache_dir=cache / "answers")
        batch = fresh()
        cached.caption(batch, **decoding)
        seconds, _ = timed(lambda: cached.caption(batch, **decoding))
        cached.close()
        report["cache_hit_rerun_s"] = round(seconds, 3)
    finally:
        managed.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
