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

from mmw2s.data_pipelines import is_complete, iter_samples, ReadLimits
from mmw2s.models.captioners.protocol import EncodedImage, NotTrainableError, require_trainable
from mmw2s.models.captioners.endpoint import EndpointCaptioner, decoding_params
from mmw2s.models.endpoint_session import EndpointError
from mmw2s.models.endpoint_server import ServerStartError
from mmw2s.models.specs import CaptionerSpec, EndpointSpec
from tests.fake_openai_server import FakeOpenAI, fake_caption
from test_bootstrap import world  # noqa: F401 - the same tiny world (3 shards of 8)
from test_vlm_captioners import clip  # noqa: F401 - the same tiny open_clip filter

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
    from mmw2s.models import build_captioner

    captioner = EndpointCaptioner(spec(server), "fake-vlm", PROMPT)
    try:
        with pytest.raises(NotTrainableError, match="this endpoint captioner only captions"):
            require_trainable(captioner, "mmw2s train task=captioner")
    finally:
        captioner.close()
    blip = build_captioner(CaptionerSpec(name="blip-tiny"), ["a red circle", "a blue square"])
    assert require_trainable(blip, "mmw2s train task=captioner") is blip


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
    assert "loading fake-vlm" in str(info.value)


# --------------------------------------------------------------------------------------------
# `mmw2s bootstrap` end to end: tiny world shards, the endpoint captioner, the tiny CLIP filter


@pytest.fixture(scope="module")
def shared_server():
    s = FakeOpenAI().start()
    yield s
    s.close()


def run_bootstrap(world, clip, out, *extra, base_url=None) -> dict:
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.bootstrap.run import run
    from mmw2s.config import load_config

    settings = [f"input={world}", f"out={out}", "captioner.kind=endpoint", "captioner.name=fake-vlm",
                f"captioner.prompt={PROMPT}", "captioner.endpoint.timeout_s=5", "captioner.endpoint.max_attempts=3",
                "captioner.endpoint.backoff_base_s=0.01", "captioner.endpoint.jitter=0",
                "filter.kind=clip", f"filter.dual_encoder.arch=local-dir:{clip}", "decoding.num_captions=2",
                "decoding.max_new_tokens=12", "batch_size=4", "workers=0", "cpu_threads=1", "progress=false",
                "selection.nothing_kept=flag"]
    if base_url:
        settings.append(f"captioner.endpoint.base_url={base_url}")
    return run(load_config(BootstrapConfig, None, [*settings, *extra]))


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((Path(out) / "shards").glob("*.tar"))}


def shard_stats(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "shards").glob("*_stats.json"))]


@pytest.fixture(scope="module")
def reference(world, clip, shared_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    run_bootstrap(world, clip, out, "captioner.endpoint.concurrency=1", base_url=shared_server.url)
    return out


def test_bootstrap_output_bytes_do_not_depend_on_concurrency_or_workers(world, clip, shared_server, reference,
                                                                        tmp_path):
    assert len(shard_bytes(reference)) == 3
    for i, extra in enumerate([("captioner.endpoint.concurrency=16",),
                               ("captioner.endpoint.concurrency=16", "workers=2")]):
        shared_server.faults = ["429", "500"]  # whichever requests meet them, the answers are the same
        run_bootstrap(world, clip, tmp_path / str(i), *extra, base_url=shared_server.url)
        assert shard_bytes(tmp_path / str(i)) == shard_bytes(reference), extra
    # another batch size: the same captions (the filter's float sums may differ in the last bits)
    run_bootstrap(world, clip, tmp_path / "b3", "batch_size=3", base_url=shared_server.url)
    assert synthetic_captions(tmp_path / "b3") == synthetic_captions(reference)
    stats = shard_stats(tmp_path / "1")
    assert sum(s["endpoint"]["requests"] for s in stats) == 24 + 2 and sum(s["endpoint"]["retries"] for s in stats) == 2
    assert all(s["endpoint"]["completion_tokens"] == 8 * 16 for s in stats)
    block = json.loads(_first_json(tmp_path / "1"))["mmw2s"]
    assert block["captioner"]["model_id"] == "fake-vlm" and block["captioner"]["server"] == "external"
    assert block["captioner"]["kind"] == "endpoint" and "base_url" not in json.dumps(block)
    assert len(block["synthetic"]) == 2


def synthetic_captions(out: Path) -> dict[str, list[str]]:
    found = {}
    for path in sorted((Path(out) / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    block = json.loads(tar.extractfile(m).read())["mmw2s"]
                    found[m.name] = [c["caption"] for c in block["synthetic"]]
    return found


def _first_json(out: Path) -> bytes:
    with tarfile.open(Path(out) / "shards" / "00000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        return tar.extractfile(member).read()


def test_reruns_request_nothing_and_the_api_key_never_reaches_disk(world, clip, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MMW2S_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    server = FakeOpenAI().start()
    try:
        keyed = ("captioner.endpoint.api_key_env=MMW2S_TEST_KEY", f"captioner.endpoint.cache_dir={tmp_path / 'cache'}")
        run_bootstrap(world, clip, tmp_path / "a", *keyed, base_url=server.url)
        assert server.auth == {f"Bearer {SECRET}"} and server.chat_requests == 24
        # a rerun into another folder with the same cache, and a redone shard, ask for nothing
        run_bootstrap(world, clip, tmp_path / "b", *keyed, base_url=server.url)
        for name in ("00001.tar", "00001_stats.json"):
            (tmp_path / "a" / "shards" / name).unlink()
        summary = run_bootstrap(world, clip, tmp_path / "a", *keyed, base_url=server.url)
        assert server.chat_requests == 24 and summary["images_this_run"] == 8
        assert summary["endpoint"]["cache_hits"] == 8 and summary["endpoint"]["requests"] == 16  # 2 shards kept
        assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
        assert sum(s["endpoint"]["cache_hits"] for s in shard_stats(tmp_path / "b")) == 24
    finally:
        server.close()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 30  # shards, stats, config, thresholds, summary, 24 cache entries
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []
    assert "MMW2S_TEST_KEY" in (tmp_path / "a" / "config.yaml").read_text()  # the variable's name only
    assert SECRET not in caplog.text


def test_invalid_answers_are_counted_by_reason_in_the_shard_stats(world, clip, tmp_path):
    server = FakeOpenAI().start()
    try:
        first = sorted(iter_samples(str(world / "00000.tar"), ReadLimits(decode_images=False)),
                       key=lambda s: s["__key__"])[:6]
        behaviours = ["refuse", "content_filter", "malformed", "echo", "markup", "empty"]
        server.per_image = {sha(s["image_bytes"]): b for s, b in zip(first, behaviours)}
        run_bootstrap(world, clip, tmp_path, base_url=server.url)
    finally:
        server.close()
    stats = shard_stats(tmp_path)[0]
    assert stats["synthetic_invalid_by_reason"] == {"refused": 4, "malformed": 2, "prompt": 2,
                                                    "special_tokens": 2, "empty": 2}
    assert stats["synthetic_invalid"] == 12 and stats["written"] == 8


def test_a_dead_external_server_leaves_its_shard_incomplete_until_a_rerun(world, clip, reference, tmp_path):
    server = FakeOpenAI().start()
    port = server.port
    server.stop_after = 10  # mid-shard 00001
    with pytest.raises(Exception, match="no answer after 3 tries") as info:
        run_bootstrap(world, clip, tmp_path, base_url=server.url)
    assert "00001" in str(info.value)
    assert is_complete(tmp_path / "shards" / "00000.tar") and not is_complete(tmp_path / "shards" / "00001.tar")
    again = FakeOpenAI(port=port).start()  # the server is back where it was
    try:
        run_bootstrap(world, clip, tmp_path, base_url=again.url)
    finally:
        again.close()
    assert shard_bytes(tmp_path) == shard_bytes(reference)


def test_bootstrap_through_a_managed_server_that_dies_once(world, clip, reference, tmp_path):
    command = json.dumps(["{python}", str(HERE / "fake_openai_server.py"), "--port", "{port}", "--model", "{model}",
                          "--die-after", "9", "--die-once-file", str(tmp_path / "died")])
    run_bootstrap(world, clip, tmp_path / "out", "captioner.endpoint.server=vllm",
                  f"captioner.endpoint.server_python={sys.executable}", f"captioner.endpoint.server_command={command}",
                  "captioner.endpoint.health_timeout_s=60")
    assert (tmp_path / "died").exists()
    stats = shard_stats(tmp_path / "out")
    assert len(stats) == 3 and max(s["endpoint"]["server_restarts"] for s in stats) == 1
    # the same captions as the external run (the provenance says which server kind wrote them)
    assert synthetic_captions(tmp_path / "out") == synthetic_captions(reference)
    assert json.loads(_first_json(tmp_path / "out"))["mmw2s"]["captioner"]["server"] == "vllm"
    # both servers (the one that died, its replacement) are gone once the run returns
    import re

    log = next((tmp_path / "out" / "logs").glob("server-*.log")).read_text()
    pids = [int(p) for p in re.findall(r"fake server: pid (\d+)", log)]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --------------------------------------------------------------------------------------------
# LaCLIP-style rewriting: a third caption source through the same client


def test_rewrites_are_scored_kept_and_recorded_as_a_third_source(world, clip, tmp_path):
    from tests.fake_openai_server import fake_rewrite

    server = FakeOpenAI().start()
    try:
        summary = run_bootstrap(world, clip, tmp_path, "rewrite.num_rewrites=2", "rewrite.exemplars=2",
                                f"rewrite.prompt_file={ROOT / 'configs/prompts/rewrite/laclip.yaml'}",
                                "thresholds.synthetic=-1", "selection.choose=synthetic_first",
                                base_url=server.url)
        messages = server.last_body["messages"]
    finally:
        server.close()
    # the instruction, k=2 exemplar exchanges, then the web caption to rewrite
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert server.chat_requests == 24 * 2  # one caption request and one rewrite request per image
    samples = {}
    for path in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    samples[m.name] = json.loads(tar.extractfile(m).read())
    meta = next(iter(samples.values()))
    block = meta["mmw2s"]
    assert [e.get("source") for e in block["synthetic"]] == [None, None, "rewrite", "rewrite"]
    web = block["web_caption"]
    rewrites = [e["caption"] for e in block["synthetic"][2:]]
    assert all(e["kept"] for e in block["synthetic"])
    # each rewrite is what the fake LLM answered for this web caption and this sample's own seed
    assert rewrites[0].endswith(f"rewrite of: {web}") and rewrites[0] in {fake_rewrite(web, s, 0) for s in
                                                                          server.seeds[web]}
    assert block["rewrite"]["exemplars"] == 2 and block["rewrite"]["model_id"] == "fake-vlm"
    chosen = {m["mmw2s"]["chosen_source"] for m in samples.values()}
    assert chosen <= {"synthetic", "rewrite"} and summary["synthetic"] == 24 * 4
    # the browser shows them, labelled
    from mmw2s.browse.extract import card

    shown = card({"json": meta, "__key__": "k"})
    assert [s["source"] for s in shown["synthetic"]] == ["synthetic", "synthetic", "rewrite", "rewrite"]


def test_a_rewrite_prompt_file_without_its_fields_is_named_in_the_error(tmp_path):
    from mmw2s.models.endpoint_rewriter import load_rewrite_prompt

    bad = tmp_path / "bad.yaml"
    bad.write_text("instruction: rewrite\nexemplars:\n  - caption: a\n")
    with pytest.raises(ValueError, match=f"{bad}: exemplar 0 needs text 'caption' and 'rewrite'"):
        load_rewrite_prompt(bad)
    prompt = load_rewrite_prompt(ROOT / "configs" / "prompts" / "rewrite" / "laclip.yaml")
    assert len(prompt.exemplars) == 8 and prompt.instruction.startswith("Rewrite the image caption")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_byte_identical_and_asks_only_for_the_rest(world, clip, reference, tmp_path):
    import signal
    import subprocess
    import time

    server = FakeOpenAI().start()
    server.delay_s = 0.15  # slow enough for the kill to land mid-run
    out = tmp_path / "out"
    (tmp_path / "empty.yaml").write_text("{}\n")
    cmd = [sys.executable, "-m", "mmw2s.cli", "bootstrap", "--config", str(tmp_path / "empty.yaml"),
           f"input={world}", f"out={out}", "captioner.kind=endpoint", "captioner.name=fake-vlm",
           f"captioner.prompt={PROMPT}", f"captioner.endpoint.base_url={server.url}", "captioner.endpoint.concurrency=1",
           "filter.kind=clip", f"filter.dual_encoder.arch=local-dir:{clip}", "decoding.num_captions=2",
           "decoding.max_new_tokens=12", "batch_size=4", "workers=0", "cpu_threads=1", "progress=false",
           "selection.nothing_kept=flag"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        # kill once shard 00000 is complete and shard 00001 half asked for
        while (server.chat_requests < 12 or not list(out.glob("shards/*_stats.json"))) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done = list(out.glob("shards/*_stats.json"))
        assert 1 <= len(done) < 3, f"the kill did not land mid-run: {done}, {proc.stderr.read()[-2000:]}"
        asked = server.chat_requests
        cached = len(list((out / "cache" / "captions").glob("*/*.json")))
        server.delay_s = 0.0
        run_bootstrap(world, clip, out, "captioner.endpoint.concurrency=1", base_url=server.url)
    finally:
        server.close()
    assert shard_bytes(out) == shard_bytes(reference)
    assert asked > 8 * len(done) and cached > 8 * len(done)  # the kill landed inside shard 00001
    assert server.chat_requests - asked == 24 - cached  # what the killed run had answered came from the cache
