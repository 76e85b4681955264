"""Images/s of the endpoint captioner against a real vLLM server, beside in-process `generate`.

    PYTHONPATH=. python scripts/measure_endpoint.py [--images 64] [--new-tokens 32] [--vllm-python .venv-vllm/bin/python]

A tiny random Qwen2-VL (models.vlm_tiny "qwen2_vl_vllm") captions the same images greedily:
1. in process, transformers `generate` through `PromptedCaptioner` (batches of 16);
2. through a managed vLLM server (`EndpointCaptioner`, server=vllm), at several concurrencies;
3. the same requests again from the answer cache.
Prints one JSON object. The server's start-up (model load, warm-up) is timed apart.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from mmw2s.models.captioner_protocol import EncodedImage
from mmw2s.models.endpoint_captioner import EndpointCaptioner
from mmw2s.models.specs import EndpointSpec
from mmw2s.models.vlm_captioner import PromptedCaptioner
from mmw2s.models.vlm_tiny import build_tiny_vlm

PROMPT = "Describe this image in one sentence."
WORDS = "a red green blue small large circle square star triangle left right of the and".split()


def images(n: int) -> list[EncodedImage]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (56 + 8 * (i % 4), 56), (i * 37 % 256, i * 11 % 256, 90)).save(buf, "PNG")
        out.append(EncodedImage(f"{i:05d}", "bench", buf.getvalue(), "png", seed=i))
    return out


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    parser.add_argument("--concurrency", default="1,4,16,64")
    args = parser.parse_args()
    # vLLM's CPU build otherwise reserves 92% of the machine's memory (`--gpu-memory-utilization`)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    folder = build_tiny_vlm("qwen2_vl_vllm", Path(tempfile.mkdtemp()) / "qwen", WORDS)
    imgs = images(args.images)
    decoding = dict(num_captions=1, method="greedy", max_new_tokens=args.new_tokens, min_new_tokens=0)
    report = {"images": args.images, "new_tokens": args.new_tokens}

    local = PromptedCaptioner.load(folder, prompt=PROMPT)
    pil = [Image.open(io.BytesIO(im.data)) for im in imgs]
    seconds, _ = timed(lambda: [local.caption(local.input_builder()(pil[i:i + 16]), **decoding)
                                for i in range(0, len(pil), 16)])
    report["generate_images_per_s"] = round(args.images / seconds, 2)

    cache = Path(tempfile.mkdtemp())
    spec = EndpointSpec(server="vllm", server_python=args.vllm_python, health_timeout_s=900, timeout_s=600,
                        server_args=["--max-model-len", "512", "--dtype", "float32", "--max-num-seqs", "64"])
    start, managed = timed(lambda: EndpointCaptioner(spec, str(folder), PROMPT, log_dir=cache / "logs"))
    report["server_start_s"] = round(start, 1)
    try:
        managed.caption(imgs[:4], **decoding)  # warm-up
        for c in [int(x) for x in args.concurrency.split(",")]:
            # the same server, reached as an external one with c requests in flight
            client = EndpointCaptioner(EndpointSpec(base_url=managed.server.base_url, concurrency=c, timeout_s=600),
                                       str(folder), PROMPT)
            seconds, _ = timed(lambda: client.caption(imgs, **decoding))
            client.close()
            report[f"endpoint_images_per_s_c{c}"] = round(args.images / seconds, 2)
        cached = EndpointCaptioner(EndpointSpec(base_url=managed.server.base_url, concurrency=16, timeout_s=600),
                                   str(folder), PROMPT, cache_dir=cache / "answers")
        cached.caption(imgs, **decoding)
        seconds, _ = timed(lambda: cached.caption(imgs, **decoding))
        cached.close()
        report["cache_hit_rerun_s"] = round(seconds, 3)
    finally:
        managed.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
