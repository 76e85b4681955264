"""The models of a bootstrap run, as the plain callables the stages take.

`CapFilt` wraps a `models.Captioner` and a filter (`models.DualEncoder` for the CLIP score,
`models.BlipItmFilter` for ITM / ITC) and offers:

- `preprocessor`: PIL images -> CPU tensors for both models; it runs in data-loader workers, so it
  holds only processors (the captioner's `input_builder()`: pixels for BLIP / VED, prompt ids +
  pixels for a prompted VLM), never a model, and never touches the GPU;
- `caption(inputs, seed)`: N synthetic captions per image, seeded per batch (N = 0: no captioner
  at all, the web captions are only filtered, the "filtered" baseline);
- `score(inputs, texts)`: a score per (image, candidate caption), each image encoded ONCE for its
  web caption and all its synthetic captions (the models API's `score_candidates` repeats the
  image per candidate, which multiplies the vision tower's cost by N + 1). The rows also say which
  captions the filter truncated to its own text length (`ScoredRows.truncated`): long VLM captions
  are scored on their first tokens only, and the stats count how often.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from typing import Any, Iterator

import torch

from mmw2s.data_pipelines import shard_name

from mmw2s.bootstrap.config import BootstrapConfig
from mmw2s.errors import StageError


class ScoredRows(list):
    """Scores per image (a list of lists, as `ScoreFn` returns), plus `truncated`: per image, for
    each candidate, whether the filter saw it cut to its text length."""

    def __init__(self, rows: list[list[float]], truncated: list[list[bool]]):
        super().__init__(rows)
        self.truncated = truncated


class Preprocessor:
    """Images -> `{"captioner": {name: tensor}, "filter": (B,3,H',W')}` CPU tensors."""

    def __init__(self, captioner_inputs: Any = None, filter_processor: Any = None, filter_transform: Any = None,
                 safety_processor: Any = None):
        self.captioner_inputs = captioner_inputs  # the captioner's input_builder(); None: filter only
        self.filter_processor = filter_processor  # an HF image processor (BLIP ITM), or
        self.filter_transform = filter_transform  # a per-image torchvision transform (open_clip)
        self.safety_processor = safety_processor  # the safety classifier's HF image processor, if any

    def __call__(self, images: list) -> dict:
        rgb = [im.convert("RGB") for im in images]
        out = {}
        if self.captioner_inputs is not None:
            out["captioner"] = self.captioner_inputs(rgb)
        if self.filter_transform is not None:
            out["filter"] = torch.stack([self.filter_transform(im) for im in rgb])  # (B, 3, H, W)
        else:
            out["filter"] = self.filter_processor(images=rgb, return_tensors="pt")["pixel_values"]
        if self.safety_processor is not None:
            out["safety"] = self.safety_processor(images=rgb, return_tensors="pt")["pixel_values"]
        return out


class CapFilt:
    """Captioner + filter on one device, with bf16 autocast on CUDA when asked."""

    def __init__(self, captioner: Any | None, filt: Any, kind: str, decoding: Any, device: torch.device,
                 bf16: bool = True, names: tuple[str | None, str] = ("", ""), safety: Any = None,
                 safety_settings: dict | None = None):
        self.captioner, self.filter, self.kind, self.decoding = captioner, filt, kind, decoding
        self.safety, self.safety_settings = safety, safety_settings or {}  # models.SafetyClassifier, or None
        self.device = torch.device(device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.captioner_name, self.filter_name = names
        self.rewriter = None  # LaCLIP-style rewrites of the web captions (`from_config` sets it)
        self.mode = filt.mode if kind == "blip" else "clip"
        for wrapper in (captioner, filt, safety):
            model = getattr(wrapper, "model", None)  # an endpoint captioner holds no model here
            # a model spread over devices by from_pretrained(device_map=...) stays where it was put
            if model is not None and not getattr(model, "hf_device_map", None):
                model.to(self.device)
            if model is not None:
                model.eval()
        inputs = captioner.input_builder() if captioner is not None else None
        safety_processor = safety.image_processor if safety is not None else None
        if kind == "clip":
            self.preprocessor = Preprocessor(inputs, filter_transform=filt.preprocess_val,
                                             safety_processor=safety_processor)
        else:
            self.preprocessor = Preprocessor(inputs, filter_processor=filt.image_processor,
                                             safety_processor=safety_processor)

    @classmethod
    def from_config(cls, cfg: BootstrapConfig, device: Any) -> "CapFilt":
        """Load the captioner and filter a config names (hub ids, local folders, saved models)."""
        from mmw2s.models import build_captioner, build_filter, list_captioners
        from mmw2s.models.captioners.prompted_vlm import CaptionerLoadError

        generate = cfg.decoding.num_captions > 0
        for what, name in (("captioner.name", cfg.captioner.name if generate else None),
                           ("filter.itm.name", cfg.filter.itm.name if cfg.filter.kind == "blip" else None)):
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
        spec = cfg.filter.dual_encoder if cfg.filter.kind == "clip" else cfg.filter.itm
        filt = build_filter(spec)
        if cfg.filter.kind == "clip":
            filter_name = spec.arch + (f":{spec.pretrained}" if spec.pretrained else "")
        else:
            filter_name = spec.name
        safety, spec = None, cfg.curation.safety
        if spec.name is not None:
            from mmw2s.models.safety import SafetyClassifier

            try:
                safety = SafetyClassifier.load(spec.name, spec.unsafe_labels, spec.revision)
            except (OSError, ValueError) as exn:
                raise StageError(f"curation.safety.name={spec.name}: {exn}") from None
        models = cls(captioner, filt, cfg.filter.kind, cfg.decoding, device, cfg.precision == "bf16",
                     names=(cfg.captioner.name if generate else None, filter_name), safety=safety,
                     safety_settings={"threshold": spec.threshold, "action": spec.action})
        models.rewriter = rewriter
        return models

    def provenance(self, cfg: BootstrapConfig) -> dict:
        """The fixed fields of every sample's `mmw2s` block."""
        captioner = {"name": self.captioner_name, "decoding": asdict(self.decoding)}
        if hasattr(self.captioner, "provenance"):  # prompted VLMs: prompt, chat template, revision
            captioner.update(self.captioner.provenance())
        block = {"captioner": captioner, "filter": {"name": self.filter_name, "mode": self.mode}, "seed": cfg.seed}
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
        if hasattr(self.captioner, "close"):
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
        # an endpoint reads the original image bytes (`stages.caption_batch` adds them), others tensors
        encoded = getattr(self.captioner, "inputs", "tensors") == "encoded"
        with self._autocast():
            return self.captioner.caption(
                inputs["images"] if encoded else inputs["captioner"], num_captions=d.num_captions, method=d.method, top_p=d.top_p, num_beams=d.num_beams,
                max_new_tokens=d.max_new_tokens, min_new_tokens=d.min_new_tokens, seed=seed)

    @torch.inference_mode()
    def score(self, inputs: dict, texts: list[list[str]]) -> ScoredRows:
        """The filter score of every candidate caption of every image, in the given order."""
        pixels = inputs["filter"].to(self.device, non_blocking=True)  # (B, 3, H, W)
        counts = torch.tensor([len(t) for t in texts], device=self.device)
        owner = torch.repeat_interleave(torch.arange(len(texts), device=self.device), counts)  # (T,)
        flat = [t for row in texts for t in row]
        with self._autocast():
            if self.kind == "clip":
                tokens = self.filter.tokenize(flat)  # (T, context_length)
                scores = self._clip(pixels, tokens, owner)
                cut = (tokens[:, -1] != _pad_id(self.filter.tokenizer)).tolist()  # filled the context: cut
            else:
                if self.mode == "itc":
                    scores = self.filter.itc_similarity(pixels, flat)[owner, torch.arange(len(flat))]  # (T,)
                else:
                    scores = self._itm(pixels, flat, owner)
                cut = [len(ids) > self.filter.max_length for ids in self.filter.tokenizer(flat)["input_ids"]]
        values = scores.float().cpu().tolist()
        out, truncated, start = [], [], 0
        for n in counts.tolist():
            out.append(values[start:start + n])
            truncated.append(cut[start:start + n])
            start += n
        return ScoredRows(out, truncated)

    def _clip(self, pixels: torch.Tensor, tokens: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """CLIP score: cosine of each text with its image, the image encoded once."""
        image = self.filter.encode_image(pixels)  # (B, D), normalized
        text = self.filter.encode_text(tokens)  # (T, D), normalized
        return (image[owner] * text).sum(dim=-1)  # (T,)

    def _itm(self, pixels: torch.Tensor, texts: list[str], owner: torch.Tensor) -> torch.Tensor:
        """ITM match probability, the ViT run once per image.

        The same computation as `BlipForImageTextRetrieval.forward(use_itm_head=True)`, with the
        vision states repeated per candidate instead of the pixels.
        """
        model = self.filter.model
        states = model.vision_model(pixel_values=pixels).last_hidden_state[owner]  # (T, N, D)
        atts = torch.ones(states.shape[:-1], dtype=torch.long, device=states.device)  # (T, N)
        tokens = self.filter.tokenize(texts)  # input_ids, attention_mask: (T, L)
        hidden = model.text_encoder(**tokens, encoder_hidden_states=states,
                                    encoder_attention_mask=atts).last_hidden_state  # (T, L, D)
        return model.itm_head(hidden[:, 0, :]).float().softmax(dim=-1)[:, 1]  # (T,)


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


def _pad_id(tokenizer: Any) -> int:
    """open_clip's padding id: 0 for its own BPE tokenizer, the HF tokenizer's for `hf-hub:` towers."""
    pad = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    return pad if isinstance(pad, int) else 0
