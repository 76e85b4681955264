"""Captioners: one protocol (`protocol.py`), three families, one builder (`build.py`).

- `protocol.py`: ``Captioner`` (what the bootstrap calls) and ``TrainableCaptioner`` (what training
  and likelihood scoring call), ``require_trainable``;
- `blip_ved.py`: ``BlipVedCaptioner``, BLIP and VisionEncoderDecoder checkpoints (trainable: loss,
  log-likelihood);
- `prompted_vlm.py`: ``PromptedCaptioner``, prompted image-text-to-text VLMs (BLIP-2, LLaVA,
  Qwen2-VL, ...), caption only;
- `endpoint.py`: ``EndpointCaptioner``, an OpenAI-compatible server (vLLM, SGLang), caption only;
- `generation.py`: the decoding flags and seeded generation the two in-process families share;
- `build.py`: ``build_captioner``, and ``captioner_class``, the one choice of class from a config.
"""
