"""`engine=ray` with the endpoint captioner: each actor talks to the server (its own managed one, or
the external one) and the output is the local engine's, byte for byte."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "token")
ray = pytest.importorskip("ray", reason='engine=ray needs the [ray] extra: pip install -e ".[ray]"')

from tests.fake_openai_server import FakeOpenAI  # noqa: E402
from tests.test_endpoint_captioner import clip, run_bootstrap, shard_bytes, world  # noqa: E402,F401 - fixtures


@pytest.mark.slow
def test_ray_actors_caption_through_the_endpoint_like_the_local_engine(world, clip, tmp_path):  # noqa: F811
    server = FakeOpenAI().start()
    ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False)
    try:
        run_bootstrap(world, clip, tmp_path / "local", base_url=server.url)
        summary = run_bootstrap(world, clip, tmp_path / "ray", "engine=ray", "ray.concurrency=2",
                                base_url=server.url)
    finally:
        ray.shutdown()
        server.close()
    assert summary["complete_shards"] == 3 and summary["endpoint"]["requests"] == 24
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local")
