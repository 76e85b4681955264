"""The console: expected library warnings about our own models are dropped by filters that name
exactly those messages (any other warning still shows), verbosity flags, and the one
models-by-benchmarks table shared by `mmw2s eval` and `mmw2s run`."""
from __future__ import annotations

import logging

import pytest
import torch

from mmw2s import console
from mmw2s.cli import build_parser
from mmw2s.report.stats import benchmark_order, headline
from mmw2s.report.tables import results_table


def test_from_scratch_dual_encoder_builds_without_the_random_init_warning(caplog):
    import open_clip

    from mmw2s.models.dual_encoders import build_dual_encoder
    from mmw2s.models.specs import DualEncoderSpec

    with caplog.at_level(logging.WARNING):
        build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny"))
    assert not [r for r in caplog.records if "No pretrained weights" in r.getMessage()]
    # the filter lives only around our own from-scratch build: open_clip's warning still shows otherwise
    with caplog.at_level(logging.WARNING):
        open_clip.create_model_and_transforms("mmw2s-conv-tiny", pretrained=None)
    assert [r for r in caplog.records if "No pretrained weights loaded for model 'mmw2s-conv-tiny'" in r.getMessage()]


def test_tied_weights_warning_is_dropped_and_no_other(caplog):
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils.other import clean_state_dict_for_safetensors

    fresh = not PartialState._shared_state
    PartialState()  # accelerate's logger refuses to log before its state exists
    try:
        _check_tied_weights_filter(caplog, clean_state_dict_for_safetensors)
    finally:
        if fresh:  # leave accelerate's process-wide state as this test found it
            AcceleratorState._reset_state(reset_partial_state=True)


def _check_tied_weights_filter(caplog, clean_state_dict_for_safetensors) -> None:
    console.quiet_tied_weights_warning()
    console.quiet_tied_weights_warning()  # idempotent: one filter
    logger = logging.getLogger(console.TIED_WEIGHTS_LOGGER)
    assert sum(isinstance(f, console.DropMessages) for f in logger.filters) == 1
    shared = torch.zeros(4)
    with caplog.at_level(logging.WARNING):
        cleaned = clean_state_dict_for_safetensors({"embed.weight": shared, "head.weight": shared})
        logger.warning("Removing a tensor for another reason")  # the same logger's other messages pass
    assert list(cleaned) == ["embed.weight"]  # accelerate did remove the tied copy
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Removed shared tensor" in m]
    assert [m for m in messages if m.endswith("Removing a tensor for another reason")]


@pytest.mark.parametrize("flags, level", [([], logging.INFO), (["-q"], logging.WARNING), (["-v"], logging.DEBUG)])
def test_verbosity_flags(flags, level):
    args = build_parser().parse_args(["world", *flags])
    assert console.level_of(args.quiet, args.verbose) == level


def _record(model: str, dataset: str, metrics: dict) -> dict:
    return {"model": model, "dataset": dataset, "task": "t", "metrics": metrics}


def test_eval_table_uses_the_reports_headline_and_order():
    records = [
        _record("clip", "world:retrieval", {"image_retrieval_recall@1": 0.2, "text_retrieval_recall@1": 0.4,
                                            "image_retrieval_recall@5": 0.9, "text_retrieval_recall@5": 0.9}),
        _record("clip", "world:color", {"acc1": 0.5, "acc5": 1.0}),
        _record("clip", "world:captions", {}),
        _record("cap", "world:color", {"acc1": 0.25}),
        _record("cap", "world:retrieval", {"image_retrieval_recall@1": 0.1, "text_retrieval_recall@1": 0.1}),
        _record("cap", "world:captions", {"exact_match": 0.03, "object_recall": 0.5, "hallucination_rate": 0.4}),
    ]
    table = results_table(records).splitlines()
    assert benchmark_order(["world:retrieval", "world:color", "world:captions"]) == \
        ["world:captions", "world:color", "world:retrieval"]
    assert table[0] == ("| model | world:captions exact | world:captions obj recall | world:captions halluc. "
                        "| world:color | world:retrieval |")
    # retrieval is the mean of both directions' recall@1, as in the run's report and its PGR
    assert headline(records[0]["metrics"]) == pytest.approx(0.3)
    assert table[2] == "| clip | - | - | - | 50.0 | 30.0 |"
    assert table[3] == "| cap | 3.0 | 50.0 | 40.0 | 25.0 | 10.0 |"


# --------------------------------------------------------------------------------------------
# Progress: tqdm on a terminal, plain lines off it, the parent's display for `mmw2s run`'s workers


def test_off_a_terminal_a_bar_is_plain_lines(capsys, monkeypatch):
    monkeypatch.setattr(console.LineBar, "every", 0.0)  # a line at every update
    with console.progress_bar(total=3, desc="train clip", unit="it") as bar:  # capsys: stderr is no tty
        assert isinstance(bar, console.LineBar)
        bar.update(2)
        bar.set_postfix(loss="2.31", refresh=False)
        bar.update(1)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("train clip: 2/3 it (67%)") and "loss=2.31" in lines[1]
    assert lines[-1].startswith("train clip: 3/3 it (100%)") and "done in" in lines[-1]


def test_a_workers_lines_and_bars_reach_the_parents_display(monkeypatch):
    import io
    import queue
    import types

    from mmw2s.experiment.display import StageDisplay

    stream = io.StringIO()
    with StageDisplay(types.SimpleNamespace(Queue=queue.Queue), stream=stream, tty=False, every=0.0) as display:
        monkeypatch.setattr(console, "_sink", display.queue)  # what attach_worker does in a worker
        writer = console._QueueWriter(display.queue, None)
        with console.stage_label("student_web"):
            bar = console.progress_bar(total=4, desc="train clip", unit="it")
            assert isinstance(bar, console.RemoteBar)
            writer.write("a library's bar 10%\ra library's bar 100%\nhalf a ")
            bar.update(4)
            bar.close()
            writer.write("line\n")
    out = stream.getvalue()
    assert "\r" not in out
    assert "[student_web] a library's bar 100%\n" in out and "10%" not in out
    assert "[student_web] half a line\n" in out
    assert "  [student_web] train clip: 4/4 it (100%)" in out and "done in" in out
    assert not display.bars  # closed bars are gone


def test_on_a_terminal_running_stages_are_one_live_region(monkeypatch):
    import io
    import queue
    import types

    from mmw2s.experiment.display import StageDisplay

    stream = io.StringIO()
    with StageDisplay(types.SimpleNamespace(Queue=queue.Queue), stream=stream, tty=True) as display:
        state = {"desc": "bootstrap", "n": 3, "total": 10, "unit": "img", "rate": 5.0, "postfix": "kept=50%",
                 "closed": False, "line": "bootstrap: 3/10 img"}
        display.handle(("bar", "1:1", "bootstrap", state))
        display.handle(("bar", "2:1", "weak_filter", {**state, "desc": "train clip"}))
        assert len(display.tasks) == 2  # one bar per running stage, in one rich Progress
        display.handle(("text", "weak_filter", "INFO mmw2s.train.loop: saved"))
        display.handle(("bar", "1:1", "bootstrap", {**state, "n": 10, "closed": True, "line": "bootstrap: done"}))
        assert list(display.tasks) == ["2:1"]
    out = stream.getvalue()
    assert "[weak_filter] INFO mmw2s.train.loop: saved" in out and "[bootstrap] bootstrap: done" in out


def test_hugging_face_bars_are_off_in_workers_and_off_a_terminal(monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # restored after the test
    try:
        console.quiet_library_bars()
        assert are_progress_bars_disabled() and not hf_logging.is_progress_bar_enabled()
    finally:
        enable_progress_bars()
        hf_logging.enable_progress_bar()
