"""A loopback OpenAI-compatible server for the endpoint captioner's tests (no model, no network).

It captions deterministically from (image bytes' SHA-256, seed, choice index) when sampling and
from (SHA-256, choice index) when greedy, like a real server with seeded sampling, and can be told
to misbehave: ``faults`` (popped one per chat request: 429 with Retry-After, 500, a slow answer
past the client's timeout, a body that is not JSON) and ``per_image`` (by SHA-256: refuse, a
content-filter stop, a malformed body, the prompt echoed, markup only, nothing). Run as a script it
is a managed "server" (``python fake_openai_server.py --port P --model M``), which can die once after
N answers (``--die-after N --die-once-file F``) or never become healthy (``--never-healthy``).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink")
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")


def fake_caption(image_sha: str, seed: int | None, index: int) -> str:
    """What the fake model writes for an image (``seed`` None: greedy)."""
    d = hashlib.sha256(f"{image_sha}:{seed}:{index}".encode()).digest()
    return f"a {COLORS[d[0] % len(COLORS)]} {SHAPES[d[1] % len(SHAPES)]} next to a {COLORS[d[2] % len(COLORS)]} one"


def fake_rewrite(text: str, seed: int | None, index: int) -> str:
    """What the fake LLM writes when asked to rewrite ``text`` (a text-only request)."""
    d = hashlib.sha256(f"{text}:{seed}:{index}".encode()).digest()
    return f"{COLORS[d[0] % len(COLORS)]} rewrite of: {text}"


def image_sha(body: dict) -> str | None:
    """SHA-256 of the decoded bytes of the request's data: URL (None: a text-only request)."""
    content = body["messages"][-1]["content"]
    for part in content if isinstance(content, list) else []:
        if part.get("type") == "image_url":
            return hashlib.sha256(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])).hexdigest()
    return None


class FakeOpenAI:
    """The server's state; serve it in a thread (``start``) or as a process (``main``)."""

    def __init__(self, model: str = "fake-vlm", port: int = 0, die_after: int | None = None,
                 die_once_file: str | None = None, healthy: bool = True) -> None:
        self.model, self.die_after, self.die_once_file, self.healthy = model, die_after, die_once_file, healthy
        self.faults: list[str] = []
        self.per_image: dict[str, str] = {}
        self.slow_s = 1.0  # the "slow" fault
        self.delay_s = 0.0  # every answer
        self.chat_requests = 0
        self.answered = 0
        self.stop_after: int | None = None  # in a thread: stop serving after this many answers
        self.seeds: dict[str, set] = {}  # image sha -> seeds it was asked with
        self.auth: set[str] = set()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.get(self)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.post(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAI":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- endpoints -------------------------------------------------------------------------------
    def get(self, h: BaseHTTPRequestHandler) -> None:
        if h.path == "/health":
            return send(h, 200 if self.healthy else 503, {})
        if h.path == "/v1/models":
            return send(h, 200, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "t"}]})
        if h.path == "/version":
            return send(h, 200, {"version": "fake-0.1"})
        send(h, 404, {"error": {"message": "no such path"}})

    def post(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        sha = image_sha(body)
        with self.lock:
            self.chat_requests += 1
            self.auth.add(h.headers.get("Authorization", ""))
            fault = self.faults.pop(0) if self.faults else None
        if fault == "429":
            return send(h, 429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0.05"})
        if fault == "500":
            return send(h, 500, {"error": {"message": "oops", "type": "server_error"}})
        if fault == "slow":
            time.sleep(self.slow_s)
        time.sleep(self.delay_s)
        behaviour = self.per_image.get(sha, "ok") if sha else "ok"
        if fault == "not_json" or behaviour == "malformed":
            return send(h, 200, None, raw=b"{this is not json")
        self.answer(h, body, sha, behaviour)

    def answer(self, h: BaseHTTPRequestHandler, body: dict, sha: str, behaviour: str) -> None:
        seed = body.get("seed") if body.get("temperature", 1.0) > 0 else None
        last = body["messages"][-1]["content"]
        prompt = last if sha is None else last[-1]["text"]
        choices = []
        for i in range(body.get("n", 1)):
            made = fake_rewrite(prompt, seed, i) if sha is None else fake_caption(sha, seed, i)
            text = {"echo": prompt, "markup": "<|im_end|>", "empty": "  ", "content_filter": ""}.get(behaviour) or made
            message = {"role": "assistant", "content": text}
            if behaviour == "refuse":
                message = {"role": "assistant", "content": None, "refusal": "I can't describe this image."}
            reason = "content_filter" if behaviour == "content_filter" else "stop"
            choices.append({"index": i, "finish_reason": reason, "message": message})
        with self.lock:
            self.seeds.setdefault(sha or prompt, set()).add(body.get("seed"))
            self.last_body = body
            self.answered += 1
            dying = self.die_after is not None and self.answered >= self.die_after and not (
                self.die_once_file and Path(self.die_once_file).exists())
        if self.stop_after is not None and self.answered > self.stop_after:  # in a thread: stop, answer nothing
            threading.Thread(target=self.close, daemon=True).start()
            h.close_connection = True
            return
        if dying:  # abruptly, mid-request, like a server that ran out of memory
            if self.die_once_file:
                Path(self.die_once_file).write_text("died")
            print("fake server: dying now", flush=True)
            os._exit(3)
        send(h, 200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "choices": choices,
                      "usage": {"prompt_tokens": 12, "completion_tokens": 8 * len(choices),
                                "total_tokens": 12 + 8 * len(choices)}})


def send(h: BaseHTTPRequestHandler, status: int, payload: dict | None, headers: dict | None = None,
         raw: bytes | None = None) -> None:
    data = raw if raw is not None else json.dumps(payload).encode()
    try:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake-vlm")
    parser.add_argument("--die-after", type=int)
    parser.add_argument("--die-once-file")
    parser.add_argument("--never-healthy", action="store_true")
    parser.add_argument("--exit-at-start", action="store_true")
    args = parser.parse_args(argv)
    print(f"fake server: pid {os.getpid()} loading {args.model}", flush=True)
    if args.exit_at_start:
        print("fake server: CUDA out of memory while loading", flush=True)
        sys.exit(2)
    server = FakeOpenAI(args.model, args.port, args.die_after, args.die_once_file, not args.never_healthy)
    print(f"fake server: listening on {server.url}", flush=True)
    server.httpd.serve_forever()


if __name__ == "__main__":
    main()
