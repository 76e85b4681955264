"""The progress line of `mmw2s run`: stage seconds, elapsed time and an estimate of the rest."""
from mmw2s.experiment.progress import StageProgress


def test_the_rest_is_estimated_from_stages_of_the_same_kind():
    progress = StageProgress(["world", "student", "student", "student", "eval"])
    line = progress.done(0, "world", 10.0)
    assert line.startswith("--- 1/5 world: 10.0 s") and "~0:40 left" in line  # nothing else known: the mean
    progress.done(1, "student_web", 30.0)
    # two more students of 30 s each, and an eval estimated by the mean so far (20 s)
    assert progress.estimate_rest(1) == 30.0 * 2 + 20.0
    assert progress.done(4, "eval", 5.0).endswith("done")


def test_a_stage_found_complete_does_not_enter_the_estimate():
    progress = StageProgress(["world", "student", "student"])
    assert "complete, skipped" in progress.done(0, "world", 0.1, skipped=True)
    assert progress.estimate_rest(0) is None
    assert "no estimate yet" in progress.done(0, "world", 0.1, skipped=True)
