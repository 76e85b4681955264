"""The models of a bootstrap run, as the plain callables the stages take.

`CapFilt` wraps a `models.Captioner` and a `models.CaptionFilter` (the CLIP score of a
`DualEncoder`, BLIP ITM / ITC of a `BlipItmFilter`: this module never asks which) and offers:

- `preprocessor`: PIL images -> CPU tensors for the models; it runs in data-loader workers, so it
  holds only the models' `input_builder()`s (pixels for BLIP / VED and the filter, prompt ids +
  pixels for a prompted VLM), never a model, and never touches the GPU;
- `caption(inputs, seed)`: N synthetic captions per image, seeded per batch (N = 0: no captioner
  at all, the web captions are only filtered, the "filtered" baseline);
- `score(inputs, texts)`: a score per (image, candidate caption), each image encoded ONCE for its
  web caption and all its synthetic captions (`models.filters.scoring.score_candidates`). The rows also
  say which captions the filter truncated to its own text length (`ScoredRows.truncated`): long
  VLM captions are scored on their first tokens only, and the stats count how often.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Iterator

import torch

from mmw2s.data_pipelines import shard_name

from mmw2s.bootstrap.config import BootstrapConfig, checkpoint_names
from mmw2s.errors import StageError

if TYPE_CHECKING:  # the models package loads torch, transformers and open_clip: on first use only
    from mmw2s.models.filters.scoring import ScoredRows


class Preprocessor:
    """Images -> `{"captioner": {name: tensor}, "filter": (B,3,H',W')}` CPU tensors."""

    def __init__(self, captioner_inputs: Any, filter_inputs: Any, safety_inputs: Any = None):
        self.captioner_inputs = captioner_inputs  # the captioner's input_builder(); None: filter only
        self.filter_inputs = filter_inputs  # the filter's input_builder()
        self.safety_inputs = safety_inputs  # the safety classifier's input_builder(), if any

    def __call__(self, images: list) -> dict:
        rgb = [im.convert("RGB") for im in images]
        out = {}
        if self.captioner_inputs is not None:
            out["captioner"] = self.captioner_inputs(rgb)
        out["filter"] = self.filter_inputs(rgb)  # (B, 3, H, W)
        if self.safety_inputs is not None:
            out["safety"] = self.safety_inputs(rgb)
        return out


class CapFilt:
    """Captioner + filter on one device, with bf16 autocast on CUDA when asked."""

    def __init__(self, captioner: Any | None, filt: Any, decoding: Any, device: torch.device,
                 bf16: bool = True, captioner_name: str | None = "", safety: Any = None,
                 safety_settings: dict | None = None):
        self.captioner, self.filter, self.decoding = captioner, filt, decoding  # filt: a models.CaptionFilter
        self.safety, self.safety_settings = safety, safety_settings or {}  # models.SafetyClassifier, or None
        self.device = torch.device(device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.captioner_name = captioner_name
        self.rewriter = None  # LaCLIP-style rewrites of the web captions (`from_config` sets it)
        for wrapper in (captioner, filt, safety):
            model = getattr(wrapper, "model", None)  # an endpoint captioner holds no model here
            # a model spread over devices by from_pretrained(device_map=...) stays where it was put
            if model is not None and not getattr(model, "hf_device_map", None):
                model.to(self.device)
            if model is not None:
                model.eval()
        inputs = captioner.input_builder() if captioner is not None else None
        safety_inputs = safety.input_builder() if safety is not None else None
        self.preprocessor = Preprocessor(inputs, filt.input_builder(), safety_inputs)

    @classmethod
    def from_config(cls, cfg: BootstrapConfig, device: Any) -> "CapFilt":
        """Load the captioner and filter a config names (hub ids, local folders, saved models)."""
        from mmw2s.models import build_captioner, build_filter, list_captioners
        from mmw2s.models.captioners.protocol import CaptionerLoadError

        generate = cfg.decoding.num_captions > 0
        for what, name in checkpoint_names(cfg):
            if name in list_captioners():
                raise StageError(f"{what}={name!r} names an untrained from-scratch config; bootstrap needs "
                                 "trained weights: a hub id or a folder saved by `mmw2s train`")
        # `captioner.dtype=auto` of a prompted VLM: bf16 weights where the run autocasts to bf16
        bf16 = cfg.precision == "bf16" and torch.device(device).type == "cuda"
        try:
            captioner = build_captioner(cfg.captioner, auto_dtype="bfloat16" if bf16 else "float32",
                                        run_dir=cfg.out, device=device) if generate else None
        except CaptionerLoadError as exn:
            raise StageError(f"captioner: {exn}") from None
        try:
            rewriter = build_rewriter(cfg, captioner, device)
        except (ValueError, RuntimeError) as exn:  # a bad prompt file, a server that never came up
            raise StageError(f"rewrite: {exn}") from None
        filt = build_filter(cfg.filter.spec())
        safety, spec = None, cfg.curation.safety
        if spec.name is not None:
            from mmw2s.models.safety import SafetyClassifier

            try:
                safety = SafetyClassifier.load(spec.name, spec.unsafe_labels, spec.revision)
            except (OSError, ValueError) as exn:
                raise StageError(f"curation.safety.name={spec.name}: {exn}") from None
        models = cls(captioner, filt, cfg.decoding, device, cfg.precision == "bf16",
                     captioner_name=cfg.captioner.name if generate else None, safety=safety,
                     safety_settings={"threshold": spec.threshold, "action": spec.action})
        models.rewriter = rewriter
        return models

    def provenance(self, cfg: BootstrapConfig) -> dict:
        """The fixed fields of every sample's `mmw2s` block."""
        captioner = {"name": self.captioner_name, "decoding": asdict(self.decoding)}
        if self.captioner is not None:  # a prompted VLM adds its prompt and template, an endpoint its server
            captioner.update(self.captioner.provenance())
        block = {"captioner": captioner, "filter": {"name": self.filter.name, "mode": self.filter.mode}, "seed": cfg.seed}
        if self.safety is not None:
            block["safety"] = {**self.safety.provenance(), **self.safety_settings}
        if self.rewriter is not None:
            block["rewrite"] = self.rewriter.provenance()
        return block

    def shard_usage(self, url: str) -> dict:
        """What the endpoints spent on input shard `url` (requests, retries, cache hits, tokens), for
        its stats; empty for in-process captioners."""
        out = {}
        usage = getattr(self.captioner, "shard_usage", None)
        if usage is not None:
            out["endpoint"] = usage(shard_name(url))
        if self.rewriter is not None and self.rewriter.session is not getattr(self.captioner, "session", None):
            out["rewrite_endpoint"] = self.rewriter.session.shard_usage(shard_name(url))
        return out

    def close(self) -> None:
        """Release what the models hold outside this process (an endpoint's server and threads)."""
        if self.captioner is not None:
            self.captioner.close()
        if self.rewriter is not None and self.rewriter.session is not getattr(self.captioner, "session", None):
            self.rewriter.session.close()

    def _autocast(self):
        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def caption(self, inputs: dict, seed: int) -> list[list[str]]:
        """`decoding.num_captions` captions per image of the batch (none without a captioner), then
        the rewrites of its web caption when rewriting is on (tagged `source="rewrite"`)."""
        rows = self._caption(inputs, seed)
        if self.rewriter is None:
            return rows
        from mmw2s.models.endpoint_rewriter import RewriteRequest

        requests = [RewriteRequest(im.key, im.shard, text, (im.seed * 1_000_003 + 7) % 2**31)  # not the caption's seed
                    for im, text in zip(inputs["images"], inputs["web_captions"])]
        return [list(row) + rewrites for row, rewrites in zip(rows, self.rewriter.rewrite(requests))]

    @torch.inference_mode()
    def _caption(self, inputs: dict, seed: int) -> list[list[str]]:
        d = self.decoding
        if self.captioner is None:
            return [[] for _ in range(len(inputs["filter"]))]
        # an endpoint reads the original image bytes (`pipeline.caption_batch` adds them), others tensors
        encoded = self.captioner.inputs == "encoded"
        with self._autocast():
            return self.captioner.caption(
                inputs["images"] if encoded else inputs["captioner"], num_captions=d.num_captions, method=d.method, top_p=d.top_p, num_beams=d.num_beams,
                max_new_tokens=d.max_new_tokens, min_new_tokens=d.min_new_tokens, seed=seed)

    @torch.inference_mode()
    def score(self, inputs: dict, texts: list[list[str]]) -> ScoredRows:
        """The filter score of every candidate caption of every image, in the given order."""
        from mmw2s.models.filters.scoring import score_candidates

        pixels = inputs["filter"].to(self.device, non_blocking=True)  # (B, 3, H, W)
        with self._autocast():
            return score_candidates(self.filter, pixels, texts)


@contextlib.contextmanager
def released(engine: Any) -> Iterator[None]:
    """On the way out of a run, close the models `engine` loaded in this process: an endpoint
    captioner's managed server must not outlive its job (an experiment runs the next stages in the
    same process). Ray actors' servers end with their actors."""
    try:
        yield
    finally:
        cached = getattr(engine, "local_models", None)
        info = getattr(cached, "cache_info", None)  # a functools.cache: loaded only if it holds one
        if info is not None and info().currsize:
            cached().close()


def endpoint_totals(stats: list[dict]) -> dict:
    """The endpoints' counters (requests, retries, cache hits, tokens) summed over shard stats, for
    the run summary; {} when no shard has any (in-process captioners)."""
    out = {}
    for block in ("endpoint", "rewrite_endpoint"):
        rows = [s[block] for s in stats if isinstance(s.get(block), dict)]
        if rows:
            keys = [k for k in rows[0] if k != "server_restarts"]  # per process, not per shard
            out[block] = {k: sum(r.get(k, 0) for r in rows) for k in keys}
    return out


def build_rewriter(cfg: BootstrapConfig, captioner: Any, device: Any) -> Any:
    """The LaCLIP-style rewriter a config asks for (None: no rewriting): on the endpoint captioner's
    own session (server, cache, counters) unless `rewrite.model` names another LLM and endpoint."""
    rw = cfg.rewrite
    if rw.num_rewrites == 0:
        return None
    from pathlib import Path

    from mmw2s.models.endpoint_rewriter import EndpointRewriter, load_rewrite_prompt
    from mmw2s.models.endpoint_session import EndpointSession

    session = getattr(captioner, "session", None)
    if rw.model is not None or session is None:
        ep = rw.endpoint
        session = EndpointSession(ep, rw.model, ep.cache_dir or Path(cfg.out) / "cache" / "rewrites",
                                  Path(cfg.out) / "logs", str(device))
    return EndpointRewriter(session, load_rewrite_prompt(rw.prompt_file), rw.exemplars, rw.num_rewrites,
                            rw.temperature, rw.top_p, rw.max_new_tokens)
