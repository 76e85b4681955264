"""The LLaVA path end to end: `mmw2s train task=llava` (stages 1 and 2, resume, reload), VQA in
`mmw2s eval`, and the `pipeline: llava` experiment plan."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mmw2s.data_pipelines import ShardWriter, iter_samples
from mmw2s.data_pipelines.world import WorldConfig, shard_samples
from mmw2s.config import ConfigError, load_config
from mmw2s.evaluate.config import EvalConfig
from mmw2s.experiment.config import ExperimentConfig
from mmw2s.experiment.plan import plan
from mmw2s.commands import CONFIG_DIR
from mmw2s.train.config import TrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LLAVA_DEMO = CONFIG_DIR / "llava_demo.yaml"
TINY = ["llava.vision_source=timm", "llava.vision_tower=mmw2s_convnet_tiny", "llava.lm=llama-tiny",
        "llava.max_length=96", "llava.system_prompt=Answer.", "llava.image_size=32"]


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory) -> Path:
    """A `mmw2s synthesize` output (template backend) over two tiny shards of the world."""
    from mmw2s.synthesize.config import SynthesizeConfig
    from mmw2s.synthesize.run import run as synthesize

    root = tmp_path_factory.mktemp("llava")
    cfg = WorldConfig(out=str(root), image_size=32, seed=0)
    for index in range(2):
        with ShardWriter(root / "shards" / f"{index:05d}.tar") as writer:
            for sample in shard_samples(cfg, "clean", index, 12):
                writer.write(sample)
            writer.close()
    synthesize(SynthesizeConfig(input=str(root / "shards"), out=str(root / "syn"), progress=False))
    return root / "syn"


def train(data: Path, out: Path, *overrides: str):
    from mmw2s.train.loop import run

    base = [f"data={data}", f"out={out}", "task=llava", "steps=4", "batch_size=6", "lr=0.003",
            "warmup_steps=1", "log_every=1", "checkpoint_every=2", "workers=1", "shuffle_buffer=8"]
    return run(load_config(TrainConfig, None, base + TINY + list(overrides)))


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def answers(folder: Path, data: Path) -> list[str]:
    """Greedy answers of the student saved in `folder` to a few questions about training images."""
    from mmw2s.models.llava import LlavaStudent

    student = LlavaStudent.from_pretrained(folder)
    images = [s["image"] for _, s in zip(range(3), iter_samples(str(data / "images")))]
    questions = ["What color is the circle?", "How many objects are there?", "Where is the star?"]
    return student.generate(student.preprocess(images), questions, max_new_tokens=5)


@pytest.mark.slow
def test_llava_stages_train_resume_and_reload_with_identical_answers(synthesized, tmp_path):
    from mmw2s.train import loss_history
    from mmw2s.models.llava import LlavaStudent

    one = train(synthesized, tmp_path / "s1")
    assert one == tmp_path / "s1" / "final"
    first = LlavaStudent.from_pretrained(tmp_path / "s1" / "checkpoints" / "step_000002" / "model")
    stage1 = LlavaStudent.from_pretrained(one)
    # stage 1 trains the projector only: the LM and the vision tower are the step-2 ones
    for part in ("lm", "vision"):
        a, b = weights(getattr(first, part)), weights(getattr(stage1, part))
        assert all(torch.equal(a[k], b[k]) for k in a), part
    assert any(not torch.equal(a, b) for a, b in zip(weights(first.projector).values(),
                                                      weights(stage1.projector).values()))
    # the vocabulary covers the stage-2 conversations too (questions never appear in captions)
    assert {"how", "many", "where", "answer"} <= set(stage1.tokenizer.get_vocab())

    two = train(synthesized, tmp_path / "s2", "llava_stage=2", f"init_from={one}")
    stage2 = LlavaStudent.from_pretrained(two)
    assert stage2.tokenizer.get_vocab() == stage1.tokenizer.get_vocab()  # reused, not rebuilt
    lm1, lm2 = weights(stage1.lm), weights(stage2.lm)
    assert any(not torch.equal(lm1[k], lm2[k]) for k in lm1)  # stage 2 tunes the LM
    p1, p2 = weights(stage1.projector), weights(stage2.projector)
    assert all(not torch.equal(p1[k], p2[k]) for k in p1)  # ... and the projector: the image is seen
    v1, v2 = weights(stage1.vision), weights(stage2.vision)
    assert all(torch.equal(v1[k], v2[k]) for k in v1)  # the vision tower stays frozen
    expected = answers(two, synthesized)
    assert answers(two, synthesized) == expected  # reloading is deterministic

    # as if killed after the step-2 checkpoint: resume=latest finishes with the same model
    shutil.rmtree(tmp_path / "s2" / "final")
    shutil.rmtree(tmp_path / "s2" / "checkpoints" / "step_000004")
    resumed = train(synthesized, tmp_path / "s2", "llava_stage=2", f"init_from={one}", "resume=latest")
    assert [s for s, _ in loss_history(tmp_path / "s2")] == [1, 2, 3, 4]
    assert answers(resumed, synthesized) == expected
    again = weights(LlavaStudent.from_pretrained(resumed))
    assert all(torch.allclose(again[k], w, atol=1e-6) for k, w in weights(stage2).items())


def test_stage_2_conversations_put_the_image_where_the_record_has_it(synthesized):
    import random

    from mmw2s.train.config import TextConfig
    from mmw2s.train.conversations import ConversationSelector
    from mmw2s.models.llava import IMAGE_TOKEN_ID, LlavaStudent
    from mmw2s.models.llava_spec import LlavaSpec

    selector = ConversationSelector(TextConfig(), synthesized / "instructions", ["conversation"])
    sample = next(iter_samples(str(synthesized / "images")))
    turns, _ = selector(sample, random.Random(0))
    assert turns[0][0].startswith("<image>") and not any("<image>" in q for q, _ in turns[1:])
    student = LlavaStudent.build(LlavaSpec(vision_tower="mmw2s_convnet_tiny", image_size=32, max_length=200,
                                           system_prompt="Answer."), [t for turn in turns for t in turn])
    ids = student.encode_conversation(turns)["input_ids"]
    assert ids.count(IMAGE_TOKEN_ID) == student.num_image_tokens  # the LM sees the image


def test_stage_2_without_records_fails_clearly(tmp_path):
    from mmw2s.errors import StageError

    with pytest.raises(StageError, match="instruction records"):
        train(tmp_path, tmp_path / "out", "llava_stage=2")


def test_llava_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="llava_stage"):
        load_config(TrainConfig, None, ["data=x", "out=y", "task=llava", "llava_stage=3"])
    with pytest.raises(ConfigError, match="instruction_kinds"):
        load_config(TrainConfig, None, ["data=x", "out=y", "task=llava", "instruction_kinds=[chat]"])
    with pytest.raises(ConfigError, match="loss.name=contrastive"):
        load_config(TrainConfig, None, ["data=x", "out=y", "task=llava", "loss.name=contrastive"])


# --------------------------------------------------------------------------------------------
# VQA in `mmw2s eval`


@pytest.mark.slow
def test_vqa_eval_writes_acc_for_a_llava_student_and_a_captioner(tmp_path):
    from mmw2s.data_pipelines.benchmarks import load_world_test
    from mmw2s.data_pipelines.world import generate_world
    from mmw2s.data_pipelines.world.spec import SplitConfig
    from mmw2s.data_pipelines.vqa import QUESTION_TYPES
    from mmw2s.evaluate import run as R
    from mmw2s.models.captioners.build import build_captioner
    from mmw2s.models.dual_encoders import build_dual_encoder
    from mmw2s.models.llava import LlavaStudent
    from mmw2s.models.llava_spec import LlavaSpec
    from mmw2s.models.specs import CaptionerSpec, DualEncoderSpec

    generate_world(WorldConfig(out=str(tmp_path / "world"), workers=1, image_size=32, clean=SplitConfig(0),
                               web=SplitConfig(0), test=SplitConfig(40)))
    captions = [it["gold_caption"] for it in load_world_test(tmp_path / "world")]
    build_captioner(CaptionerSpec(name="blip-tiny", image_size=32), captions).save(tmp_path / "cap")
    build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny", image_size=32)).save(tmp_path / "clip")
    spec = LlavaSpec(vision_tower="mmw2s_convnet_tiny", image_size=32, max_length=96, system_prompt="Answer.")
    LlavaStudent.build(spec, captions).save_pretrained(tmp_path / "llava")
    cfg = load_config(EvalConfig, None, [
        f"out={tmp_path / 'out'}", f"world={tmp_path / 'world'}", "benchmarks=[world:vqa, world:color]",
        "vqa.per_type=4", "vqa.max_new_tokens=3", "batch_size=8", "pairwise.caption_max_new_tokens=8",
        f"models=[{{name: llava, kind: llava, path: {tmp_path / 'llava'}}}, "
        f"{{name: cap, kind: captioner, path: {tmp_path / 'cap'}}}, "
        f"{{name: clip, kind: dual_encoder, path: {tmp_path / 'clip'}}}]"])
    summary = R.run(cfg)
    for model in ("llava", "cap"):
        record = json.loads(R.result_path(tmp_path / "out", model, "world:vqa").read_text())
        assert {"dataset", "model", "pretrained", "task", "metrics"} <= set(record)
        assert record["task"] == "visual_question_answering" and record["dataset"] == "world:vqa"
        metrics = record["metrics"]
        assert set(metrics) == {"acc", *(f"acc_{t}" for t in QUESTION_TYPES)}
        assert 0.0 <= metrics["acc"] <= 1.0
        assert record["details"]["questions"] == 4 * len(QUESTION_TYPES)
        assert {"question", "answer", "prediction"} <= set(record["details"]["examples"][0])
    # pairs that make no sense are recorded as skipped, with the reason
    assert "cannot answer questions" in summary["clip"]["world:vqa"]["skipped"]
    assert "no image-text score" in summary["llava"]["world:color"]["skipped"]
    assert "| world:vqa |" in (tmp_path / "out" / "results.md").read_text()


def test_captioner_answers_from_its_own_caption():
    from mmw2s.evaluate.adapters import CaptionerScorer

    class Fixed(CaptionerScorer):
        def __init__(self) -> None:
            self.calls = 0

        def caption(self, images):
            self.calls += 1
            return ["a red circle to the left of a blue square"] * len(images)

    scorer, image = Fixed(), object()
    got = scorer.answer([image, image, image], ["What color is the circle?", "How many squares are there?",
                                                "Is the square to the left of the circle?"])
    assert got == ["red", "1", "no"] and scorer.calls == 1  # one caption per distinct image


# --------------------------------------------------------------------------------------------
# The experiment plan


def test_llava_demo_plans_both_stages_per_student_and_a_vqa_eval():
    steps = plan(load_config(ExperimentConfig, LLAVA_DEMO, ["out=/tmp/x"]))[0]
    names = [s.name for s in steps]
    by_name = {s.name: s for s in steps}
    order = ["world", "weak_captioner", "bootstrap", "synthesize_bootstrapped",
             "student_bootstrapped_stage1", "student_bootstrapped", "eval"]
    assert [n for n in names if n in order] == order
    gold_world = by_name["world_gold"].cfg
    assert gold_world.seed == by_name["world"].cfg.seed and sum(gold_world.noise.fractions().values()) == 1.0
    assert gold_world.noise.fractions()["correct"] == 1.0  # the same web images, gold alt-text
    assert by_name["synthesize_gold"].cfg.input == str(Path(gold_world.out) / "web")
    assert by_name["synthesize_bootstrapped"].cfg.input == str(Path(by_name["bootstrap"].cfg.out) / "shards")
    for student in ("bootstrapped", "gold"):
        one, two = by_name[f"student_{student}_stage1"].cfg, by_name[f"student_{student}"].cfg
        assert (one.task, one.llava_stage, two.llava_stage) == ("llava", 1, 2)
        assert two.init_from == str(Path(one.out) / "final") and one.data == two.data
        assert not one.reads_truth and not two.reads_truth
    towers = {by_name[f"student_{s}_stage1"].cfg.llava.vision_tower for s in ("bootstrapped", "gold")}
    assert len(towers) == 1 and towers.pop().startswith("local-dir:")  # one shared tower
    same_budget = lambda s: (s.steps, s.batch_size, s.lr)  # noqa: E731
    assert same_budget(by_name["student_gold"].cfg) == same_budget(by_name["student_bootstrapped"].cfg)
    models = {m.name: m.kind for m in by_name["eval"].cfg.models}
    assert models == {"weak_captioner": "captioner", "student_bootstrapped": "llava", "student_gold": "llava"}
    assert "world:vqa" in by_name["eval"].cfg.benchmarks


@pytest.mark.parametrize("override,message", [
    ("llava_student.stage2.lrr=0.1", "unknown key 'llava_student.stage2.lrr'"),
    ("llava_student.stage3.steps=5", "unknown key 'llava_student.stage3'"),
    ("synthesize.backend=gpt", "synthesize.backend"),
    ("llava_student.stage1.llava.lm_name=x", "llava_student.stage1.llava.lm_name"),
])
def test_a_bad_llava_key_fails_before_any_work_naming_it(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(ExperimentConfig, LLAVA_DEMO, [f"out={tmp_path}", override])
    assert str(LLAVA_DEMO) in str(err.value)
    assert not any(tmp_path.iterdir())
