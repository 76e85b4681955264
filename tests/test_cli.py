"""The `mmw2s` command line, end to end on a tiny world."""
import subprocess
import sys

import yaml

from mmw2s.data_pipelines import is_complete
from mmw2s.cli import main


def mmw2s(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "mmw2s.cli", *args], capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_lists_stages_and_keys(capsys):
    out = mmw2s("--help").stdout
    assert "world" in out and "STAGE" in out
    out = mmw2s("world", "--help").stdout
    assert "web.samples" in out and "noise.mismatched" in out and "bias.source" in out


def test_config_errors_fail_before_any_work(tmp_path, capsys):
    out = tmp_path / "w"
    code = main(["world", f"out={out}", "web.sampels=10"])
    err = capsys.readouterr().err
    assert code == 2 and "web.sampels" in err and "did you mean 'samples'" in err
    assert main(["world", f"out={out}", "seed=abc"]) == 2
    assert "expects int" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: x\nnoise:\n  mismatched: 0.9\n  boilerplate: 0.5\n")
    assert main(["world", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "sum to <= 1" in err
    assert not out.exists()


def test_world_end_to_end(tmp_path):
    out = tmp_path / "world"
    proc = mmw2s("world", f"out={out}", "clean.samples=20", "web.samples=40", "test.samples=20",
                  "samples_per_shard=20", "seed=5", "workers=1")
    assert str(out) in proc.stdout and "preview.png" in proc.stdout
    for split, shards in [("clean", 1), ("web", 2), ("test", 1)]:
        tars = sorted((out / split).glob("*.tar"))
        assert len(tars) == shards and all(is_complete(t) for t in tars)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == 5 and saved["web"]["samples"] == 40
    assert (out / "preview.png").stat().st_size > 10_000
    # a rerun with the saved config finds everything done and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    mmw2s("world", "--config", str(out / "config.yaml"))
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
