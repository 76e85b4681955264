"""``PromptedCaptioner``: any image-text-to-text model of transformers as a captioner.

BLIP-2, LLaVA, Qwen2-VL, SmolVLM / Idefics3, PaliGemma, Florence-2 ... load with ``AutoProcessor`` +
``AutoModelForImageTextToText`` (transformers 5.x has no ``AutoModelForVision2Seq``), from a hub id
or a ``save_pretrained`` folder. Which checkpoints load here is read from their own config
(``captioner_class`` in `build.py`), never from their name.

It implements ``Captioner`` (`protocol.py`), not ``TrainableCaptioner``: it captions (bootstrap,
captioning evaluation); teacher-forced training and likelihood scoring stay with BLIP and
VisionEncoderDecoder (`blip_ved.py`).

How a batch is captioned, and why:
- the prompt is rendered once: through the processor's chat template when it has one
  (``chat_template="auto"``), else used as it is (BLIP-2, PaliGemma, Florence-2 take plain text);
- images go to the processor nested per sample (``[[im] for im in images]``): a flat list is read as
  ONE sample with N images by Idefics3 / SmolVLM;
- padding is on the left, so every row's new tokens start at the same column and a padded row
  generates what it would alone;
- decoder-only models (BLIP-2 with OPT included) return prompt + new tokens, encoder-decoders
  (Florence-2, BLIP-2 with T5) only the new ones: the prompt columns are cut when the output starts
  with them;
- markup tokens (PaliGemma's ``<loc0042>``, ``<seg007>``) are plain added tokens that
  ``skip_special_tokens`` keeps: every added token spelled ``<...>`` is removed before decoding;
- decoding uses a fresh ``GenerationConfig`` holding the checkpoint's special ids only, so a
  checkpoint's own sampling defaults (Qwen2-VL ships temperature 0.1, top_k 1) never change what
  the recorded decoding parameters say.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from .generation import decoding_kwargs, seeded
from .protocol import MARKUP, CaptionerLoadError

CHAT_TEMPLATES = ("auto", "none")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PromptedInputs:
    """Images -> the processor's tensors for one prompt (``input_ids``, ``pixel_values``, ...).

    Holds the processor only, never the model: it runs in data-loader workers.
    """

    def __init__(self, processor: Any, text: str) -> None:
        self.processor, self.text = processor, text

    def __call__(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        rgb = [[im.convert("RGB")] for im in images]  # nested: one image per sample
        enc = self.processor(images=rgb, text=[self.text] * len(rgb), padding=True, return_tensors="pt")
        # `labels` (PaliGemma's processor builds them from token_type_ids) are for training only
        return {k: v for k, v in enc.items() if isinstance(v, torch.Tensor) and k != "labels"}


class PromptedCaptioner:
    """A prompted VLM behind the ``Captioner`` protocol: ``input_builder``, ``caption``, ``save``.

    It has no ``loss`` or ``log_likelihood``, so ``require_trainable`` refuses it for training and
    likelihood scoring.
    """

    kind = "prompted"
    inputs = "tensors"

    def __init__(self, model: Any, processor: Any, prompt: str | None = None, chat_template: str = "auto",
                 source: str = "", revision: str | None = None) -> None:
        if chat_template not in CHAT_TEMPLATES:
            raise CaptionerLoadError(f"chat_template must be one of {CHAT_TEMPLATES}, got {chat_template!r}")
        self.model, self.processor = model, processor
        self.tokenizer = processor.tokenizer
        self.image_processor = getattr(processor, "image_processor", None)
        self.family = model.config.model_type
        self.prompt = (prompt or "").strip()
        template = getattr(processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        self.template = template if chat_template == "auto" else None
        self.source, self.revision = source, revision
        if self.image_processor is None:
            raise CaptionerLoadError(f"{source}: its processor ({type(processor).__name__}) has no image processor")
        if self.template is not None and not self.prompt:
            raise CaptionerLoadError(f"{source} is a chat model (its processor has a chat template): set "
                                     "captioner.prompt (or captioner.prompt_file), e.g. 'Describe this image in "
                                     "one sentence.', or chat_template=none to send no template")
        self.tokenizer.padding_side = "left"  # new tokens start at one column for every row
        self.text = self._render()
        self._markup_ids = set(i for i, t in self.tokenizer.added_tokens_decoder.items()
                                  if MARKUP.fullmatch(str(t.content)))
        self._probe()

    # ---- inputs -------------------------------------------------------------------------------
    def _render(self) -> str:
        """The model's text input: the chat-templated prompt with one image slot, or the prompt."""
        if self.template is None:
            return self.prompt
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        return self.processor.apply_chat_template(messages, chat_template=self.template, add_generation_prompt=True,
                                                  tokenize=False)

    def _probe(self) -> None:
        """Run the processor on one blank image now, so a prompt it rejects fails before any work."""
        try:
            self.input_builder()([Image.new("RGB", (32, 32))])
        except Exception as exn:  # noqa: BLE001 - any processor failure is a configuration error here
            hint = " (with chat_template=none the prompt must hold the model's image token)" if self.template is None else ""
            raise CaptionerLoadError(f"{self.source}: its processor rejects the prompt {self.text!r}{hint}: "
                                     f"{type(exn).__name__}: {exn}") from exn

    def input_builder(self) -> PromptedInputs:
        """The per-batch preprocessing to run in data-loader workers."""
        return PromptedInputs(self.processor, self.text)

    # ---- generation ----------------------------------------------------------------------------
    def _generation_config(self, **decoding: Any) -> GenerationConfig:
        """Only the decoding asked for, plus the checkpoint's special ids (see the module docstring)."""
        own, text = self.model.generation_config, self.model.config.get_text_config()
        # token structure, not sampling: encoder-decoders' start and forced tokens (BART-based Florence-2)
        ids = {k: getattr(own, k, None) for k in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                  "decoder_start_token_id", "forced_bos_token_id",
                                                  "forced_eos_token_id")}
        if ids["decoder_start_token_id"] is None and self.model.config.is_encoder_decoder:
            ids["decoder_start_token_id"] = getattr(text, "decoder_start_token_id", None)
        if ids["pad_token_id"] is None:
            ids["pad_token_id"] = self.tokenizer.pad_token_id
        if ids["eos_token_id"] is None:
            ids["eos_token_id"] = self.tokenizer.eos_token_id
        return GenerationConfig(**{k: v for k, v in ids.items() if v is not None}, **decoding)

    @torch.no_grad()
    def caption(self, inputs: Mapping[str, torch.Tensor], *, num_captions: int = 1, method: str = "nucleus",
                top_p: float = 0.9, num_beams: int = 3, max_new_tokens: int = 20, min_new_tokens: int = 0,
                repetition_penalty: float = 1.0, seed: int | None = None) -> list[list[str]]:
        """``num_captions`` captions per image of ``inputs`` (from ``input_builder``), prompt removed."""
        kwargs = decoding_kwargs(method, num_captions, top_p, num_beams)
        if method == "nucleus":
            kwargs["temperature"] = 1.0
        gen = self._generation_config(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                                      repetition_penalty=repetition_penalty, **kwargs)
        model = self.model
        dtype = next(model.parameters()).dtype
        batch = {k: v.to(model.device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
        with seeded(model.device, seed):
            out = model.generate(**batch, generation_config=gen)  # (B * num_captions, L)
        texts = self.decode(out, batch["input_ids"].repeat_interleave(num_captions, dim=0))
        return [texts[i: i + num_captions] for i in range(0, len(texts), num_captions)]

    def decode(self, out: torch.Tensor, prompt_ids: torch.Tensor) -> list[str]:
        """Generated ids ``(R, L)`` -> texts, without the prompt columns and without markup tokens."""
        width = prompt_ids.shape[1]
        if out.shape[1] >= width and torch.equal(out[:, :width], prompt_ids.to(out.device)):
            out = out[:, width:]  # decoder-only: prompt + new tokens
        rows = []
        for row in out.tolist():
            rows.append([t for t in row if t not in self._markup_ids])
        return [t.strip() for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]

    # ---- provenance and persistence --------------------------------------------------------------
    def provenance(self) -> dict:
        """What a bootstrapped sample records about this captioner beyond its name and decoding."""
        template = None
        if self.template is not None:
            template = {"source": "processor", "sha256": hashlib.sha256(self.template.encode()).hexdigest()[:16]}
        return {"kind": "prompted", "model_type": self.family, "prompt": self.prompt, "chat_template": template,
                "model_input": self.text, "revision": self.revision}

    def save(self, path: str | Path) -> Path:
        """``save_pretrained`` of the model and its processor (loads back with the Auto classes)."""
        path = Path(path)
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)
        return path

    def close(self) -> None:
        """Nothing held outside this process."""

    @classmethod
    def load(cls, name_or_path: str | Path, prompt: str | None = None, chat_template: str = "auto",
             dtype: str = "float32", device_map: str | None = None, revision: str | None = None) -> PromptedCaptioner:
        """Load a prompted VLM by hub id or folder; raises ``CaptionerLoadError`` for what cannot caption.

        The checkpoint's kind is not checked here: ``build.load_captioner`` sends only image-text models.
        """
        source = str(name_or_path)
        if dtype not in DTYPES:
            raise CaptionerLoadError(f"captioner.dtype must be one of {sorted(DTYPES)} or auto, got {dtype!r}")
        try:
            processor = AutoProcessor.from_pretrained(source, revision=revision)
        except (OSError, ValueError) as exn:  # e.g. no preprocessor_config.json: no image processor
            raise CaptionerLoadError(f"{source}: AutoProcessor finds no processor with an image processor "
                                     f"({type(exn).__name__}: {str(exn)[:300]})") from exn
        if getattr(processor, "tokenizer", None) is None:
            raise CaptionerLoadError(f"{source}: AutoProcessor gives a {type(processor).__name__}, not a processor "
                                     "with an image processor and a tokenizer")
        model = AutoModelForImageTextToText.from_pretrained(source, revision=revision, dtype=DTYPES[dtype],
                                                            device_map=device_map)
        return cls(model.eval(), processor, prompt, chat_template, source=source,
                   revision=checkpoint_revision(source, revision))


def checkpoint_revision(source: str, revision: str | None = None) -> str | None:
    """The commit a checkpoint was loaded at: the hub cache's snapshot, or a local git clone's HEAD."""
    folder = Path(source)
    if folder.is_dir():
        return _git_head(folder)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - provenance is best effort; loading already succeeded
        return revision
    if isinstance(cached, str) and "/snapshots/" in cached:
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    return revision


def _git_head(folder: Path) -> str | None:
    """The commit of a folder that is a git clone (``git clone https://huggingface.co/...``)."""
    head = folder / ".git" / "HEAD"
    if not head.is_file():
        return None
    ref = head.read_text().strip()
    if not ref.startswith("ref: "):
        return ref or None
    target = folder / ".git" / ref[5:]
    if target.is_file():
        return target.read_text().strip() or None
    packed = folder / ".git" / "packed-refs"
    for line in packed.read_text().splitlines() if packed.is_file() else []:
        if line.endswith(" " + ref[5:]):
            return line.split()[0]
    return None
