"""Captioners: one protocol (`protocol.py`), three families, one builder (`build.py`).

- `blip_ved.py`: BLIP and VisionEncoderDecoder checkpoints (trainable: loss, log-likelihood);
- `prompted_vlm.py`: prompted image-text-to-text VLMs (BLIP-2, LLaVA, Qwen2-VL, ...), caption only;
- `endpoint.py`: an OpenAI-compatible server (vLLM, SGLang), caption only.
"""
