"""`mmw2s bootstrap engine=ray`: a local Ray instance with 2 CPUs, shared by every test here
(starting one takes 3-4 s and ~600 MiB), tiny real models, the local engine's output as reference."""
from __future__ import annotations

import json
import os
import shutil
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

from mmw2s.data_pipelines import ShardWriter, is_complete, iter_samples
from mmw2s.bench.ray_engine import ACTOR_TITLE, descendant_pids
from mmw2s.config import load_config

os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when ray is imported: auth on, no warning per init
ray = pytest.importorskip("ray", reason='engine=ray needs the [ray] extra: pip install -e ".[ray]"')

SHARDS = 4
TIMING = ("seconds", "images_per_s")  # the only fields of a shard's stats that depend on the run


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(WorldConfig(out=str(out), workers=1, samples_per_shard=8, clean=SplitConfig(0),
                               web=SplitConfig(8 * SHARDS), test=SplitConfig(0)))
    return out / "web"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, world):
    """A BLIP captioner and a BLIP ITM filter, saved as users' would be."""
    from mmw2s.models import CaptionerSpec, ItmSpec, build_captioner, build_itm_filter

    folder = tmp_path_factory.mktemp("models")
    captions = [s["caption"] for s in iter_samples(str(world))]
    build_captioner(CaptionerSpec(name="blip-tiny"), train_captions=captions).save(folder / "captioner")
    build_itm_filter(ItmSpec(name="blip-tiny"), train_captions=captions).save(folder / "itm")
    return folder


def bootstrap(world, models, out, *extra) -> dict:
    from mmw2s.bootstrap.config import BootstrapConfig
    from mmw2s.bootstrap.run import run

    overrides = [f"input={world}", f"out={out}", f"captioner.name={models / 'captioner'}",
                 f"filter.itm.name={models / 'itm'}", "decoding.num_captions=2", "decoding.max_new_tokens=8",
                 "decoding.min_new_tokens=2", "batch_size=4", "workers=0", "cpu_threads=1", "progress=false",
                 "thresholds.mode=top_fraction", "thresholds.calibration_samples=8", *extra]
    return run(load_config(BootstrapConfig, None, overrides))


def ray_bootstrap(world, models, out, *extra) -> dict:
    return bootstrap(world, models, out, "engine=ray", "ray.concurrency=2", *extra)


def snapshot(out) -> dict[str, object]:
    """Every output file: tars as bytes, stats without their timing, the thresholds."""
    files = {}
    for path in sorted((Path(out) / "shards").iterdir()):
        if path.name.endswith("_stats.json"):
            files[path.name] = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING}
        else:
            files[path.name] = path.read_bytes()
    files["thresholds.json"] = (Path(out) / "thresholds.json").read_bytes()
    return files


@pytest.fixture(scope="module")
def local_reference(world, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return out, bootstrap(world, tiny_models, out)


@pytest.fixture(scope="module")
def ray_run(world, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray")
    return out, ray_bootstrap(world, tiny_models, out, "workers=1")  # a decoding worker per actor


def test_ray_engine_writes_the_local_engines_bytes(local_reference, ray_run):
    (local, local_summary), (out, summary) = local_reference, ray_run
    assert snapshot(out) == snapshot(local)  # tars byte for byte, stats, calibrated thresholds
    assert len([n for n in snapshot(out) if n.endswith(".tar")]) == SHARDS
    assert not list(out.glob("shards/*.partial"))
    same = ("shards", "complete_shards", "written", "decoded", "web_kept", "synthetic_kept", "kept_fraction",
            "thresholds")
    assert {k: summary[k] for k in same} == {k: local_summary[k] for k in same}
    assert summary["images_this_run"] == 8 * SHARDS and summary["images_per_s"] > 0
    workers = summary["ranks"]
    assert len(workers) == 2 and sum(w["shards"] for w in workers) == SHARDS  # both actors took shards


def test_rerun_does_no_work_and_starts_no_actor(world, tiny_models, ray_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(ray_run[0], out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    summary = ray_bootstrap(world, tiny_models, out)
    assert summary["images_this_run"] == 0 and summary["ranks"] == [] and summary["complete_shards"] == SHARDS
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before


@pytest.mark.slow
def test_an_actor_killed_mid_shard_is_replaced_and_the_output_is_the_same(world, tiny_models, local_reference,
                                                                           tmp_path):
    out, result = tmp_path / "out", {}
    job = threading.Thread(target=lambda: result.update(summary=ray_bootstrap(world, tiny_models, out, "workers=1")))
    job.start()
    # generous: Ray's start and the actors' model loading come first, and take minutes on a loaded machine
    killed, deadline = None, time.monotonic() + 600
    while killed is None and job.is_alive() and time.monotonic() < deadline:
        busy = descendant_pids(os.getpid(), ACTOR_TITLE)  # this test's Ray instance only
        if busy:
            killed = busy[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.002)
    job.join(timeout=300)
    assert killed is not None, "no actor was caught running a shard"
    assert not job.is_alive() and "summary" in result, "the job did not finish after the kill"
    assert snapshot(out) == snapshot(local_reference[0])
    assert result["summary"]["complete_shards"] == SHARDS and not list(out.glob("shards/*.partial"))


def test_a_second_writer_of_a_shard_waits_for_the_first(tmp_path):
    """A shard started twice at once (a task re-run while its first process still writes): the
    second start waits for the first to finish, then writes the whole shard anew."""
    path, order = tmp_path / "00000.tar", []
    first = ShardWriter(path)
    first.write({"__key__": "a", "txt": "first"})

    def second_start():
        with ShardWriter(path) as w:
            order.append("second opened")
            w.write({"__key__": "a", "txt": "second"})
            w.close({"count": 1, "by": "second"})

    thread = threading.Thread(target=second_start)
    thread.start()
    time.sleep(0.3)  # the second writer is blocked on the lock, not writing into our file
    order.append("first closes")
    first.close({"count": 1, "by": "first"})
    thread.join(timeout=10)
    assert order == ["first closes", "second opened"]
    assert is_complete(path) and json.loads(path.with_name("00000_stats.json").read_text())["by"] == "second"
    with tarfile.open(path) as tar:
        assert [tar.extractfile(m).read() for m in tar.getmembers()] == [b"second"]
    assert not list(tmp_path.glob("*.partial"))


def test_ray_engine_refuses_the_ceiling_and_an_actor_larger_than_the_cluster(world, tiny_models, tmp_path):
    from mmw2s.errors import StageError

    with pytest.raises(StageError, match="engine=local"):
        ray_bootstrap(world, tiny_models, tmp_path / "a", "measure_ceiling=true")
    with pytest.raises(StageError, match="2.0 CPUs and 0 GPUs"):
        ray_bootstrap(world, tiny_models, tmp_path / "b", "ray.num_gpus_per_worker=1")


@pytest.mark.slow
def test_a_shard_that_fails_for_good_stops_the_job_naming_it(world, tiny_models, tmp_path):
    """Not a sample's fault (here its output path cannot be written): the job stops, shard named."""
    from mmw2s.errors import StageError

    out = tmp_path / "out"
    (out / "shards" / "00001.tar.partial").mkdir(parents=True)
    with pytest.raises(StageError, match=r"shard \S*00001\.tar failed"):
        bootstrap(world, tiny_models, out, "engine=ray", "ray.concurrency=1")  # one actor starts faster
