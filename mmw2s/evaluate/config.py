"""Config schema of `mmw2s eval` (kept light: no torch import, `mmw2s --help` loads it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from mmw2s.models.specs import CaptionerSpec, DualEncoderSpec, ItmSpec

MODEL_KINDS = ("dual_encoder", "captioner", "filter", "llava")


@dataclass
class ModelEntry:
    """One model of the results table: a dual encoder, a captioner, an ITM filter or a LLaVA student."""

    name: str = field(metadata={"help": "label in result files and tables (e.g. weak_captioner, student)"})
    kind: Literal["dual_encoder", "captioner", "filter", "llava"] = field(
        metadata={"help": "dual_encoder: cosine of embeddings; captioner: log-likelihood of the text "
                          "given the image, plus greedy captions (VQA: answers read off them); "
                          "filter: BLIP ITM/ITC score of each pair; llava: a LLaVA-style student "
                          "(VQA only: generated answers)"})
    path: Optional[str] = field(
        default=None, metadata={"help": "a saved model: captioner/filter/llava folder, or dual-encoder "
                                        "checkpoint (same as spec.name / spec.pretrained / 'local-dir:' "
                                        "in the spec; this wins when both are given)"})
    dual_encoder: DualEncoderSpec = field(
        default_factory=DualEncoderSpec, metadata={"help": "the open_clip model when kind=dual_encoder"})
    captioner: CaptionerSpec = field(
        default_factory=CaptionerSpec, metadata={"help": "the captioner when kind=captioner"})
    filter: ItmSpec = field(default_factory=ItmSpec, metadata={"help": "the BLIP ITM model when kind=filter"})
    training_data: Optional[str] = field(default=None, metadata={
        "help": "the `mmw2s bootstrap` run folder that made this model's training data: each result then "
                "records whether that data was decontaminated against the benchmark (its curation index "
                "checked the benchmark and curation.action dropped the copies); null: not known"})

    def validate(self) -> None:
        """Raise ValueError for a name unusable in file names."""
        if not self.name or any(c in self.name for c in "/\\ ") or "__" in self.name:
            raise ValueError(f"model name {self.name!r} must be non-empty, without '/', spaces or '__' "
                             "(it keys result files MODEL__BENCHMARK.json)")


@dataclass
class PairwiseConfig:
    """Limits for pairwise scorers (captioners, ITM), which score every image-text pair."""

    max_templates: int = field(
        default=4, metadata={"help": "prompts per class scored by a pairwise scorer (evenly spread "
                                     "over the benchmark's templates); dual encoders use all"})
    retrieval_images: int = field(
        default=100, metadata={"help": "retrieval with a pairwise scorer runs on the first N images "
                                       "and their captions (0: all, costly: N x ~3N pairs)"})
    length_norm: bool = field(
        default=True, metadata={"help": "captioner score = mean log-likelihood per token (True) or "
                                        "the sum over tokens (False)"})
    caption_max_new_tokens: int = field(default=30, metadata={"help": "longest greedy caption in tokens"})
    text_chunk: int = field(
        default=2048, metadata={"help": "image-text pairs per forward pass of a pairwise scorer (memory)"})

    def validate(self) -> None:
        """Raise ValueError for non-positive limits."""
        if self.max_templates < 1 or self.retrieval_images < 0 or self.text_chunk < 1:
            raise ValueError("pairwise.max_templates and text_chunk must be >= 1, retrieval_images >= 0")


@dataclass
class VqaConfig:
    """The `world:vqa` suite (`data_pipelines.vqa`) and how models answer it."""

    per_type: int = field(default=300, metadata={
        "help": "questions per type (color, shape, count, position, relation), balanced over answers"})
    seed: int = field(default=0, metadata={"help": "seed of the question draw"})
    max_new_tokens: int = field(default=8, metadata={"help": "longest generated answer (llava) in tokens"})

    def validate(self) -> None:
        """Raise ValueError for sizes that cannot run."""
        if self.per_type < 1 or self.max_new_tokens < 1:
            raise ValueError("vqa.per_type and vqa.max_new_tokens must be >= 1")


@dataclass
class CaptioningConfig:
    """The ``captioning`` task (COCO caption metrics, CLIPScore, CHAIR): decoding and scorers."""

    method: Literal["greedy", "beam", "nucleus"] = field(
        default="beam", metadata={"help": "decoding of the one caption per image (captioning papers: beam)"})
    num_beams: int = field(default=3, metadata={"help": "beam search: beams"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling: smallest token set of this mass"})
    max_new_tokens: int = field(default=30, metadata={"help": "longest caption in tokens"})
    min_new_tokens: int = field(default=5, metadata={"help": "shortest caption in tokens"})
    seed: int = field(default=0, metadata={"help": "seed of sampled decoding (one per chunk: seed + chunk)"})
    chunk_size: int = field(
        default=500, metadata={"help": "images per resumable chunk: each chunk's captions are written when done, "
                                       "and a restarted eval skips finished chunks"})
    clip: Optional[DualEncoderSpec] = field(
        default_factory=lambda: DualEncoderSpec(arch="ViT-B-32", pretrained="openai"),
        metadata={"help": "open_clip model of CLIPScore / RefCLIPScore (Hessel et al. used ViT-B/32 "
                          "openai); null: no CLIPScore"})
    clip_path: Optional[str] = field(
        default=None, metadata={"help": "a saved dual-encoder folder for CLIPScore instead of clip.*"})
    clip_prefix: str = field(default="A photo depicts ",
                             metadata={"help": "text put before each caption for CLIPScore (Hessel et al.'s)"})
    chair_synonyms: Optional[str] = field(
        default=None, metadata={"help": "CHAIR synonym list ('category, synonym, ...' per line); null: the COCO "
                                        "list shipped with mmw2s (data_pipelines/chair_coco_synonyms.txt)"})
    spice: bool = field(default=True, metadata={"help": "compute SPICE when Java and its CoreNLP jars are present"})

    def validate(self) -> None:
        """Raise ValueError for settings that cannot decode."""
        if self.chunk_size < 1 or self.num_beams < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("captioning: need chunk_size >= 1, num_beams >= 1, 0 <= min_new_tokens <= max_new_tokens")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"captioning.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class EvalConfig:
    """`mmw2s eval`: every model on every benchmark, one CLIP_benchmark-style JSON per pair."""

    out: str = field(metadata={"help": "output folder: MODEL__BENCHMARK.json, results.jsonl, summary.json, "
                                       "results.md"})
    models: list[ModelEntry] = field(
        default_factory=list, metadata={"help": "models to evaluate (name, kind, path and/or spec)"})
    benchmarks: list[str] = field(
        default_factory=lambda: ["world:color", "world:shape", "world:size", "world:position",
                                 "world:count", "world:relation", "world:retrieval", "world:captions"],
        metadata={"help": "world:<color|shape|size|position|count|relation|retrieval|captions|captioning|vqa>, "
                          "wds:/clip_benchmark/folder, imagefolder:/folder; captioning (COCO metrics): "
                          "coco:ANNOTATIONS.json[:IMAGE_DIR], wds-captions:/clip_benchmark/folder"})
    world: Optional[str] = field(default=None, metadata={"help": "world folder (its test/ split) for world:* "
                                                                 "benchmarks"})
    batch_size: int = field(default=64, metadata={"help": "images per forward pass"})
    device: str = field(default="auto", metadata={"help": "auto (cuda when available), cpu or cuda[:N]"})
    recall_k: list[int] = field(default_factory=lambda: [1, 5, 10], metadata={"help": "k of retrieval recall@k"})
    limit: Optional[int] = field(default=None, metadata={"help": "at most this many examples per benchmark "
                                                                 "(smoke runs; null: all)"})
    overwrite: bool = field(default=False, metadata={"help": "redo results whose JSON exists"})
    retrieval_images: Optional[int] = field(
        default=None, metadata={"help": "every model's retrieval runs on the first N images and their "
                                        "captions, so that dual encoders and pairwise scorers stand in one "
                                        "table (null: all images; pairwise scorers then use "
                                        "pairwise.retrieval_images)"})
    retrieval_positives: Literal["own", "shared"] = field(
        default="own", metadata={"help": "own: a caption is a hit only for its own image (CLIP_benchmark's "
                                         "rule); shared: also for every image with the identical caption"})
    pairwise: PairwiseConfig = field(default_factory=PairwiseConfig,
                                     metadata={"help": "limits for captioner / ITM scoring"})
    vqa: VqaConfig = field(default_factory=VqaConfig, metadata={"help": "the world:vqa suite"})
    captioning: CaptioningConfig = field(
        default_factory=CaptioningConfig, metadata={"help": "the captioning task (world:captioning, coco:..., "
                                                            "wds-captions:...): decoding, CLIPScore model, CHAIR"})

    def validate(self) -> None:
        """Raise ValueError for duplicate model names or settings no run can use."""
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique, repeated: {dupes}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.retrieval_images is not None and self.retrieval_images < 1:
            raise ValueError(f"retrieval_images must be >= 1 or null, got {self.retrieval_images}")
        if any(k < 1 for k in self.recall_k):
            raise ValueError(f"recall_k must be positive, got {self.recall_k}")
        if any(b.startswith("world:") for b in self.benchmarks) and not self.world:
            raise ValueError("world:* benchmarks need world=DIR (the folder `mmw2s world` wrote)")
