"""Config schema of `mmw2s bootstrap` (kept light: no torch import, `mmw2s --help` loads it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from mmw2s.models.captioners.protocol import read_prompt
from mmw2s.models.specs import CaptionerSpec, DualEncoderSpec, EndpointSpec, ItmSpec

from mmw2s.bootstrap.curation_config import CurationConfig
from mmw2s.resources import shipped


@dataclass
class DecodingConfig:
    """How the captioner writes synthetic captions (BLIP CapFilt: nucleus sampling)."""

    method: Literal["nucleus", "beam", "greedy"] = field(
        default="nucleus", metadata={"help": "nucleus sampling (CapFilt's choice: diverse captions), "
                                             "beam search or greedy decoding"})
    num_captions: int = field(default=3, metadata={"help": "synthetic captions per image; 0: filter the web "
                                                           "captions only (no captioner is loaded)"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling: smallest token set of this mass"})
    num_beams: int = field(default=3, metadata={"help": "beam search: beams (>= num_captions)"})
    max_new_tokens: int = field(default=30, metadata={"help": "longest caption in tokens"})
    min_new_tokens: int = field(default=5, metadata={"help": "shortest caption in tokens"})

    def validate(self) -> None:
        """Raise ValueError for settings HF `generate` would reject later, mid-run."""
        if self.num_captions < 0:
            raise ValueError(f"num_captions must be >= 0, got {self.num_captions}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.method == "beam" and self.num_beams < self.num_captions:
            raise ValueError(f"beam search returns at most num_beams={self.num_beams} captions, "
                             f"asked for num_captions={self.num_captions}")
        if self.method == "greedy" and self.num_captions > 1:
            raise ValueError("greedy decoding gives one caption per image: set num_captions=1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"need 0 <= min_new_tokens <= max_new_tokens, got "
                             f"{self.min_new_tokens} and {self.max_new_tokens}")


@dataclass
class FilterConfig:
    """The filter that scores image-caption pairs (higher = better match)."""

    kind: Literal["clip", "blip"] = field(
        default="blip", metadata={"help": "clip: image-text cosine of an open_clip model (CLIP score); "
                                          "blip: a BLIP ITM model, scoring with itm.mode (itm: match "
                                          "probability, BLIP keeps >= 0.5; itc: contrastive cosine)"})
    dual_encoder: DualEncoderSpec = field(
        default_factory=DualEncoderSpec, metadata={"help": "the open_clip model when kind=clip"})
    itm: ItmSpec = field(default_factory=ItmSpec, metadata={"help": "the BLIP ITM model when kind=blip"})

    # `kind` only picks which of the two spec sections is read, here and in `score_range`: the config
    # must say so before any model loads (fingerprint, threshold ranges). Past `spec()` the bootstrap
    # sees one `models.CaptionFilter` and never asks its kind.
    def spec(self) -> DualEncoderSpec | ItmSpec:
        """The spec section `kind` selects (the other one is ignored)."""
        return self.dual_encoder if self.kind == "clip" else self.itm

    def validate(self) -> None:
        """Raise ValueError for an unknown ITM scoring mode."""
        if self.kind == "blip" and self.itm.mode not in ("itm", "itc"):
            raise ValueError(f"itm.mode must be 'itm' or 'itc', got {self.itm.mode!r}")


@dataclass
class ThresholdConfig:
    """What score a caption needs to be kept; web and synthetic captions have their own."""

    mode: Literal["absolute", "top_fraction"] = field(
        default="absolute", metadata={"help": "absolute values, or keep the top fraction of scores as "
                                              "calibrated on the input's first samples"})
    web: float = field(default=0.5, metadata={"help": "absolute: web caption kept if score >= this "
                                                      "(BLIP ITM: 0.5)"})
    synthetic: float = field(default=0.5, metadata={"help": "absolute: synthetic caption kept if score >= this"})
    web_fraction: float = field(default=0.5, metadata={"help": "top_fraction: fraction of web captions kept"})
    synthetic_fraction: float = field(default=0.5, metadata={"help": "top_fraction: fraction of synthetic captions kept"})
    calibration_samples: int = field(default=256, metadata={"help": "top_fraction: samples to calibrate on"})

    def validate(self, scores: tuple[float, float] = (-1.0, 1.0)) -> None:
        """Raise ValueError for absolute thresholds that are not finite or outside the filter's
        `scores` range (a threshold no score can reach keeps nothing, silently), for fractions
        outside (0, 1], or for no calibration sample."""
        low, high = scores
        for name in ("web", "synthetic"):
            value = getattr(self, name)
            if self.mode == "absolute" and not low <= value <= high:  # NaN fails every comparison
                raise ValueError(f"thresholds.{name}={value} is outside the filter's score range [{low:g}, {high:g}]")
        for name in ("web_fraction", "synthetic_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.calibration_samples < 1:
            raise ValueError(f"calibration_samples must be >= 1, got {self.calibration_samples}")


@dataclass
class SelectionConfig:
    """Which kept caption becomes the training caption (`.txt`)."""

    choose: Literal["web_first", "best", "synthetic_first"] = field(
        default="web_first", metadata={"help": "web_first: the web caption when kept, else the best kept "
                                               "synthetic one; best: the highest-scoring kept caption; "
                                               "synthetic_first: the best kept synthetic, else web"})
    nothing_kept: Literal["drop", "flag"] = field(
        default="drop", metadata={"help": "a sample with no kept caption is dropped (counted), or written "
                                          "with its web caption as .txt (every sample a trainer reads has "
                                          "one) and mmw2s.nothing_kept=true, chosen=null in its .json"})


@dataclass
class RayConfig:
    """engine=ray: a pool of Ray actors, each holding the models once, one input shard per task."""

    address: str = field(default="local", metadata={"help": "local: start Ray on this machine; auto: join "
                                                             "the cluster `ray start` made; ray://HOST:10001"})
    concurrency: int = field(default=2, metadata={"help": "actors in the pool (each loads the models once)"})
    num_gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs per actor (0: CPU actors; 0.5: two a GPU)"})
    num_cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs per actor: its torch threads and "
                                                                       "data-loader workers"})
    max_retries: int = field(default=3, metadata={"help": "retries of a shard whose actor died (the actor "
                                                          "is restarted, its models reloaded)"})

    def validate(self) -> None:
        """Raise ValueError for a pool that cannot start."""
        if self.concurrency < 1 or self.max_retries < 0:
            raise ValueError(f"ray.concurrency must be >= 1 and ray.max_retries >= 0, got "
                             f"{self.concurrency} and {self.max_retries}")
        if self.num_gpus_per_worker < 0 or self.num_cpus_per_worker <= 0:
            raise ValueError("ray.num_gpus_per_worker must be >= 0 and ray.num_cpus_per_worker > 0")


@dataclass
class RewriteConfig:
    """LaCLIP-style rewrites of each web caption by an LLM behind an OpenAI-compatible endpoint: a third
    caption source, scored and kept by the filter like synthetic captions (`source: rewrite`)."""

    num_rewrites: int = field(default=0, metadata={"help": "rewrites per web caption; 0: no rewriting"})
    prompt_file: str = field(default="configs/prompts/rewrite/laclip.yaml", metadata={
        "help": "instruction + pool of (caption, rewrite) exemplar pairs, YAML"})
    exemplars: int = field(default=3, metadata={"help": "exemplar pairs in context per request (LaCLIP: k), drawn "
                                                        "from the pool with the sample's seed"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature; 0: greedy"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(default=77, metadata={"help": "longest rewrite in tokens"})
    model: Optional[str] = field(default=None, metadata={
        "help": "the LLM; null: the endpoint captioner's own model and server"})
    endpoint: EndpointSpec = field(default_factory=EndpointSpec, metadata={
        "help": "the server when rewrite.model is set (same keys as captioner.endpoint)"})

    def validate(self) -> None:
        """Raise ValueError for rewrites that cannot run or have no prompt file."""
        from pathlib import Path

        if self.num_rewrites < 0 or self.exemplars < 0 or self.max_new_tokens < 1 or self.temperature < 0:
            raise ValueError("rewrite.num_rewrites and exemplars must be >= 0, max_new_tokens >= 1, temperature >= 0")
        if self.num_rewrites == 0:
            return
        if self.temperature == 0 and self.num_rewrites > 1:
            raise ValueError("greedy rewriting (temperature 0) gives one rewrite per caption: set num_rewrites=1")
        self.prompt_file = shipped(self.prompt_file)  # the default names a file mmw2s ships
        if not Path(self.prompt_file).is_file():
            raise ValueError(f"rewrite.prompt_file={self.prompt_file}: no such file (a relative path is read from "
                             f"the current directory, {Path.cwd()})")


@dataclass
class BootstrapConfig:
    """`mmw2s bootstrap`: CapFilt over webdataset shards."""

    input: str = field(metadata={"help": "input shards: brace pattern, glob, folder, pipe: or fsspec URL"})
    out: str = field(metadata={"help": "run folder: shards/, config.yaml, thresholds.json, summary.json"})
    captioner: CaptionerSpec = field(default_factory=CaptionerSpec,
                                     metadata={"help": "the captioner (HF id, local folder, or a saved one)"})
    decoding: DecodingConfig = field(default_factory=DecodingConfig, metadata={"help": "decoding"})
    filter: FilterConfig = field(default_factory=FilterConfig, metadata={"help": "the filter"})
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig, metadata={"help": "thresholds"})
    selection: SelectionConfig = field(default_factory=SelectionConfig, metadata={"help": "selection"})
    seed: int = field(default=0, metadata={"help": "seed of nucleus sampling (per batch: seed, shard, key)"})
    batch_size: int = field(default=32, metadata={"help": "images per forward pass; batches never cross "
                                                          "shards (part of what fixes the captions)"})
    workers: int = field(default=2, metadata={"help": "data-loader processes decoding images (0: in-process)"})
    cpu_threads: Optional[int] = field(
        default=None, metadata={"help": "torch threads of the model process on CPU; null: the cores left "
                                        "to it by the data-loader workers (at least 1)"})
    device: Literal["auto", "cpu", "cuda"] = field(
        default="auto", metadata={"help": "auto: this rank's CUDA device when there is one, else CPU"})
    precision: Literal["bf16", "fp32"] = field(
        default="bf16", metadata={"help": "bf16: autocast on CUDA (CPU always runs fp32)"})
    max_pixels: int = field(default=4096 * 4096, metadata={"help": "larger images are skipped unread"})
    max_caption_chars: int = field(
        default=2000, metadata={"help": "longer web captions (.txt, and the .json caption) are cut to this "
                                        "many characters (counted as changed.caption_truncated), or skipped"})
    long_captions: Literal["truncate", "skip"] = field(
        default="truncate", metadata={"help": "a caption over max_caption_chars is truncated, or its sample "
                                              "skipped (caption_too_long)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (images/s, kept fraction)"})
    verify: Literal["size", "full"] = field(
        default="size", metadata={"help": "how a rerun checks an output shard its stats call complete: size (a "
                                          "stat call) or full (re-hash the tar against the SHA-256 in its stats); "
                                          "a mismatch is redone"})
    io_retries: int = field(default=3, metadata={"help": "an input shard whose source fails to open or read "
                                                         "(pipe: exit, I/O error, no tar) is tried again this often "
                                                         "before it is left incomplete for a rerun"})
    io_backoff_s: float = field(default=1.0, metadata={"help": "seconds before the first retry (doubling)"})
    measure_ceiling: bool = field(
        default=False, metadata={"help": "after the run, time the model forward passes alone on an "
                                         "in-memory batches (the run's own) and record the ratio in summary.json"})
    ceiling_images: int = field(default=512, metadata={"help": "images timed for the ceiling (at most the run's)"})
    engine: Literal["local", "ray"] = field(
        default="local", metadata={"help": "local: this process or `accelerate launch` ranks (static split); "
                                           "ray: a pool of Ray actors fed shard by shard (pip install -e .[ray])"})
    ray: RayConfig = field(default_factory=RayConfig, metadata={"help": "engine=ray"})
    curation: CurationConfig = field(default_factory=CurationConfig, metadata={
        "help": "dedup / decontamination index and safety classifier, applied before captioning"})
    rewrite: RewriteConfig = field(default_factory=RewriteConfig, metadata={
        "help": "LaCLIP-style rewrites of the web captions (a third caption source)"})

    def validate(self) -> None:
        """Raise ValueError for sizes that cannot run."""
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1 or null, got {self.cpu_threads}")
        if self.max_caption_chars < 1:
            raise ValueError(f"max_caption_chars must be >= 1, got {self.max_caption_chars}")
        if self.io_retries < 0 or not 0 <= self.io_backoff_s < float("inf"):
            raise ValueError(f"io_retries and io_backoff_s must be >= 0, got {self.io_retries} and {self.io_backoff_s}")
        validate_captioner(self.captioner)
        self.decoding.validate()
        if self.captioner.kind == "endpoint" and self.decoding.num_captions > 0:
            validate_endpoint(self.captioner, self.decoding)
        self.filter.validate()
        self.thresholds.validate(score_range(self.filter))
        self.ray.validate()
        self.curation.validate()
        self.rewrite.validate()
        if self.rewrite.num_rewrites and self.rewrite.model is None and (
                self.captioner.kind != "endpoint" or self.decoding.num_captions == 0):
            raise ValueError("rewrite.num_rewrites > 0 needs an LLM endpoint: set rewrite.model (and rewrite.endpoint), "
                             "or caption with captioner.kind=endpoint, whose model then rewrites too")


def score_range(filter_cfg: FilterConfig) -> tuple[float, float]:
    """The scores the filter gives: BLIP ITM's match probability is in [0, 1], a cosine (CLIP, ITC)
    in [-1, 1]. Read from the config, not the filter: thresholds are checked before any model loads."""
    return (0.0, 1.0) if filter_cfg.kind == "blip" and filter_cfg.itm.mode == "itm" else (-1.0, 1.0)


def checkpoint_names(cfg: BootstrapConfig) -> list[tuple[str, str | None]]:
    """`(setting, value)` of each model the bootstrap loads by name that must hold trained weights:
    the captioner when it captions, a BLIP filter (None when not used). An open_clip filter's
    `arch` names an architecture, which a random-weight filter may use."""
    return [("captioner.name", cfg.captioner.name if cfg.decoding.num_captions > 0 else None),
            ("filter.itm.name", cfg.filter.itm.name if cfg.filter.kind == "blip" else None)]


def validate_captioner(spec: CaptionerSpec) -> None:
    """Check a prompted VLM's settings, and read `prompt_file` into `prompt`: the prompt text then
    enters config.yaml and the run fingerprint, so an edited prompt file cannot mix two prompts
    in one run folder."""
    from pathlib import Path

    if spec.chat_template not in ("auto", "none"):
        raise ValueError(f"captioner.chat_template must be auto or none, got {spec.chat_template!r}")
    if spec.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"captioner.dtype must be auto, float32, bfloat16 or float16, got {spec.dtype!r}")
    if spec.prompt_file is None:
        return
    path = Path(spec.prompt_file)
    if not path.is_file():
        raise ValueError(f"captioner.prompt_file={spec.prompt_file}: no such file (a relative path is read "
                         f"from the current directory, {Path.cwd()})")
    spec.prompt = read_prompt(spec.prompt, spec.prompt_file)


def validate_endpoint(spec: CaptionerSpec, decoding: DecodingConfig) -> None:
    """Settings an OpenAI-compatible endpoint cannot serve, caught before any server starts."""
    ep = spec.endpoint
    if decoding.method == "beam":
        raise ValueError("captioner.kind=endpoint: beam search is not part of the chat-completions API; use "
                         "decoding.method=nucleus or greedy")
    if not (spec.prompt or "").strip():
        raise ValueError("captioner.kind=endpoint needs captioner.prompt (or prompt_file), e.g. "
                         "'Describe this image in one sentence.'")
    if ep.server == "external" and not ep.base_url:
        raise ValueError("captioner.endpoint.server=external needs captioner.endpoint.base_url (e.g. "
                         "http://localhost:8000/v1), or set server=vllm to let the job start one")
    if ep.concurrency < 1 or ep.max_attempts < 1 or ep.max_restarts < 0:
        raise ValueError("captioner.endpoint.concurrency and max_attempts must be >= 1, max_restarts >= 0")
    if ep.timeout_s <= 0 or ep.health_timeout_s <= 0:
        raise ValueError("captioner.endpoint.timeout_s and health_timeout_s must be > 0")


# How a request travels (where, how many at once, how patiently) never changes an answer.
_TRANSPORT = ("base_url", "api_key_env", "server_python", "server_command", "server_args", "health_timeout_s",
              "max_restarts", "concurrency", "timeout_s", "max_attempts", "backoff_base_s", "backoff_max_s",
              "jitter", "cache", "cache_dir")


def captioner_key(spec: CaptionerSpec) -> dict:
    """The captioner settings that decide captions, for the run fingerprint.

    A checkpoint captioner (kind=auto) keys as before endpoints existed, so older run folders
    resume; an endpoint leaves out its transport, so a resumed run may use another URL, port or
    concurrency (the model id is checked against the server's own list when it loads).
    """
    from dataclasses import asdict

    key = asdict(spec)
    endpoint = key.pop("endpoint")
    if spec.kind == "auto":
        key.pop("kind")
        return key
    key["endpoint"] = {k: v for k, v in endpoint.items() if k not in _TRANSPORT}
    return key


def rewrite_key(cfg: "BootstrapConfig") -> dict:
    """The rewrite settings that decide output, for the run fingerprint ({} without rewrites, so
    runs without them key as before); the prompt file by its content."""
    import hashlib
    from dataclasses import asdict
    from pathlib import Path

    rw = cfg.rewrite
    if rw.num_rewrites == 0:
        return {}
    key = {k: v for k, v in asdict(rw).items() if k not in ("endpoint", "prompt_file")}
    key["endpoint"] = {k: v for k, v in asdict(rw.endpoint).items() if k not in _TRANSPORT} if rw.model else None
    key["prompt_sha256"] = hashlib.sha256(Path(rw.prompt_file).read_bytes()).hexdigest()
    return {"rewrite": key}
