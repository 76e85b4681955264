"""The endpoint captioner (`captioner.kind=endpoint`) against a loopback fake OpenAI-compatible server:
order and seeds under concurrency, retries, the answer cache, invalid answers, the API key, managed
servers that die or never come up, and `mmw2s bootstrap` end to end with the tiny CLIP filter."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from data_pipelines.shards import is_complete, iter_samples, ReadLimits
from models.captioner_protocol import EncodedImage, NotTrainableError, require_trainable
from models.endpoint_captioner import EndpointCaptioner, EndpointError, decoding_params
from models.endpoint_server import ServerStartError
from models.specs import CaptionerSpec, EndpointSpec
from tests.fake_openai_server import FakeOpenAI, fake_caption

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPT = "Describe this image in one sentence."
SECRET = "sk-test-7f3a9c1e-never-on-disk"


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + i % 5, 8), (i * 37 % 256, i * 11 % 256, 90)).save(buf, "PNG")
    return buf.getvalue()


def images(n: int) -> list[EncodedImage]:
    return [EncodedImage(f"{i:05d}", "00000", png(i), "png", seed=1000 + i) for i in range(n)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spec(server: FakeOpenAI, **more) -> EndpointSpec:
    settings = dict(base_url=server.url, concurrency=4, timeout_s=0.5, max_attempts=3, backoff_base_s=0.01,
                    backoff_max_s=0.2, jitter=0.0)
    return EndpointSpec(**{**settings, **more})


@pytest.fixture
def server():
    s = FakeOpenAI().start()
    yield s
    s.close()


def nucleus(captioner, imgs, n=2):
    return captioner.caption(imgs, num_captions=n, method="nucleus", top_p=0.9, max_new_tokens=16, min_new_tokens=2)


# --------------------------------------------------------------------------------------------
# The captioner alone


def test_decoding_maps_onto_the_request():
    assert decoding_params("greedy", 1, 0.9, 20, 5, True) == {"temperature": 0.0, "n": 1, "max_tokens": 20,
                                                              "extra_body": {"min_tokens": 5}}
    assert decoding_params("nucleus", 3, 0.8, 30, 5, False) == {"temperature": 1.0, "top_p": 0.8, "n": 3,
                                                                "max_tokens": 30}
    with pytest.raises(ValueError, match="beam search is not part"):
        decoding_params("beam", 2, 0.9, 20, 0, False)


def test_captions_keep_input_order_and_each_image_its_own_seed(server):
    imgs = images(20)
    expected = [[fake_caption(sha(im.data), im.seed, i) for i in range(2)] for im in imgs]
    for concurrency in (1, 16):
        captioner = EndpointCaptioner(spec(server, concurrency=concurrency), "fake-vlm", PROMPT)
        try:
            assert nucleus(captioner, imgs) == expected
            # alone or in another batch, an image gets the same captions (its seed travels with it)
            assert nucleus(captioner, imgs[7:8]) == expected[7:8]
        finally:
            captioner.close()
    assert all(server.seeds[sha(im.data)] == {im.seed} for im in imgs)
    greedy = EndpointCaptioner(spec(server), "fake-vlm", PROMPT)
    try:
        out = greedy.caption(imgs[:2], num_captions=1, method="greedy", max_new_tokens=16)
        assert out == [[fake_caption(sha(im.data), None, 0)] for im in imgs[:2]]
    finally:
        greedy.close()


def test_429_500_and_timeouts_are_retried_and_counted(server):
    server.faults = ["429", "500", "slow"]
    server.slow_s = 1.0  # past the client's 0.5 s timeout
    captioner = EndpointCaptioner(spec(server, concurrency=1, max_attempts=4), "fake-vlm", PROMPT)
    try:
        imgs = images(4)  # the first image meets all three faults, one per try
        assert nucleus(captioner, imgs) == [[fake_caption(sha(im.data), im.seed, i) for i in range(2)] for im in imgs]
        usage = captioner.shard_usage("00000")
        assert usage["retries"] == 3 and usage["requests"] == 4 + 3 and usage["cache_hits"] == 0
        assert usage["prompt_tokens"] == 4 * 12 and usage["completion_tokens"] == 4 * 16
    finally:
        captioner.close()


def test_retries_that_run_out_raise_and_a_wrong_model_is_refused(server):
    server.faults = ["500"] * 3
    captioner = EndpointCaptioner(spec(server), "fake-vlm", PROMPT)
    try:
        with pytest.raises(EndpointError, match="no answer after 3 tries"):
            nucleus(captioner, images(1))
    finally:
        captioner.close()
    with pytest.raises(EndpointError, match="serves \\['fake-vlm'\\], not captioner.name='other'"):
        EndpointCaptioner(spec(server), "other", PROMPT)


def test_refusals_and_malformed_answers_are_invalid_captions_with_their_reason(server):
    imgs = images(4)
    server.per_image = {sha(imgs[0].data): "refuse", sha(imgs[1].data): "content_filter",
                        sha(imgs[2].data): "malformed"}
    captioner = EndpointCaptioner(spec(server), "fake-vlm", PROMPT)
    try:
        rows = nucleus(captioner, imgs)
    finally:
        captioner.close()
    reasons = [[getattr(c, "invalid", None) for c in row] for row in rows]
    assert reasons == [["refused"] * 2, ["refused"] * 2, ["malformed"] * 2, [None, None]]
    assert rows[0][0] == "I can't describe this image."


def test_answers_are_cached_by_image_prompt_decoding_and_seed(server, tmp_path):
    imgs = images(6)
    first = EndpointCaptioner(spec(server), "fake-vlm", PROMPT, cache_dir=tmp_path)
    try:
        reference = nucleus(first, imgs)
    finally:
        first.close()
    before = server.chat_requests
    again = EndpointCaptioner(spec(server), "fake-vlm", PROMPT, cache_dir=tmp_path)
    try:
        assert nucleus(again, imgs) == reference and server.chat_requests == before  # nothing re-requested
        assert again.shard_usage("00000")["cache_hits"] == 6
        reseeded = [EncodedImage(im.key, im.shard, im.data, im.ext, im.seed + 1) for im in imgs[:1]]
        nucleus(again, reseeded)  # another seed is another answer
        assert server.chat_requests == before + 1
    finally:
        again.close()


def test_training_refuses_an_endpoint_captioner(server):
    captioner = EndpointCaptioner(spec(server), "fake-vlm", PROMPT)
    try:
        with pytest.raises(NotTrainableError, match="a endpoint captioner only captions"):
            require_trainable(captioner, "mmw2s train task=captioner")
    finally:
        captioner.close()


# --------------------------------------------------------------------------------------------
# Managed servers (the fake server as a subprocess, through the configurable command)


def managed(tmp_path: Path, *extra: str, **more) -> EndpointSpec:
    command = ["{python}", str(HERE / "fake_openai_server.py"), "--port", "{port}", "--model", "{model}", *extra]
    settings = dict(server="vllm", server_python=sys.executable, server_command=command, health_timeout_s=30,
                    concurrency=4, timeout_s=5, max_attempts=4, backoff_base_s=0.05, jitter=0.0)
    return EndpointSpec(**{**settings, **more})


def test_a_managed_server_that_dies_mid_run_is_restarted(tmp_path):
    marker = tmp_path / "died"
    captioner = EndpointCaptioner(managed(tmp_path, "--die-after", "5", "--die-once-file", str(marker)),
                                  "fake-vlm", PROMPT, log_dir=tmp_path / "logs")
    first = captioner.server.proc
    try:
        imgs = images(12)
        assert nucleus(captioner, imgs) == [[fake_caption(sha(im.data), im.seed, i) for i in range(2)] for im in imgs]
        assert marker.exists() and captioner.restarts == 1 and first.poll() is not None
        assert captioner.provenance() == {"kind": "endpoint", "server": "vllm", "server_version": "fake-0.1",
                                          "model_id": "fake-vlm", "prompt": PROMPT}
    finally:
        captioner.close()
    assert captioner.server.proc is None and first.poll() is not None


@pytest.mark.parametrize("flag, message", [("--exit-at-start", "exited with code 2"),
                                           ("--never-healthy", "not healthy after 2 s")])
def test_a_managed_server_that_never_comes_up_says_why_with_its_log(tmp_path, flag, message):
    with pytest.raises(ServerStartError, match=message) as info:
        EndpointCaptioner(managed(tmp_path, flag, health_timeout_s=2), "fake-vlm", PROMPT, log_dir=tmp_path)
    assert "fake server: loading fake-vlm" in str(info.value)
