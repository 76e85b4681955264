"""`mmw2s browse serve=true`: the built site over HTTP on 127.0.0.1 with Python's own server.

The site needs no server (it opens from disk); serving helps when the run sits on a remote machine
(`ssh -L 8000:127.0.0.1:8000 host`). Only the loopback interface is bound: shards are untrusted,
and a browse site is nobody else's business.
"""
from __future__ import annotations

from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # one line per thumbnail would bury the URL printed at start


def make_server(folder: str | Path, port: int = 8000) -> ThreadingHTTPServer:
    """A server of `folder` on 127.0.0.1:`port` (0: any free port), not yet serving."""
    handler = partial(_QuietHandler, directory=str(folder))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def serve_forever(folder: str | Path, port: int = 8000) -> None:
    """Serve `folder` until Ctrl-C."""
    with make_server(folder, port) as server:
        host, bound = server.server_address[:2]
        print(f"Serving {folder} at http://{host}:{bound}/index.html (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
