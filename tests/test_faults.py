"""Nothing lost under faults (issue 25): what resume trusts is verified, transient read failures
are retried and then left for the rerun, one job per run folder, values checked before work,
corrupt state named, broken checkpoints skipped, clean signals, one-line errors."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mmw2s.data_pipelines import ShardWriter, stats_path
from mmw2s.config import ConfigError, load_config
from mmw2s.errors import StageError
from mmw2s.interrupts import descendants
from mmw2s.run_folder import hold_run_folder
from test_bootstrap import (ROOT, all_keys, bootstrap, cli_env, decisions, overrides, reference,  # noqa: F401
                            schema_defaults, tiny_models, world)

SHARDS = ("00000", "00001", "00002")


def copy_run(reference, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    return out


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmw2s.cli", *args], cwd=ROOT, env=cli_env(), capture_output=True,
                          text=True, timeout=300, **kwargs)


# --------------------------------------------------------------------------------------------
# 1. Resume verifies what it trusts


@pytest.mark.parametrize("size", [0, 3000])
def test_a_cut_output_tar_with_its_stats_in_place_is_redone(world, tiny_models, reference, tmp_path, size):
    out = copy_run(reference, tmp_path)
    os.truncate(out / "shards" / "00001.tar", size)
    summary = bootstrap(world, tiny_models, out)
    assert summary["images_this_run"] == 8 and summary["written"] == reference[1]["written"]
    assert sorted(all_keys(out)) == sorted(all_keys(reference[0]))
    assert decisions(out) == decisions(reference[0])


def test_verify_full_catches_a_tar_changed_at_the_same_size(world, tiny_models, reference, tmp_path):
    out = copy_run(reference, tmp_path)
    tar = out / "shards" / "00002.tar"
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF  # inside the first member's data: same size, other bytes
    tar.write_bytes(bytes(data))
    assert bootstrap(world, tiny_models, out)["images_this_run"] == 0  # the size check trusts it
    assert bootstrap(world, tiny_models, out, "verify=full")["images_this_run"] == 8
    assert tar.read_bytes() == (reference[0] / "shards" / "00002.tar").read_bytes()


# --------------------------------------------------------------------------------------------
# 2. Transient input failures are retried, then left incomplete


def flaky_copy(world: Path, tmp_path: Path, name: str, fail_times: int) -> str:
    """A `pipe:` source of `world/name.tar` that exits 1 its first `fail_times` calls."""
    counter = tmp_path / f"calls-{name}"
    counter.write_text("0")
    script = (f'n=$(cat {counter}); echo $((n+1)) > {counter}; '
              f'if [ "$n" -lt {fail_times} ]; then exit 1; fi; cat {world / name}.tar')
    (tmp_path / f"{name}.sh").write_text(script)
    return f"pipe:sh {tmp_path / name}.sh {name}.tar"  # the last `.tar` word names the shard


def test_a_source_that_fails_once_is_retried_and_bootstrapped(world, tiny_models, reference, tmp_path):
    urls = [str(world / "00000.tar"), flaky_copy(world, tmp_path, "00001", fail_times=1), str(world / "00002.tar")]
    out = tmp_path / "out"
    summary = bootstrap(world, tiny_models, out, f"input={'::'.join(urls)}", "io_backoff_s=0.01")
    assert summary["complete_shards"] == 3 and summary["images_this_run"] == 24 and summary["missing_shards"] == []
    assert decisions(out) == decisions(reference[0])


def test_a_source_that_keeps_failing_is_left_for_the_rerun(world, tiny_models, reference, tmp_path):
    urls = [str(world / "00000.tar"), flaky_copy(world, tmp_path, "00001", fail_times=3), str(world / "00002.tar")]
    out = tmp_path / "out"
    args = (f"input={'::'.join(urls)}", "io_retries=1", "io_backoff_s=0.01")
    with pytest.raises(StageError, match=r"1 input shards could not be read.*00001.*rerun the same command"):
        bootstrap(world, tiny_models, out, *args)
    assert not (out / "shards" / "00001.tar").exists() and not stats_path(out / "shards" / "00001.tar").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete_shards"] == 2 and summary["missing_shards"] == ["00001"]
    summary = bootstrap(world, tiny_models, out, *args)  # the source answers by now (3rd call)
    assert summary["images_this_run"] == 8 and summary["missing_shards"] == []
    assert decisions(out) == decisions(reference[0])


def test_a_file_that_is_no_tar_is_never_a_complete_shard(world, tiny_models, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(world / "00000.tar", inputs / "00000.tar")
    (inputs / "00001.tar").write_bytes(b"<html>404 Not Found</html>" * 40)
    with pytest.raises(StageError, match="00001: not a readable tar"):
        bootstrap(inputs, tiny_models, tmp_path / "out", f"input={inputs}", "io_retries=0")
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == ["00000.parquet", "00000.tar",
                                                                        "00000_stats.json"]


# --------------------------------------------------------------------------------------------
# 3. One writer per run folder


def test_a_job_with_other_settings_is_refused_naming_the_holder(world, tiny_models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with hold_run_folder(out, "settings-of-another-config"):
        with pytest.raises(StageError, match=rf"in use by another job with other settings \(PID {os.getpid()} on host"):
            bootstrap(world, tiny_models, out)
    assert not (out / "shards").exists() or not list((out / "shards").iterdir())  # nothing written


def test_a_job_with_the_same_settings_waits_for_the_holder(tmp_path):
    order = []
    with hold_run_folder(tmp_path, "same"):
        def second():
            with hold_run_folder(tmp_path, "same"):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and order == []  # waiting, not running beside the first
        order.append("first done")
    thread.join(timeout=10)
    assert order == ["first done", "second"]


def test_the_lock_of_a_killed_job_is_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmw2s.run_folder import hold_run_folder\n"
                               f"with hold_run_folder({str(tmp_path)!r}, 'a'):\n    print('held', flush=True); "
                               "time.sleep(60)"], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StageError, match=f"PID {holder.pid}"):
        with hold_run_folder(tmp_path, "b"):
            pass
    holder.kill()
    holder.wait()
    with hold_run_folder(tmp_path, "b"):  # the kernel released the dead job's lock
        assert json.loads((tmp_path / ".mmw2s.lock").read_text())["pid"] == os.getpid()


def test_same_config_twice_on_one_folder_computes_each_shard_once(world, tiny_models, tmp_path):
    out = tmp_path / "out"
    cmd = ["bootstrap", "--config", str(schema_defaults(tmp_path)), *overrides(world, tiny_models, out)]
    first = subprocess.Popen([sys.executable, "-m", "mmw2s.cli", *cmd], cwd=ROOT, env=cli_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / ".mmw2s.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = cli(*cmd)
    assert first.wait(timeout=300) == 0 and second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())  # the second run's
    assert summary["images_this_run"] == 0 and summary["complete_shards"] == 3
    assert len(all_keys(out)) == len(set(all_keys(out)))


# --------------------------------------------------------------------------------------------
# 4. Values are checked before work


@pytest.mark.parametrize("value, filter_args", [
    (".nan", []), (".inf", []), ("1.5", []), ("-3", []),   # BLIP ITM: a probability in [0, 1]
    ("-0.5", []), ("1.5", ["filter.kind=clip"]), ("-1.5", ["filter.kind=clip"]),
])
def test_thresholds_no_score_can_reach_are_refused(tmp_path, value, filter_args):
    from mmw2s.bootstrap.config import BootstrapConfig

    with pytest.raises(ConfigError, match="outside the filter's score range"):
        load_config(BootstrapConfig, None, [f"input={tmp_path}", f"out={tmp_path}", *filter_args,
                                            f"thresholds.web={value}"])
    load_config(BootstrapConfig, None, [f"input={tmp_path}", f"out={tmp_path}", "filter.kind=clip",
                                        "thresholds.web=-0.5"])  # a cosine may be negative


@pytest.mark.parametrize("content", ['{"mode": "absolute", "web": null, "synthetic": 0.5}',
                                     '{"mode": "absolute", "web": NaN, "synthetic": 0.5}', "{\"mode\": ", "[1, 2]"])
def test_a_corrupt_thresholds_file_is_named(world, tiny_models, tmp_path, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thresholds.json").write_text(content)
    with pytest.raises(StageError, match=rf"{out / 'thresholds.json'}: .*delete it"):
        bootstrap(world, tiny_models, out)


# --------------------------------------------------------------------------------------------
# 5. Corrupt stats: that shard is redone


@pytest.mark.parametrize("garbage", [b'{"count": 8, "fing', b"\0" * 300, bytes(range(256)) * 2, b"[1, 2]", b"{}"])
def test_a_corrupt_stats_file_redoes_its_shard_only(world, tiny_models, reference, tmp_path, garbage, caplog):
    out = copy_run(reference, tmp_path)
    stats_path(out / "shards" / "00001.tar").write_bytes(garbage)
    summary = bootstrap(world, tiny_models, out)
    assert summary["images_this_run"] == 8 and decisions(out) == decisions(reference[0])
    assert any("00001" in r.getMessage() and "redoing shard" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# 6. Training resume falls back to the newest intact checkpoint


def fake_checkpoint(out: Path, step: int) -> Path:
    """A checkpoint laid out as `save_checkpoint` writes it (weights, optimizer, trainer state, manifest)."""
    from mmw2s.train.checkpoint import TRAINER_STATE, _write_manifest, step_dir

    folder = step_dir(out, step)
    (folder / "state").mkdir(parents=True)
    save_file({"w": torch.arange(256, dtype=torch.float32)}, str(folder / "state" / "model.safetensors"))
    (folder / "state" / "optimizer.bin").write_bytes(b"\1" * 512)
    (folder / TRAINER_STATE).write_text(json.dumps({"step": step}))
    _write_manifest(folder)
    return folder


@pytest.mark.parametrize("damage", ["truncate_weights", "lose_optimizer", "truncate_trainer_state"])
def test_resume_latest_skips_a_broken_newest_checkpoint(tmp_path, damage, caplog):
    from mmw2s.train.checkpoint import resolve_resume

    older, newest = fake_checkpoint(tmp_path, 10), fake_checkpoint(tmp_path, 20)
    assert resolve_resume(tmp_path, "latest") == newest
    if damage == "truncate_weights":
        os.truncate(newest / "state" / "model.safetensors", 300)
    elif damage == "lose_optimizer":
        (newest / "state" / "optimizer.bin").unlink()
    else:
        (newest / "trainer_state.json").write_text('{"step": 2')
    assert resolve_resume(tmp_path, "latest") == older
    assert any("step_000020 is broken" in r.getMessage() for r in caplog.records)
    with pytest.raises(StageError, match="the checkpoint is broken"):
        resolve_resume(tmp_path, str(newest))


# --------------------------------------------------------------------------------------------
# 7. Signals


def big_world(tmp_path_factory_dir: Path) -> Path:
    from mmw2s.data_pipelines.world import SplitConfig, WorldConfig, generate_world

    generate_world(WorldConfig(out=str(tmp_path_factory_dir), workers=1, samples_per_shard=64,
                               clean=SplitConfig(0), web=SplitConfig(512), test=SplitConfig(0)))
    return tmp_path_factory_dir / "web"


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_stops_the_job_and_every_process_it_started(tiny_models, tmp_path, sig, code, said):
    web = big_world(tmp_path / "world")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mmw2s.cli", "bootstrap", "--config", str(schema_defaults(tmp_path)),
           *overrides(web, tiny_models, out), "workers=2"]
    # A suite started in the background (`make test &`, nohup) hands its children SIGINT ignored, and
    # Python then keeps it ignored, as a job started that way should: give the job a terminal's default.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while (len(descendants(proc.pid)) < 2 or not list(out.glob("shards/*.partial"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    started = descendants(proc.pid)
    assert len(started) >= 2, "the data-loader workers never started"
    os.kill(proc.pid, sig)  # the job's PID only, as a scheduler does
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == code, stderr[-3000:]
    assert f"stopped by {said}" in stderr and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    time.sleep(10)
    alive = [p for p in started if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"]
    assert alive == [], f"processes outlived the job: {alive}"
    assert not list(out.glob("shards/*.partial"))


# --------------------------------------------------------------------------------------------
# 8. One-line errors


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The error line (the last one: log records and progress bars may come before it)."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("mmw2s ")]
    assert "Traceback" not in proc.stderr and errors == lines[-1:], proc.stderr[-3000:]
    return lines[-1]


def test_bad_paths_are_one_line_errors(world, tiny_models, tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("no shards here")
    (tmp_path / "a_file").write_text("")
    cfg = str(schema_defaults(tmp_path))
    base = overrides(world, tiny_models, tmp_path / "out")
    cases = {f"input={tmp_path}/x*.tar": "no shards match", f"input={tmp_path / 'plain'}": "no .tar",
             f"out={tmp_path / 'a_file'}": "is not a folder"}
    for override, expected in cases.items():
        proc = cli("bootstrap", "--config", cfg, *base, override)
        assert proc.returncode == 2 and expected in one_line(proc)  # bad input, as a config error


def test_what_a_user_gets_wrong_about_devices_and_models_is_one_line(world, tiny_models, tmp_path):
    """Issue 28's list: device=cuda without a GPU, and a from-scratch captioner config named where
    trained weights are needed, were tracebacks."""
    cfg = str(schema_defaults(tmp_path))
    cases = [("captioner.name=blip-tiny", "names an untrained from-scratch config")]
    if not torch.cuda.is_available():
        cases.append(("device=cuda", "sees no CUDA device"))
    for override, expected in cases:
        proc = cli("bootstrap", "--config", cfg, *overrides(world, tiny_models, tmp_path / override), override)
        assert proc.returncode == 1 and expected in one_line(proc)


def skip_or_fail(reason: str) -> None:
    """Skip here with the reason; in CI (which runs as root and installs `mount`) fail instead."""
    (pytest.fail if os.environ.get("CI") else pytest.skip)(reason)


def test_a_full_disk_names_the_shard(world, tiny_models, tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        skip_or_fail("mounting a small tmpfs needs root and `mount` (Debian's package mount)")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)]).returncode != 0:
        skip_or_fail("this machine does not let root mount a tmpfs")
    try:
        proc = cli("bootstrap", "--config", str(schema_defaults(tmp_path)), *overrides(world, tiny_models, disk / "out"))
        line = one_line(proc)
        assert proc.returncode == 1 and "No space left on device" in line and "shard" in line, line
        assert not list((disk / "out" / "shards").glob("*.partial"))
    finally:
        subprocess.run(["umount", str(disk)])


def bad_benchmarks(tmp_path: Path) -> dict[str, Path]:
    """CLIP_benchmark folders, each broken in one way."""
    from mmw2s.data_pipelines.benchmarks import write_wds_benchmark
    from mmw2s.data_pipelines.benchmark_types import CLASSIFICATION, Benchmark, Example
    from PIL import Image

    examples = [Example(Image.new("RGB", (8, 8), c), f"{i}", label=i) for i, c in enumerate(["red", "blue"])]
    good = tmp_path / "good"
    write_wds_benchmark(Benchmark("toy", CLASSIFICATION, lambda: iter(examples), ["red", "blue"], ["a {c}."]), good)
    folders = {}
    for name in ("no_classnames", "truncated", "bad_cls", "few_names"):
        folders[name] = shutil.copytree(good, tmp_path / name)
    (folders["no_classnames"] / "classnames.txt").unlink()
    tar = folders["truncated"] / "test" / "0.tar"
    os.truncate(tar, tar.stat().st_size // 3)
    (folders["few_names"] / "classnames.txt").write_text("red\n")
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    with ShardWriter(folders["bad_cls"] / "test" / "0.tar") as w:
        w.write({"__key__": "0", "png": png.getvalue(), "cls": "abc"})
        w.close()
    return folders


def test_eval_checks_every_benchmark_before_evaluating_any(tmp_path):
    from mmw2s.evaluate.config import EvalConfig
    from mmw2s.evaluate.run import run

    folders = bad_benchmarks(tmp_path)
    specs = [f"wds:{tmp_path / 'good'}"] + [f"wds:{p}" for p in folders.values()]
    cfg = load_config(EvalConfig, None, [f"out={tmp_path / 'results'}", f"benchmarks={json.dumps(specs)}",
                                         'models=[{"name": "never_loaded", "kind": "dual_encoder", '
                                         '"path": "/nonexistent"}]'])
    with pytest.raises(StageError) as caught:
        run(cfg)
    message = str(caught.value)
    assert "\n" not in message
    assert "no_classnames/classnames.txt is missing" in message
    assert "truncated/test/0.tar: not a readable tar" in message
    assert "bad_cls/test/0.tar: sample 0: .cls holds 'abc'" in message
    assert "few_names/test/0.tar: sample s0000001 has class 1, but classnames.txt names 1 classes" in message
    assert f"wds:{tmp_path / 'good'}:" not in message
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*__*.json"))
