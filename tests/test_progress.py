"""The progress line of `mmw2s run`: stage seconds, elapsed time and an estimate of the rest."""
from mmw2s.experiment.progress import StageProgress


def test_the_rest_is_estimated_from_stages_of_the_same_kind():
    progress = StageProgress(["world", "student", "student", "student", "eval"])
    line = progress.done(0, "world", 10.0)
    assert line.startswith("--- 1/5 world: 10.0 s") and "~0:40 left" in line  # nothing else known: the mean
    progress.done(1, "student_web", 30.0)
    # two more students of 30 s each, and an eval estimated by the mean so far (20 s)
    assert progress.estimate_rest() == 30.0 * 2 + 20.0
    progress.done(2, "student_a", 30.0)
    progress.done(3, "student_b", 30.0)
    assert progress.done(4, "eval", 5.0).endswith("done")


def test_stages_side_by_side_end_out_of_order_and_share_the_rest():
    progress = StageProgress(["world", "student", "student", "student", "eval"], jobs=2)
    progress.done(0, "world", 10.0)
    line = progress.done(2, "student_b", 30.0)  # ended before the student planned first
    assert line.startswith("--- 2/5 student_b")  # stages done, not the index of this one
    # left: two students (30 s each) and the eval (the mean, 20 s), two at a time
    assert progress.estimate_rest() == (30.0 * 2 + 20.0) / 2
    progress.done(4, "eval", 5.0)
    progress.done(3, "student_c", 30.0)
    assert progress.done(1, "student_a", 30.0).endswith("done")  # the last stage to end, whatever its index


def test_a_stage_found_complete_does_not_enter_the_estimate():
    progress = StageProgress(["world", "student", "student"])
    assert "complete, skipped" in progress.done(0, "world", 0.1, skipped=True)
    assert progress.estimate_rest() is None
    assert "no estimate yet" in progress.done(1, "student", 0.1, skipped=True)


def test_stages_complete_before_the_run_are_not_expected_to_cost_anything():
    # a rerun over a folder whose world and first student are done: only the others are left
    progress = StageProgress(["world", "student", "student", "eval"], complete={0, 1})
    progress.done(0, "world", 6.0, skipped=True)
    progress.done(1, "student_web", 30.0, skipped=True)
    progress.done(2, "student_gold", 30.0)
    assert progress.estimate_rest() == 30.0  # the eval, by the mean of what ran; not the world again
