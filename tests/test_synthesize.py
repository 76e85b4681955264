"""`mmw2s synthesize`: the template backend end to end, the API backend against a scripted
OpenAI-compatible server on loopback, the local causal-LM backend, caption parsing, the teacher."""
from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from mmw2s.data_pipelines.instructions import (IMAGE_PLACEHOLDER, MalformedResponse, attach_records, caption_turns,
                                         dialogue, image_member, make_record, parse_turns, read_llava_json)
from mmw2s.data_pipelines import ShardWriter, is_complete, iter_samples
from mmw2s.errors import StageError
from mmw2s.config import load_config
from mmw2s.synthesize.answers import answer_from_caption
from mmw2s.synthesize.backends import ApiBackend, Request
from mmw2s.models.openai_client import cache_key
from mmw2s.synthesize.captions import parse_caption
from mmw2s.synthesize.config import ApiConfig, SynthesizeConfig
from mmw2s.synthesize.run import run

REPO = Path(__file__).resolve().parent.parent


def jpeg(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, "JPEG")
    return buf.getvalue()


def write_shard(path: Path, captions: list[str], truth: dict | None = None, blocks: list | None = None) -> Path:
    """A tiny img2dataset-style shard; `truth` (if given) is put in every json to prove it is unread."""
    with ShardWriter(path) as w:
        for i, caption in enumerate(captions):
            meta = {"key": f"{path.stem}{i:04d}", "caption": caption, "width": 16, "height": 16}
            if truth:
                meta["truth"] = truth
            if blocks:
                meta["mmw2s"] = blocks[i]
            sample = {"__key__": meta["key"], "jpg": jpeg("red"), "json": meta}
            if caption:
                sample["txt"] = caption
            w.write(sample)
        w.close({"count": len(captions)})
    return path


def config(tmp_path: Path, **overrides) -> SynthesizeConfig:
    items = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(SynthesizeConfig, REPO / "configs" / "synthesize.yaml",
                       [f"out={tmp_path / 'out'}", "progress=false", *items])


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


# --------------------------------------------------------------------------------------------
# Parsing


def test_caption_parser_reads_objects_relations_and_back_references():
    parsed = parse_caption("a large red circle to the left of a small blue square, and a green star above the small blue square")
    assert [(o.size, o.color, o.shape) for o in parsed.objects] == [
        ("large", "red", "circle"), ("small", "blue", "square"), (None, "green", "star")]
    assert parsed.relations == [(0, "left of", 1), (2, "above", 1)]
    assert parse_caption("a small pink cross in the bottom right").objects[0].position == "bottom right"
    assert not parse_caption("IMG_2031.jpg")


def test_parse_turns_accepts_fenced_json_and_rejects_everything_else():
    ok = '```json\n{"turns": [{"question": "What color?", "answer": "red"}]}\n```'
    assert parse_turns(ok) == [("What color?", "red")]
    assert parse_turns('[{"question": "q", "answer": "a"}]') == [("q", "a")]
    for bad in ["", "not json", '{"turns": []}', '{"turns": [{"question": "q"}]}', '{"turns": ["q"]}']:
        with pytest.raises(MalformedResponse):
            parse_turns(bad)


def test_records_keep_llava_format_and_refuse_stray_placeholders():
    prov = {"backend": "api", "model": "m", "prompt_id": "conversation:0"}
    record = make_record("k-conversation", "00000/k.jpg", [("<image> What is it?", "A star."), ("Color?", "Red.")],
                         "conversation", prov)
    assert [t["from"] for t in record["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert record["conversations"][0]["value"] == "<image>\nWhat is it?"
    with pytest.raises(ValueError, match="exactly one"):
        make_record("k", "00000/k.jpg", [("What is it?", "It is <image>.")], "conversation", prov)


def test_weak_teacher_answers_only_what_its_caption_says():
    caption = "a large red circle to the left of a small blue square"
    assert answer_from_caption("What color is the circle?", caption) == "red"
    assert answer_from_caption("What shape is the blue object?", caption) == "square"
    assert answer_from_caption("How many objects are there?", caption) == "2"
    assert answer_from_caption("How many green objects are there?", caption) == "0"
    assert answer_from_caption("Is the square to the right of the circle?\nAnswer the question using a single "
                               "word or phrase.", caption) == "yes"
    assert answer_from_caption("Is the circle below the square?", caption) == "no"
    assert answer_from_caption("Where is the circle?", caption) == "unknown"  # not stated
    assert answer_from_caption("What color is the circle?", "IMG_2031.jpg") == "unknown"


# --------------------------------------------------------------------------------------------
# Template backend end to end


def test_template_backend_writes_llava_json_from_captions_never_the_truth(tmp_path):
    # The truth says "blue square"; synthesis must follow the (here: wrong) caption.
    truth = {"scene": {"objects": [{"shape": "square", "color": "blue"}]}, "gold_caption": "a blue square"}
    captions = ["a large red circle to the left of a small green star", "a yellow triangle in the top left",
                "IMG_2031.jpg", "a red circle and a purple diamond"]
    write_shard(tmp_path / "in" / "00000.tar", captions, truth=truth)
    summary = run(config(tmp_path, input=str(tmp_path / "in")))
    out = tmp_path / "out"
    records = read_llava_json(out / "llava.json")  # validates every record
    assert summary["records"] == len(records) > 0 and summary["complete_shards"] == 1
    assert {r["kind"] for r in records} == {"conversation", "detail", "reasoning"}
    assert all(r["conversations"][0]["value"].startswith(IMAGE_PLACEHOLDER) for r in records)
    assert {r["provenance"]["backend"] for r in records} == {"template"}
    assert records[0]["provenance"]["prompt_id"].startswith("template:")
    text = json.dumps(records)
    assert "blue square" not in text and "red circle" in text
    assert summary["responses"]["empty"] == 3  # the boilerplate caption gives nothing to ask about
    # Images: one shard member per image with records, bytes unchanged, addressed by `image`.
    members = tar_members(out / "images" / "00000.tar")
    shard, member = image_member(records[0]["image"])
    assert shard == "00000" and members[member] == jpeg("red")
    assert "000000002.jpg" not in members  # the boilerplate image got no record
    assert is_complete(out / "images" / "00000.tar")


def test_records_join_back_to_the_images_of_their_shards(tmp_path):
    write_shard(tmp_path / "in" / "00003.tar", ["a red circle above a blue star", "IMG_1.jpg", "a green cross"])
    summary = run(config(tmp_path, input=str(tmp_path / "in")))
    out = tmp_path / "out"
    samples = list(attach_records(iter_samples(str(out / "images")), out / "instructions"))
    assert [s["__key__"] for s in samples] == ["000030000", "000030002"]
    assert all(r["image"] == f"00003/{s['__key__']}.jpg" for s in samples for r in s["records"])
    assert sum(len(s["records"]) for s in samples) == summary["records"]
    stage1 = make_record("k", "00003/000030000.jpg", caption_turns("a green cross", 3), "detail",
                         {"backend": "caption", "model": "none", "prompt_id": "brief"})
    assert dialogue(stage1)[0][1] == "a green cross"


def test_template_output_is_deterministic_and_a_rerun_skips_complete_shards(tmp_path):
    write_shard(tmp_path / "in" / "00000.tar", ["a large red circle above a small blue square"] * 3)
    cfg = config(tmp_path, input=str(tmp_path / "in"))
    run(cfg)
    first = (tmp_path / "out" / "llava.json").read_bytes()
    stats = tmp_path / "out" / "images" / "00000_stats.json"
    mtime = stats.stat().st_mtime_ns
    run(cfg)
    assert stats.stat().st_mtime_ns == mtime  # skipped, not rewritten
    assert (tmp_path / "out" / "llava.json").read_bytes() == first
    with pytest.raises(StageError, match="other settings"):
        run(config(tmp_path, input=str(tmp_path / "in"), seed=1))


def test_bootstrapped_shards_use_the_chosen_caption_and_skip_nothing_kept(tmp_path):
    blocks = [{"chosen": "a pink star", "nothing_kept": False, "web_kept": False, "web_caption": "IMG_1.jpg",
               "synthetic": [{"caption": "a pink star", "kept": True}, {"caption": "a cyan cross", "kept": True}]},
              {"chosen": None, "nothing_kept": True, "web_kept": False, "web_caption": "a red circle",
               "synthetic": []}]
    write_shard(tmp_path / "in" / "00000.tar", ["a pink star", ""], blocks=blocks)
    summary = run(config(tmp_path, input=str(tmp_path / "in"), kinds="[detail]"))
    records = read_llava_json(tmp_path / "out" / "llava.json")
    assert [r["id"] for r in records] == ["000000000-detail"]
    assert "pink star" in dialogue(records[0])[0][1] and "cyan" not in dialogue(records[0])[0][1]
    assert summary["samples"] == 2


# --------------------------------------------------------------------------------------------
# API backend against a scripted OpenAI-compatible server


class ScriptedServer:
    """`/v1/chat/completions` on 127.0.0.1: the caption in the last message picks the behaviour."""

    SCRIPTS = {"blue square": "429", "green star": "500", "pink cross": "slow", "cyan diamond": "bad_content",
               "yellow triangle": "bad_body", "orange circle": "400", "purple star": "always_500"}

    def __init__(self, delay: float) -> None:
        self.delay, self.counts, self.lock = delay, Counter(), threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def script(self, body: dict) -> tuple[str, str]:
        context = body["messages"][-1]["content"]
        name = next((k for k in self.SCRIPTS if k in context), "ok")
        return name, self.SCRIPTS.get(name, "ok")

    def handle(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        name, script = self.script(body)
        with self.lock:
            self.counts[name] += 1
            n = self.counts[name]
        if script == "always_500" or (n == 1 and script in ("429", "500")):
            return self.send(h, int(script[-3:]), {"error": {"message": "try again", "type": "server_error"}})
        if script == "400":
            return self.send(h, 400, {"error": {"message": "context too long", "type": "invalid_request_error"}})
        if script == "slow" and n == 1:
            time.sleep(self.delay)
        if script == "bad_body":
            return self.send(h, 200, None, raw=b"{this is not json")
        content = "Sure! Here you go." if script == "bad_content" else json.dumps(
            {"turns": [{"question": f"What is in the image? ({name})", "answer": f"A {name}."}]})
        if script == "llava_format":  # what an LLM prompted with LLaVA's own examples answers
            content = json.dumps([{"from": "human", "value": f"<image>\nWhat is in the image? ({name})"},
                                  {"from": "gpt", "value": f"A {name}."}])
        self.send(h, 200, {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, payload: dict | None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
            pass

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = ScriptedServer(delay=1.0)
    yield s
    s.close()


def api_config(tmp_path: Path, server: ScriptedServer, out: str = "out", **more) -> SynthesizeConfig:
    settings = {"input": str(tmp_path / "in"), "out": str(tmp_path / out), "backend": "api",
                "kinds": "[conversation]", "api.base_url": server.url, "api.model": "test-model",
                "api.timeout_s": 0.4, "api.max_attempts": 3, "api.backoff_base_s": 0.01, "api.jitter": 0.0,
                "api.concurrency": 4, "api.price_prompt_per_1k": 1.0, "api.price_completion_per_1k": 2.0,
                "cache_dir": str(tmp_path / "cache"), **more}
    return config(tmp_path, **settings)


def test_api_backend_retries_counts_malformed_and_reruns_from_cache(tmp_path, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    captions = ["a red circle", "a blue square", "a green star", "a pink cross", "a cyan diamond",
                "a yellow triangle", "an orange circle"]
    write_shard(tmp_path / "in" / "00000.tar", captions)
    summary = run(api_config(tmp_path, server))
    # 429 then 200, 500 then 200, a timeout then 200: each answered on the second try.
    assert server.counts["blue square"] == server.counts["green star"] == server.counts["pink cross"] == 2
    records = read_llava_json(tmp_path / "out" / "llava.json")
    answered = {r["conversations"][1]["value"] for r in records}
    assert answered == {"A ok.", "A blue square.", "A green star.", "A pink cross."}
    assert summary["malformed"] == 2  # prose instead of JSON turns, and a body that is not JSON
    assert summary["responses"]["malformed"] == 2 and summary["responses"]["ok"] == 4
    assert {e["error"] for e in summary["malformed_examples"]} >= {"not JSON: Expecting value"}
    assert summary["responses"]["rejected"] == 1 and server.counts["orange circle"] == 1  # 400: no retry
    assert summary["retries"] == 3 and summary["requests"] == 10
    assert summary["prompt_tokens"] == 500 and summary["completion_tokens"] == 50
    assert summary["estimated_cost_usd"] == pytest.approx(0.5 + 0.1)
    assert records[0]["provenance"] == {"backend": "api", "model": "test-model",
                                        "prompt_id": records[0]["provenance"]["prompt_id"]}
    # A rerun into a fresh folder with the same cache sends nothing and writes the same records.
    before = sum(server.counts.values())
    again = run(api_config(tmp_path, server, out="out2"))
    assert sum(server.counts.values()) - before == 2  # only the two never-cached failures (400, bad body)
    assert again["this_run"]["cache_hits"] == 5 and again["this_run"]["estimated_cost_usd"] == 0.0
    assert read_llava_json(tmp_path / "out2" / "llava.json") == records


def test_api_answers_in_llavas_own_format_are_records_and_counters_agree(tmp_path, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(ScriptedServer, "SCRIPTS", {"": "llava_format"})
    write_shard(tmp_path / "in" / "00000.tar", ["a red circle", "a blue square", "a green star"])
    summary = run(api_config(tmp_path, server))
    records = read_llava_json(tmp_path / "out" / "llava.json")
    assert summary["records"] == 3 == len(records) and summary["malformed"] == 0
    assert summary["responses"] == {"ok": 3, "empty": 0, "rejected": 0, "failed": 0, "malformed": 0}
    assert records[0]["conversations"][0]["value"].startswith("<image>\nWhat is in the image?")
    assert records[0]["conversations"][0]["value"].count("<image>") == 1


def test_api_shard_with_exhausted_retries_stays_incomplete_until_a_rerun(tmp_path, server, monkeypatch):
    write_shard(tmp_path / "in" / "00000.tar", ["a red circle", "a purple star"])
    summary = run(api_config(tmp_path, server, **{"api.max_attempts": 2}))
    assert summary["incomplete_shards"] == ["00000"] and server.counts["purple star"] == 2
    assert not is_complete(tmp_path / "out" / "images" / "00000.tar")
    assert json.loads((tmp_path / "out" / "llava.json").read_text()) == []
    ServerScripts = dict(ScriptedServer.SCRIPTS, **{"purple star": "ok"})
    monkeypatch.setattr(ScriptedServer, "SCRIPTS", ServerScripts)
    ok_before = server.counts["ok"]
    summary = run(api_config(tmp_path, server))
    assert summary["incomplete_shards"] == [] and summary["records"] == 2
    assert server.counts["ok"] == ok_before  # the red circle's answer came from the cache


def test_backoff_doubles_is_capped_and_honours_retry_after():
    backend = ApiBackend(ApiConfig(base_url="http://127.0.0.1:9/v1", backoff_base_s=0.5, backoff_max_s=3.0,
                                   jitter=0.0), {}, None)
    try:
        assert [backend.delay(a) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]

        class Exn:
            response = type("R", (), {"headers": {"retry-after": "2.5"}})()
        assert backend.delay(1, Exn()) == 2.5
    finally:
        backend.close()


def test_cache_key_depends_on_messages_model_and_parameters():
    msgs = [{"role": "user", "content": "a red circle"}]
    key = cache_key(msgs, "m", {"temperature": 0.7})
    assert key == cache_key([dict(msgs[0])], "m", {"temperature": 0.7})
    assert len({key, cache_key(msgs, "m2", {"temperature": 0.7}), cache_key(msgs, "m", {"temperature": 0.2}),
                cache_key([{"role": "user", "content": "a red square"}], "m", {"temperature": 0.7})}) == 4


# --------------------------------------------------------------------------------------------
# Local causal LM backend


@pytest.mark.slow
def test_local_backend_runs_a_saved_causal_lm_and_counts_its_garbage(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmw2s.models.tokenizers import build_word_tokenizer

    folder = tmp_path / "tiny-llama"
    tok = build_word_tokenizer(["user assistant system captions a red circle json turns question answer"])
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024))
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    write_shard(tmp_path / "in" / "00000.tar", ["a red circle", "a blue square"])
    settings = {"input": str(tmp_path / "in"), "backend": "local", "local.model": str(folder),
                "local.max_new_tokens": 6, "local.temperature": 0.0, "local.device": "cpu",
                "kinds": "[conversation, detail]", "cache_dir": str(tmp_path / "cache")}
    summary = run(config(tmp_path, **settings))
    assert summary["responses"]["malformed"] == summary["malformed"] == 4 and summary["responses"]["ok"] == 0
    assert summary["records"] == 0 and len(summary["malformed_examples"]) == 4
    assert summary["complete_shards"] == 1 and summary["prompt_tokens"] > 0
    again = run(config(tmp_path, out=str(tmp_path / "out2"), **settings))
    assert again["this_run"]["cache_hits"] == 4 and again["this_run"]["requests"] == 0


def test_template_backend_request_is_seeded_per_record():
    from mmw2s.synthesize.backends import TemplateBackend
    from mmw2s.synthesize.prompts import load_wording

    backend = TemplateBackend(*load_wording("configs/prompts/template.yaml"))
    parsed = parse_caption("a large red circle to the left of a small blue square")
    one = backend.respond([Request("k-conversation", "conversation", parsed=parsed, seed=5)])
    two = backend.respond([Request("x", "detail", parsed=parsed, seed=1),
                           Request("k-conversation", "conversation", parsed=parsed, seed=5)])
    assert one[0].text == two[1].text
    assert all(len(parse_turns(r.text)) >= 1 for r in two)
