"""Config schema of `mmw2s synthesize` (plain dataclasses; no torch import, `mmw2s --help` loads it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from mmw2s.data_pipelines.instructions import KINDS
from mmw2s.resources import shipped


@dataclass
class ApiConfig:
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp server, ...)."""

    base_url: Optional[str] = field(default=None, metadata={
        "help": "endpoint, e.g. http://localhost:8000/v1 for vLLM; null: OpenAI's own"})
    model: str = field(default="gpt-4o-mini", metadata={"help": "model name the server knows"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "name of the environment variable holding the API key (local servers: any value)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    max_tokens: int = field(default=1024, metadata={"help": "longest response in tokens"})
    seed: Optional[int] = field(default=None, metadata={
        "help": "request seed (servers that support it sample reproducibly)"})
    json_mode: bool = field(default=False, metadata={
        "help": "send response_format={type: json_object} (OpenAI, vLLM and llama.cpp support it)"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at once"})
    timeout_s: float = field(default=60.0, metadata={"help": "seconds before a request counts as timed out"})
    max_attempts: int = field(default=6, metadata={
        "help": "tries per request; 429, 5xx, timeouts and connection errors are retried"})
    backoff_base_s: float = field(default=1.0, metadata={
        "help": "first retry delay; doubles per attempt (exponential backoff)"})
    backoff_max_s: float = field(default=60.0, metadata={"help": "longest delay between two tries"})
    jitter: float = field(default=0.25, metadata={
        "help": "each delay is stretched by a random fraction up to this, so clients spread out"})
    price_prompt_per_1k: float = field(default=0.0, metadata={
        "help": "price per 1000 prompt tokens, for the cost estimate in the stats"})
    price_completion_per_1k: float = field(default=0.0, metadata={
        "help": "price per 1000 completion tokens, for the cost estimate in the stats"})

    def validate(self) -> None:
        """Raise ValueError for limits that cannot work."""
        if self.concurrency < 1 or self.max_attempts < 1:
            raise ValueError("api.concurrency and api.max_attempts must be >= 1")
        if self.timeout_s <= 0 or self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.jitter < 0:
            raise ValueError("api.timeout_s must be > 0 and the backoff settings >= 0")


@dataclass
class LocalConfig:
    """A local transformers causal LM (AutoModelForCausalLM)."""

    model: str = field(default="Qwen/Qwen2.5-0.5B-Instruct", metadata={
        "help": "hub id or local folder of a causal LM (its chat template is used when it has one)"})
    max_new_tokens: int = field(default=512, metadata={"help": "longest response in tokens"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature; 0: greedy"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "auto: CUDA when available"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={
        "help": "weights dtype; auto: the checkpoint's own"})

    def validate(self) -> None:
        """Raise ValueError for a non-positive length or a negative temperature."""
        if self.max_new_tokens < 1 or self.temperature < 0:
            raise ValueError("local.max_new_tokens must be >= 1 and local.temperature >= 0")


@dataclass
class PromptConfig:
    """Where the prompts live (files, editable without code changes)."""

    llm_dir: str = field(default="configs/prompts/llava", metadata={
        "help": "folder of KIND.yaml files (system prompt + few-shot examples) for api/local backends"})
    template: str = field(default="configs/prompts/template.yaml", metadata={
        "help": "wording file of the template backend"})

    def validate(self) -> None:
        """Point the `configs/...` defaults at the shipped prompts when the current directory has none."""
        self.llm_dir, self.template = shipped(self.llm_dir), shipped(self.template)


@dataclass
class SynthesizeConfig:
    """`mmw2s synthesize`: LLaVA-style instruction data from captioned shards."""

    input: str = field(metadata={"help": "shards (raw or bootstrapped): brace pattern, glob, folder, ..."})
    out: str = field(metadata={"help": "run folder: instructions/, images/, llava.json, summary.json, cache/"})
    backend: Literal["template", "api", "local"] = field(default="template", metadata={
        "help": "template: no model (offline default); api: OpenAI-compatible server; local: a causal LM"})
    kinds: list[str] = field(default_factory=lambda: list(KINDS), metadata={
        "help": "instruction kinds to make: conversation, detail, reasoning"})
    kind_policy: Literal["all", "cycle"] = field(default="all", metadata={
        "help": "all: every kind for every image; cycle: one kind per image, in turn (cheaper)"})
    captions: Literal["chosen", "kept"] = field(default="chosen", metadata={
        "help": "chosen: the shard's caption (.txt / mmw2s.chosen); kept: also every other caption "
                "the bootstrap filter kept (LLM backends see them all, the template the first)"})
    boxes_field: Optional[str] = field(default=None, metadata={
        "help": "dotted JSON path of boxes [{label, box: [x0, y0, x1, y1] px}] given to the detail and "
                "reasoning prompts (never under truth); null: captions only"})
    seed: int = field(default=0, metadata={"help": "seed of the template backend and of local sampling"})
    chunk_size: int = field(default=64, metadata={"help": "samples whose requests are sent together"})
    cache: bool = field(default=True, metadata={"help": "cache model responses on disk"})
    cache_dir: Optional[str] = field(default=None, metadata={
        "help": "response cache folder (share it between runs); null: OUT/cache"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    api: ApiConfig = field(default_factory=ApiConfig, metadata={"help": "backend=api settings"})
    local: LocalConfig = field(default_factory=LocalConfig, metadata={"help": "backend=local settings"})
    prompts: PromptConfig = field(default_factory=PromptConfig, metadata={"help": "prompt files"})

    def validate(self) -> None:
        """Raise ValueError for unknown kinds, a truth path or sizes that cannot run."""
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty list of {list(KINDS)}, got {self.kinds}")
        if self.boxes_field and self.boxes_field.split(".")[0] == "truth":
            raise ValueError("boxes_field reads the evaluation-only truth block; synthesis must work "
                             "from what a web pipeline has (captions, detector boxes)")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        self.api.validate()
        self.local.validate()
