"""The wheel installs and runs outside the checkout: default configs ship as package data, and
everything lives under the one `mmw2s` namespace (issue 28)."""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from test_bootstrap import tiny_models, world  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the built wheel; its dependencies (torch, ...) come from this one's
    site-packages, added after its own (so the wheel, not the checkout, provides mmw2s)."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp / "dist").glob("mmw2s-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "mmw2s/configs/demo.yaml" in names and "mmw2s/configs/prompts/llava/detail.yaml" in names
    assert "mmw2s/models/model_configs/mmw2s-conv-tiny.json" in names
    assert not any(n.startswith(("models/", "data_pipelines/", "configs/")) for n in names)  # nothing top-level
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    zipfile.ZipFile(wheel).extractall(purelib)  # what an installer does with a pure-Python wheel
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "zz_deps.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in deps))
    return venv / "bin" / "python"


def run_installed(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of the checkout
    return subprocess.run([str(python), *args], cwd=cwd, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_runs_from_another_directory(installed, tiny_models, tmp_path):  # noqa: F811
    where = run_installed(installed, "-c", "import json, mmw2s, mmw2s.models, mmw2s.data_pipelines.loader as s; "
                          "print(json.dumps([mmw2s.__file__, mmw2s.models.__file__, s.__file__]))", cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-3000:]
    assert all(str(installed.parent.parent) in f for f in json.loads(where.stdout)), where.stdout
    shadow = run_installed(installed, "-c", "import models", cwd=tmp_path)
    assert "No module named 'models'" in shadow.stderr  # a user's own `models` is never ours

    world_run = run_installed(installed, "-m", "mmw2s.cli", "world", f"out={tmp_path / 'world'}", "web.samples=16",
                              "clean.samples=0", "test.samples=0", "samples_per_shard=8", "workers=1", cwd=tmp_path)
    assert world_run.returncode == 0, world_run.stderr[-3000:]
    helped = run_installed(installed, "-m", "mmw2s.cli", "bootstrap", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "thresholds.web" in helped.stdout
    boot = run_installed(installed, "-m", "mmw2s.cli", "bootstrap", f"input={tmp_path / 'world' / 'web'}",
                         f"out={tmp_path / 'out'}", f"captioner.name={tiny_models / 'captioner'}",
                         "filter.kind=blip", f"filter.itm.name={tiny_models / 'itm'}", "decoding.num_captions=1",
                         "decoding.max_new_tokens=6", "decoding.min_new_tokens=1", "batch_size=4", "workers=0",
                         "progress=false", cwd=tmp_path)
    assert boot.returncode == 0, boot.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["complete_shards"] == 2 and summary["decoded"] == 16
