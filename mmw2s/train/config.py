"""Config schema of `mmw2s train` (plain dataclasses; no torch import, `mmw2s --help` loads it)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Optional

from mmw2s.data_pipelines.instructions import KINDS
from mmw2s.models.llava_spec import LlavaSpec
from mmw2s.models.specs import CaptionerSpec, DualEncoderSpec


@dataclass
class TextConfig:
    """Which caption of each sample to train on (see `mmw2s.train.texts`)."""

    # `dataclasses.field` in full here: the key `field` below shadows the name inside the class.
    source: Literal["txt", "json", "mix", "gold"] = dataclasses.field(default="txt", metadata={
        "help": "txt: the shard's caption; json: the JSON path `field`; mix: web and synthetic "
                "captions of a bootstrapped shard at `mix_synthetic_ratio`; gold: the synthetic "
                "world's truth caption (gold-ceiling runs only, needs reads_truth: true)"})
    field: str = dataclasses.field(default="mmw2s.chosen", metadata={
        "help": "dotted JSON path of the caption for source=json (never under `truth`)"})
    mix_synthetic_ratio: float = dataclasses.field(default=0.5, metadata={
        "help": "source=mix: probability of drawing a synthetic caption rather than the web one"})
    mix_kept_only: bool = dataclasses.field(default=True, metadata={
        "help": "source=mix: draw only from captions the bootstrap filter kept"})
    weight_field: Optional[str] = dataclasses.field(default=None, metadata={
        "help": "dotted JSON path of a per-sample filter score used by loss.name=weighted "
                "(e.g. mmw2s.chosen_score); with source=mix the drawn caption's score is used"})

    def validate(self) -> None:
        """Refuse JSON paths into the evaluation-only truth block and ratios outside [0, 1]."""
        for name in ("field", "weight_field"):
            path = getattr(self, name)
            if path and path.split(".")[0] == "truth":
                raise ValueError(f"text.{name}={path!r} reads the evaluation-only truth block; "
                                 "use text.source=gold (with reads_truth: true) for a gold ceiling")
        if not 0.0 <= self.mix_synthetic_ratio <= 1.0:
            raise ValueError(f"text.mix_synthetic_ratio must be in [0, 1], got {self.mix_synthetic_ratio}")


@dataclass
class LossConfig:
    """The training loss (see `models.losses` for what each does and where it comes from)."""

    name: Optional[Literal["lm", "contrastive", "weighted", "aux_confidence"]] = field(
        default=None, metadata={
            "help": "lm (captioner), contrastive, weighted (filter-score sample weights) or "
                    "aux_confidence (Burns et al. 2023, clip only); null: lm for captioner, "
                    "contrastive for clip"})
    aux_coef: float = field(default=0.5, metadata={
        "help": "aux_confidence: final weight of the student's hardened predictions in the target"})
    aux_warmup_frac: float = field(default=0.2, metadata={
        "help": "aux_confidence: fraction of the steps over which the weight ramps up from 0"})

    duplicates: Literal["distinct", "multi_positive"] = field(default="distinct", metadata={
        "help": "clip: identical captions in a batch. distinct: each pair its own class (CLIP's "
                "one-hot target, which pushes apart identical captions); multi_positive: they are "
                "shared positives (the target spreads over every copy; models/losses.py)"})
    gather_ranks: bool = field(default=True, metadata={
        "help": "clip with several processes: contrast against the embeddings of every rank "
                "(the global batch, as open_clip does) rather than the local batch only"})

    def validate(self) -> None:
        """Check the aux_confidence knobs."""
        if not 0.0 <= self.aux_coef <= 1.0:
            raise ValueError(f"loss.aux_coef must be in [0, 1], got {self.aux_coef}")
        if not 0.0 <= self.aux_warmup_frac <= 1.0:
            raise ValueError(f"loss.aux_warmup_frac must be in [0, 1], got {self.aux_warmup_frac}")


@dataclass
class TrainConfig:
    """`mmw2s train`: a captioner (LM loss), a CLIP-style dual encoder (contrastive) or a
    LLaVA-style student (LM loss on answers, stage 1 or 2) on shards."""

    data: str = field(metadata={"help": "training shards: brace pattern, glob, folder or list (::)"})
    out: str = field(metadata={"help": "run folder: checkpoints/, final/, metrics.jsonl, config.yaml"})
    task: Literal["captioner", "clip", "llava"] = field(default="clip", metadata={
        "help": "captioner: language-model loss; clip: contrastive dual encoder; llava: vision "
                "tower + projector + causal LM (see llava_stage)"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps (every rank runs exactly these)"})
    batch_size: int = field(default=64, metadata={"help": "samples per rank per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=50, metadata={"help": "linear warm-up, then cosine decay to 0"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: none)"})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={
        "help": "accelerate mixed precision (bf16 works on CPU; fp16 needs a GPU)"})
    workers: int = field(default=2, metadata={"help": "DataLoader worker processes per rank"})
    shuffle_buffer: int = field(default=256, metadata={"help": "samples in the shuffle buffer"})
    replay_mb: int = field(
        default=1024, metadata={"help": "MB of decoded samples each data worker keeps to replay on later passes "
                                        "over its shards instead of reading them again (0: read every pass)"})
    prefetch_factor: int = field(default=4, metadata={
        "help": "batches each DataLoader worker prepares ahead (workers > 0)"})
    pin_memory: Optional[bool] = field(default=None, metadata={
        "help": "page-locked batches for faster, asynchronous host-to-GPU copies; null: on with CUDA"})
    persistent_workers: bool = field(default=False, metadata={
        "help": "keep DataLoader workers alive between passes over the loader (workers > 0)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model's forward (a GPU speed-up after a compile warm-up of the "
                "first steps; checkpoints are the same as without)"})
    seed: int = field(default=0, metadata={"help": "seed of weights, data order and augmentations"})
    checkpoint_every: int = field(default=200, metadata={"help": "checkpoint every N steps (0: only final)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept (0: all)"})
    resume: Optional[str] = field(default="latest", metadata={
        "help": "latest: continue from the newest checkpoint in out/ (a fresh start when there is "
                "none); a checkpoint folder; null: a fresh start, refused when out/ has checkpoints"})
    max_nonfinite_in_a_row: int = field(default=5, metadata={
        "help": "stop with TrainingDiverged after this many non-finite steps in a row"})
    log_every: int = field(default=10, metadata={"help": "steps between metrics lines"})
    tokenizer_captions: int = field(default=20000, metadata={
        "help": "captioner from scratch: at most this many training captions build its tokenizer"})
    reads_truth: bool = field(default=False, metadata={
        "help": "must be true exactly when text.source=gold: the run reads the evaluation-only "
                "truth block (gold-ceiling setting); recorded in config.yaml and metrics"})
    text: TextConfig = field(default_factory=TextConfig, metadata={"help": "which caption to train on"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "training loss"})
    captioner: CaptionerSpec = field(default_factory=CaptionerSpec, metadata={
        "help": "task=captioner: the captioner to build (registered name, hub id or folder)"})
    dual_encoder: DualEncoderSpec = field(default_factory=DualEncoderSpec, metadata={
        "help": "task=clip: the dual encoder to build (open_clip architecture + pretrained)"})
    llava_stage: Literal[1, 2] = field(default=1, metadata={
        "help": "task=llava: 1 = projector pre-training on image-caption pairs (vision frozen, LM "
                "frozen unless train_lm); 2 = projector + LM instruction-tuned on `mmw2s synthesize` records"})
    train_vision: bool = field(default=False, metadata={
        "help": "task=llava: also train the vision tower (LLaVA keeps it frozen)"})
    train_lm: bool = field(default=False, metadata={
        "help": "task=llava stage 1: also train the LM on the captions. LLaVA freezes its pretrained "
                "LM here; a from-scratch LM has no language to keep, and captioning is where it "
                "learns to read the image tokens (stage 2 always trains the LM)"})
    init_from: Optional[str] = field(default=None, metadata={
        "help": "task=llava: a saved student folder to start from (stage 2: the stage-1 final/ "
                "folder, whose tokenizer is reused); null: build `llava` from its spec"})
    instructions: Optional[str] = field(default=None, metadata={
        "help": "task=llava stage 2: folder of SHARD.jsonl LLaVA records; null: the "
                "instructions/ folder of a `mmw2s synthesize` output given as data"})
    instruction_kinds: list[str] = field(default_factory=lambda: list(KINDS),
                                         metadata={"help": "task=llava stage 2: record kinds trained on"})
    llava: LlavaSpec = field(default_factory=LlavaSpec, metadata={
        "help": "task=llava: the student to build when init_from is null (vision tower, projector, LM)"})

    @property
    def loss_name(self) -> str:
        """The loss actually used (`loss.name`, or the task's default)."""
        return self.loss.name or ("contrastive" if self.task == "clip" else "lm")

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent setting."""
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                    "log_every": self.log_every, "max_nonfinite_in_a_row": self.max_nonfinite_in_a_row,
                    "prefetch_factor": self.prefetch_factor}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("warmup_steps", "workers", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if (self.text.source == "gold") != self.reads_truth:
            raise ValueError(
                "text.source=gold reads the evaluation-only truth block and is allowed only for the "
                "gold-ceiling setting: set both text.source=gold and reads_truth=true, or neither "
                f"(got text.source={self.text.source}, reads_truth={self.reads_truth})")
        allowed = {"captioner": ("lm", "weighted"), "llava": ("lm",),
                   "clip": ("contrastive", "weighted", "aux_confidence")}[self.task]
        if self.loss_name not in allowed:
            raise ValueError(f"loss.name={self.loss_name} is not available for task={self.task} "
                             f"(choose from {', '.join(allowed)})")
        if self.loss.duplicates != "distinct" and self.task != "clip":
            raise ValueError(f"loss.duplicates={self.loss.duplicates} applies to the contrastive losses of "
                             f"task=clip, not to task={self.task}")
        if self.resume not in (None, "latest") and not self.resume:
            raise ValueError("resume must be null, 'latest' or a checkpoint folder")
        if self.task == "llava":
            self._validate_llava()

    def _validate_llava(self) -> None:
        unknown = [k for k in self.instruction_kinds if k not in KINDS]
        if unknown or not self.instruction_kinds:
            raise ValueError(f"instruction_kinds must be a non-empty list of {list(KINDS)}, "
                             f"got {self.instruction_kinds}")
        if self.llava_stage == 2 and self.reads_truth:
            raise ValueError("llava_stage=2 trains on instruction records, not on text.source=gold: "
                             "synthesize the gold ceiling's records from gold captions instead")
