"""`mmw2s run`: the plan is validated before work, keyed by config; the report's PGR arithmetic."""
import pytest

from mmw2s.config import ConfigError, load_config
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import plan
from mmw2s.report import fmt, headline, mean_std, pgr, pgr_table
from mmw2s.stages import CONFIG_DIR

DEMO = CONFIG_DIR / "demo.yaml"


def test_demo_config_plans_every_stage_in_pipeline_order():
    cfg = load_config(ExperimentConfig, DEMO, ["seeds=2", "out=/tmp/x"])
    steps = plan(cfg)
    assert sorted(steps) == [0, 1]
    names = [s.name for s in steps[0]]
    assert names[0] == "world" and names.index("weak_captioner") < names.index("bootstrap")
    assert names.index("bootstrap") < names.index("student_bootstrapped") < names.index("eval")
    gold = next(s for s in steps[0] if s.name == "student_gold").cfg
    web = next(s for s in steps[0] if s.name == "student_web").cfg
    # the ceiling is the one student that reads the truth, and it says so; budgets are equal
    assert gold.reads_truth and gold.text.source == "gold" and not web.reads_truth
    assert (gold.steps, gold.batch_size) == (web.steps, web.batch_size)
    boot = next(s for s in steps[0] if s.name == "bootstrap").cfg
    assert boot.filter.dual_encoder.arch.startswith("local-dir:") and boot.captioner.name.endswith("final")


def test_stage_folders_are_keyed_by_config_and_upstream():
    base = plan(load_config(ExperimentConfig, DEMO, ["out=/tmp/x"]))[0]
    changed = plan(load_config(ExperimentConfig, DEMO, ["out=/tmp/x", "weak_filter.lr=0.01"]))[0]
    outs = lambda steps: {s.name: str(s.out) for s in steps}  # noqa: E731
    a, b = outs(base), outs(changed)
    assert a["world"] == b["world"] and a["weak_captioner"] == b["weak_captioner"]
    # the filter changed, so everything downstream of it gets a new folder
    for name in ("weak_filter", "bootstrap", "student_bootstrapped", "eval"):
        assert a[name] != b[name], name
    assert a["student_web"] == b["student_web"]  # raw web alt-text does not depend on the filter


@pytest.mark.parametrize("override,message", [
    ("student.lrr=0.1", "unknown key 'student.lrr'"),
    ("bootstrap.decoding.method=sampling", "bootstrap.decoding.method"),
    ("weak_filter.steps=many", "expects int"),
    ("students=[web,bootstrapped]", "must include 'gold'"),
])
def test_section_errors_fail_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(ExperimentConfig, DEMO, [f"out={tmp_path}", override])
    assert str(DEMO) in str(err.value)
    assert not any(tmp_path.iterdir())


def test_pgr_definition_and_undefined_gap():
    assert pgr(0.6, 0.4, 0.8) == pytest.approx(0.5)
    assert pgr(0.3, 0.4, 0.8) == pytest.approx(-0.25)  # worse than the teacher: negative
    assert pgr(0.9, 0.5, 0.5) is None and pgr(0.9, 0.6, 0.5) is None  # no gap: undefined
    assert fmt(None) == "n/a"


def test_pgr_table_uses_best_weak_teacher_per_benchmark():
    scores = {"weak_captioner": {"a": 0.5, "b": 0.1}, "weak_filter": {"a": 0.3, "b": 0.2},
              "student_x": {"a": 0.7, "b": 0.5}, "student_gold": {"a": 0.9, "b": 0.2}}
    row = pgr_table(scores, ["weak_captioner", "weak_filter"], ["student_x"], "student_gold")["student_x"]
    assert row["a"] == pytest.approx(0.5)  # (0.7 - 0.5) / (0.9 - 0.5)
    assert row["b"] is None  # ceiling 0.2 does not beat the best weak teacher 0.2
    assert row["mean"] == pytest.approx(0.5)  # the mean skips undefined benchmarks


def test_headline_and_seed_statistics():
    assert headline({"acc1": 0.4, "acc5": 0.9}) == 0.4
    assert headline({"image_retrieval_recall@1": 0.2, "text_retrieval_recall@1": 0.4,
                     "image_retrieval_recall@5": 0.9}) == pytest.approx(0.3)
    assert headline({"acc": 0.7}) == 0.7
    mean, std, n = mean_std([0.4, 0.6, None])
    assert (mean, n) == (pytest.approx(0.5), 2) and std == pytest.approx(0.1414, abs=1e-3)
    assert mean_std([0.5])[1] is None and fmt(0.5, 0.02) == "50.0 ± 2.0"
