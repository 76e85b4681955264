"""A small weak-to-strong experiment end to end through `mmw2s run` (about a minute on 2 CPU cores:
68 s measured, its rerun check included).

It asserts the direction of the effect on retrieval, the benchmark where even tiny budgets separate
the models: the bootstrapped student beats the weak filter it was taught by, and the gold ceiling
beats the student trained on raw alt-text. The demo (`make demo`) shows the size of the effect.
"""
import json

import pytest

from mmw2s.cli import main
from mmw2s.commands import CONFIG_DIR

SMALL = [
    "world.clean.samples=500", "world.web.samples=3000", "world.test.samples=300",
    "world.samples_per_shard=500", "captioner_pretrain_steps=0",
    "weak_captioner.steps=40", "weak_captioner.batch_size=32", "weak_captioner.log_every=20",
    "weak_filter.steps=40", "weak_filter.batch_size=32", "weak_filter.log_every=20",
    "student.steps=100", "student.batch_size=96", "student.log_every=50", "student.warmup_steps=15",
    "bootstrap.thresholds.calibration_samples=200", "bootstrap.progress=false",
    "students=[web,bootstrapped,gold]", "eval.benchmarks=[world:retrieval]", "eval.retrieval_images=150",
]


@pytest.mark.slow
def test_small_experiment_shows_the_weak_to_strong_direction_on_retrieval(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--config", str(CONFIG_DIR / "demo.yaml"), f"out={out}", *SMALL]) == 0
    report = json.loads((out / "report.json").read_text())
    scores = {m: by["world:retrieval"][0] for m, by in report["aggregate"].items()}
    assert scores["student_bootstrapped"] > scores["weak_filter"]
    assert scores["student_gold"] > scores["student_web"]
    text = (out / "report.md").read_text()
    assert "## Performance gap recovered" in text and (out / "pgr.png").stat().st_size > 0
    # a rerun finds every stage complete and writes the same report
    before = (out / "report.json").read_text()
    assert main(["run", "--config", str(CONFIG_DIR / "demo.yaml"), f"out={out}", *SMALL]) == 0
    assert (out / "report.json").read_text() == before
