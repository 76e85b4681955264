"""`mmw2s run`: the plan is validated before work, keyed by config; the report's PGR arithmetic."""
import pytest

from mmw2s.config import ConfigError, load_config
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import plan, plan_variants, run_order
from mmw2s.report.stats import headline, pgr, pgr_table, spread
from mmw2s.report.tables import fmt
from mmw2s.commands import CONFIG_DIR

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


def test_bootstrapped_text_switches_only_the_bootstrapped_student_to_blips_mixed_captions():
    base = {s.name: s for s in plan(load_config(ExperimentConfig, DEMO, ["out=/tmp/x"]))[0]}
    mixed = {s.name: s for s in plan(load_config(ExperimentConfig, DEMO, [
        "out=/tmp/x", "bootstrapped_text.source=mix", "bootstrapped_text.mix_synthetic_ratio=0.3"]))[0]}
    assert base["student_bootstrapped"].cfg.text.source == "txt"
    text = mixed["student_bootstrapped"].cfg.text
    assert (text.source, text.mix_synthetic_ratio) == ("mix", 0.3)
    # the same bootstrapped shards, a new student folder; nothing else changes
    assert mixed["student_bootstrapped"].cfg.data == base["student_bootstrapped"].cfg.data
    assert mixed["student_bootstrapped"].out != base["student_bootstrapped"].out
    for name in ("bootstrap", "student_web", "student_filtered", "student_gold"):
        assert mixed[name].out == base[name].out, name
    with pytest.raises(ConfigError, match="bootstrapped_text.source|text.source"):
        load_config(ExperimentConfig, DEMO, ["out=/tmp/x", "bootstrapped_text.source=gold"])
    with pytest.raises(ConfigError, match="unknown key 'bootstrapped_text.sorce'"):
        load_config(ExperimentConfig, DEMO, ["out=/tmp/x", "bootstrapped_text.sorce=mix"])
    with pytest.raises(ConfigError, match="bootstrapped_text applies to the CLIP students"):
        load_config(ExperimentConfig, CONFIG_DIR / "llava_demo.yaml",
                    ["out=/tmp/x", "bootstrapped_text.source=mix"])


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
    mean, std, n = spread([0.4, 0.6, None])
    assert (mean, n) == (pytest.approx(0.5), 2) and std == pytest.approx(0.1414, abs=1e-3)
    assert spread([0.5])[1] is None and fmt(0.5, 0.02) == "50.0 ± 2.0"


def test_capfilt_halves_are_per_seed_differences_between_students():
    from mmw2s.experiment.summary import capfilt_halves

    seeds = [{"student_web": {"a": 0.2, "b": 0.5}, "student_filtered": {"a": 0.5, "b": 0.5},
              "student_bootstrapped": {"a": 0.6, "b": 0.4}},
             {"student_web": {"a": 0.3, "b": 0.5}, "student_filtered": {"a": 0.4, "b": 0.6},
              "student_bootstrapped": {"a": 0.6, "b": None}}]
    halves = capfilt_halves(seeds, ["a", "b"])
    assert halves["filter"]["a"][0] == pytest.approx(0.2)  # (0.3 + 0.1) / 2
    assert halves["filter"]["a"][1] == pytest.approx(0.1414, abs=1e-3)
    assert halves["captioner"]["a"][0] == pytest.approx(0.15)  # (0.1 + 0.2) / 2
    assert halves["captioner"]["b"] == (pytest.approx(-0.1), None)  # one seed defined: no spread
    assert halves["captioner"]["mean"][0] == pytest.approx(0.1)  # seed means 0.0 and 0.2 (None skipped)
    no_filtered = [{"student_web": {"a": 0.2}, "student_bootstrapped": {"a": 0.6}}]
    assert capfilt_halves(no_filtered, ["a"]) == {}


def test_a_resumed_run_reports_the_seconds_of_the_invocation_that_finished_each_stage(tmp_path, monkeypatch):
    import time

    from mmw2s.experiment import run as run_module
    from mmw2s.experiment import worker
    from mmw2s.experiment.planner import Step

    def fake_train(step):  # does its work once, then finds it complete (as the real stages do)
        if not (step.out / "final").exists():
            time.sleep(0.3)
            (step.out / "final").mkdir(parents=True)

    monkeypatch.setitem(worker.RUNNERS, "train", fake_train)
    steps = {0: [Step("student", "train", None, tmp_path / "student-1234")]}
    first = run_module.run_all(steps, jobs=1)[0]
    assert first["student"]["wall_s"] >= 0.3
    again = run_module.run_all(steps, jobs=1)[0]
    assert again == first  # not the ~0 s it took to find the stage complete


EXPERIMENTS = CONFIG_DIR / "experiments"


def test_pgr_min_gap_makes_a_noise_sized_gap_undefined():
    scores = {"weak_captioner": {"a": 0.50, "b": 0.40}, "weak_filter": {"a": 0.1, "b": 0.1},
              "student_x": {"a": 0.51, "b": 0.60}, "student_gold": {"a": 0.515, "b": 0.80}}
    row = pgr_table(scores, ["weak_captioner", "weak_filter"], ["student_x"], "student_gold",
                    min_gap=0.02)["student_x"]
    assert row["a"] is None  # a 1.5-point gap is within noise: no PGR, not 0.67
    assert row["b"] == pytest.approx(0.5) and row["mean"] == pytest.approx(0.5)


def test_experiment_configs_state_only_what_they_change_over_the_demo():
    demo = load_config(ExperimentConfig, DEMO)
    rounds = load_config(ExperimentConfig, EXPERIMENTS / "rounds.yaml")
    assert rounds.rounds == 3 and rounds.out != demo.out
    assert rounds.student == demo.student and rounds.bootstrap == demo.bootstrap  # from `base:`


def test_student_size_sweep_shares_every_stage_upstream_of_the_students(tmp_path):
    cfg = load_config(ExperimentConfig, EXPERIMENTS / "student_size.yaml", [f"out={tmp_path}"])
    variants = plan_variants(cfg)
    assert [v.value for v in variants] == cfg.sweep.values
    archs = [next(s for s in v.steps_by_seed[0] if s.name == "student_gold").cfg.dual_encoder.arch
             for v in variants]
    assert archs == cfg.sweep.values
    steps = run_order(variants)[0]
    names = [s.name for s in steps]
    # world, teachers and bootstrap run once; each size trains its own students and eval
    assert names.count("world") == 1 and names.count("bootstrap") == 1 and names.count("weak_captioner") == 1
    assert names.count("student_gold") == 3 and names.count("eval") == 3
    assert len({s.out for s in steps if s.name == "student_gold"}) == 3


def test_noise_sweep_makes_a_world_per_rate(tmp_path):
    cfg = load_config(ExperimentConfig, EXPERIMENTS / "noise.yaml", [f"out={tmp_path}"])
    worlds = [next(s for s in v.steps_by_seed[0] if s.stage == "world").cfg for v in plan_variants(cfg)]
    rates = [1.0 - w.noise.fractions()["correct"] for w in worlds]
    assert rates == pytest.approx(cfg.sweep.values)
    assert len({w.out for w in worlds}) == len(worlds)


def test_sweep_over_an_unknown_key_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="wrld"):
        load_config(ExperimentConfig, EXPERIMENTS / "noise.yaml", [f"out={tmp_path}", "sweep.key=wrld.noise"])
    with pytest.raises(ConfigError, match="noise.totl"):
        load_config(ExperimentConfig, EXPERIMENTS / "noise.yaml", [f"out={tmp_path}", "sweep.key=world.noise.totl"])
    assert not any(tmp_path.iterdir())


def test_rounds_filter_with_the_previous_rounds_student(tmp_path):
    steps = plan(load_config(ExperimentConfig, EXPERIMENTS / "rounds.yaml", [f"out={tmp_path}"]))[0]
    by_name = {s.name: s for s in steps}
    r1, r2 = by_name["student_bootstrapped"], by_name["student_bootstrapped_r2"]
    assert by_name["bootstrap_r2"].cfg.filter.dual_encoder.arch == f"local-dir:{r1.out / 'final'}"
    assert by_name["bootstrap_r3"].cfg.filter.dual_encoder.arch == f"local-dir:{r2.out / 'final'}"
    # rounds.yaml renews the captioner too (tests/test_captioner_student.py checks it in full)
    assert by_name["bootstrap_r2"].cfg.captioner.name == str(by_name["captioner_bootstrapped"].out / "final")
    evaluated = [m.name for m in by_name["eval"].cfg.models]
    assert {"student_bootstrapped_r2", "student_bootstrapped_r3"} <= set(evaluated)
    assert "audit_bootstrap_r3" in by_name
    with pytest.raises(ConfigError, match="bootstrapped"):
        load_config(ExperimentConfig, EXPERIMENTS / "rounds.yaml",
                    [f"out={tmp_path}", "students=[web,gold]"])


def test_base_files_merge_and_report_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nseed: 3\nstudent: {lr: 0.01}\n")
    (tmp_path / "b.yaml").write_text(f"base: {DEMO}\n")
    cfg = load_config(ExperimentConfig, tmp_path / "a.yaml")
    demo = load_config(ExperimentConfig, DEMO)
    assert cfg.seed == 3 and cfg.student["lr"] == 0.01
    assert cfg.student["steps"] == demo.student["steps"]  # merged key by key, not replaced
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(ExperimentConfig, tmp_path / "c.yaml")


def _fake_eval(step, scores: dict, purple_called_blue: dict) -> None:
    """Write what `mmw2s eval` writes (summary.json, colour-suite JSONs with a confusion matrix)."""
    import json
    from pathlib import Path

    from mmw2s.data_pipelines.world import COLORS

    out = Path(step.cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {m: {b: {"acc1": v} for b, v in by.items()} for m, by in scores.items()}
    (out / "summary.json").write_text(json.dumps(summary))
    purple, blue = COLORS.index("purple"), COLORS.index("blue")
    for model, rate in purple_called_blue.items():
        confusion = [[0] * len(COLORS) for _ in COLORS]
        confusion[purple][blue], confusion[purple][purple] = int(rate * 100), 100 - int(rate * 100)
        record = {"model": model, "dataset": "world:color", "metrics": {}, "details": {"confusion": confusion}}
        (out / f"{model}__world-color.json").write_text(json.dumps(record))


def test_bias_sweep_report_plots_pgr_and_inherited_bias(tmp_path):
    from mmw2s.experiment.summary import write_sweep_report

    cfg = load_config(ExperimentConfig, EXPERIMENTS / "bias.yaml", [f"out={tmp_path}", "headline=[world:color]"])
    variants = plan_variants(cfg)
    for i, variant in enumerate(variants):  # the bias grows with the rate; the gold ceiling stays clean
        rate = cfg.sweep.values[i]
        scores = {"weak_captioner": {"world:color": 0.5}, "weak_filter": {"world:color": 0.4},
                  "student_web": {"world:color": 0.45}, "student_filtered": {"world:color": 0.6},
                  "student_bootstrapped": {"world:color": 0.7}, "student_gold": {"world:color": 0.9}}
        _fake_eval(next(s for s in variant.steps_by_seed[0] if s.stage == "eval"), scores,
                   {"weak_captioner": 0.9 * rate, "student_bootstrapped": 0.6 * rate, "student_gold": 0.0})
    report = write_sweep_report(cfg, variants)
    text = report.read_text()
    assert "| bias rate (purple called blue) |" in text and "0.50" in text  # PGR (0.7-0.5)/(0.9-0.5)
    assert (tmp_path / "sweep_pgr.png").stat().st_size > 0 and (tmp_path / "sweep_bias.png").stat().st_size > 0
    bias_rows = text.split("## Bias inherited")[1]
    assert "90.0" in bias_rows and "60.0" in bias_rows  # teacher 90% at rate 1, student inherits 60%
    per_value = sorted((tmp_path / "sweep").iterdir())
    assert len(per_value) == 3 and all((p / "report.md").exists() for p in per_value)
    assert "## Systematic bias" in (per_value[-1] / "report.md").read_text()
    assert "## Systematic bias" not in (per_value[0] / "report.md").read_text()  # rate 0: nothing to show
