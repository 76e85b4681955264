"""Tests of models/: tiny captioners, dual encoders, the BLIP ITM filter and the student losses.

Everything is built small from scratch on a handful of synthetic images; nothing downloads.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    BlipForConditionalGeneration,
    BlipForImageTextRetrieval,
    VisionEncoderDecoderModel,
)

from mmw2s import models  # noqa: E402
from mmw2s.models import (  # noqa: E402
    LOSSES,
    BlipItmFilter,
    BlipVedCaptioner,
    CaptionFilter,
    CaptionerSpec,
    DualEncoder,
    DualEncoderSpec,
    ItmSpec,
    aux_confidence_coef,
    aux_confidence_contrastive_loss,
    build_captioner,
    build_dual_encoder,
    build_filter,
    build_loss,
    build_word_tokenizer,
    contrastive_loss,
    score_candidates,
)

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def make_pairs(size: int = 64) -> tuple[list[Image.Image], list[str]]:
    """8 images of one colored shape on gray, with their captions."""
    images, captions = [], []
    for color, rgb in COLORS.items():
        for shape in SHAPES:
            img = Image.new("RGB", (size, size), (120, 120, 120))
            draw = ImageDraw.Draw(img)
            box = [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
            images.append(img)
            captions.append(f"a {color} {shape} on gray.")
    return images, captions


@pytest.fixture(scope="module")
def pairs() -> tuple[list[Image.Image], list[str]]:
    return make_pairs()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP's
    spinning threads slow every step ~10x; restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_steps(loss_fn, params, steps: int, lr: float = 2e-3) -> list[float]:
    """Run ``steps`` AdamW steps on ``loss_fn()``; returns the loss curve."""
    torch.manual_seed(0)
    opt = torch.optim.AdamW(params, lr=lr)
    curve = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


# ---- tokenizer ---------------------------------------------------------------------------------


def test_word_tokenizer_encodes_decodes_and_reloads(tmp_path):
    tok = build_word_tokenizer(["A red circle.", "a blue square"], model_max_length=16)
    ids = tok("a Red circle")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[BOS]", "a", "red", "circle", "[SEP]"]
    assert tok.decode(tok("a red circle.")["input_ids"], skip_special_tokens=True) == "a red circle."
    assert tok.convert_ids_to_tokens(tok("a purple circle")["input_ids"])[2] == "[UNK]"
    assert tok.pad_token_id == 0
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a red circle")["input_ids"] == ids
    assert again.model_max_length == 16


def test_word_tokenizer_caps_vocabulary():
    captions = ["a a a b b c", "a b d"]
    tok = build_word_tokenizer(captions, max_vocab=8)  # 6 special tokens + the 2 most frequent words
    assert len(tok) == 8
    assert tok.convert_ids_to_tokens(tok("a b c", add_special_tokens=False)["input_ids"]) == ["a", "b", "[UNK]"]


# ---- captioners --------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["blip-tiny", "ved-tiny", "ved-mit-tiny"])
def trained_captioner(request, pairs):
    """A registered tiny captioner trained 30 steps on the 8 pairs, with its loss curve."""
    images, captions = pairs
    cap = build_captioner(CaptionerSpec(name=request.param), train_captions=captions)
    pixels = cap.preprocess(images)
    curve = train_steps(lambda: cap.loss(pixels, captions), cap.model.parameters(), steps=30)
    cap.model.eval()
    return cap, pixels, curve


def test_captioner_loss_falls(trained_captioner):
    _, _, curve = trained_captioner
    assert curve[-1] < 0.5 * curve[0], curve


def test_captioner_generates_requested_number_with_each_method(trained_captioner):
    cap, pixels, _ = trained_captioner
    for method, n in [("greedy", 1), ("beam", 2), ("nucleus", 3)]:
        out = cap.generate(pixels[:3], num_captions=n, method=method, max_new_tokens=8, seed=0)
        assert len(out) == 3 and all(len(group) == n for group in out), (method, out)
        assert all(isinstance(t, str) for group in out for t in group)
    with pytest.raises(ValueError):
        cap.generate(pixels[:1], num_captions=2, method="greedy")
    with pytest.raises(ValueError):
        cap.generate(pixels[:1], method="topk")


def test_captioner_nucleus_seed_is_reproducible(trained_captioner):
    cap, pixels, _ = trained_captioner
    a = cap.generate(pixels[:4], num_captions=2, method="nucleus", max_new_tokens=8, seed=7)
    b = cap.generate(pixels[:4], num_captions=2, method="nucleus", max_new_tokens=8, seed=7)
    assert a == b


def test_captioner_learns_what_the_image_shows(trained_captioner, pairs):
    """After 30 steps the captions name each image's color (shape takes longer to learn), and the
    log-likelihood ranks the true caption above the same caption with another color."""
    cap, pixels, _ = trained_captioner
    _, captions = pairs
    greedy = [g[0] for g in cap.generate(pixels, method="greedy", max_new_tokens=8)]
    assert sum(g.split()[:2] == c.split()[:2] for g, c in zip(greedy, captions)) >= 6, greedy
    with torch.no_grad():
        matrix = cap.log_likelihood_matrix(pixels, captions)  # (8, 8): image x caption
        paired = cap.log_likelihood(pixels, captions)
    torch.testing.assert_close(matrix.diagonal(), paired, atol=1e-4, rtol=1e-4)
    other_color = (torch.arange(8) + 2) % 8  # same shape, next color
    assert (matrix.diagonal() > matrix[torch.arange(8), other_color]).float().mean() >= 0.75


def test_captioner_save_reload_is_identical(trained_captioner, pairs, tmp_path):
    cap, pixels, _ = trained_captioner
    _, captions = pairs
    cap.save(tmp_path)
    again = BlipVedCaptioner.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again.log_likelihood(pixels, captions), cap.log_likelihood(pixels, captions))
    assert again.generate(pixels, method="beam", num_captions=2, max_new_tokens=8) == cap.generate(
        pixels, method="beam", num_captions=2, max_new_tokens=8
    )
    torch.testing.assert_close(again.preprocess(pairs[0][:2]), pixels[:2])


def test_saved_captioner_loads_with_plain_transformers(trained_captioner, pairs, tmp_path):
    """The saved folder is a plain HF folder: model, tokenizer and image processor load by path."""
    cap, _, _ = trained_captioner
    cap.save(tmp_path)
    model_cls = BlipForConditionalGeneration if cap.family == "blip" else VisionEncoderDecoderModel
    model = model_cls.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    pixels = AutoImageProcessor.from_pretrained(tmp_path)(images=pairs[0][:2], return_tensors="pt").pixel_values
    if cap.family == "blip":
        assert AutoProcessor.from_pretrained(tmp_path).tokenizer.get_vocab() == tokenizer.get_vocab()
    ids = model.generate(pixel_values=pixels, max_new_tokens=8, do_sample=False)
    texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert texts == [g[0] for g in cap.generate(pixels, method="greedy", max_new_tokens=8)]


def test_mit_captioner_learns_where_objects_are():
    """The demo's captioner exists for this: a coarse grid of tokens whose receptive fields span
    the image tells the decoder where an object is (the ViT captioners above still name random
    positions after hundreds of steps on the world). Colour and corner vary independently."""
    images, captions = [], []
    corners = {"top left": (0, 0), "top right": (1, 0), "bottom left": (0, 1), "bottom right": (1, 1)}
    for color in ("red", "blue"):
        for name, (cx, cy) in corners.items():
            img = Image.new("RGB", (32, 32), (120, 120, 120))
            x0, y0 = 3 + 17 * cx, 3 + 17 * cy
            ImageDraw.Draw(img).rectangle([x0, y0, x0 + 10, y0 + 10], fill=COLORS[color])
            images.append(img)
            captions.append(f"a {color} square in the {name}")
    cap = build_captioner(CaptionerSpec(name="ved-mit-tiny", max_length=12), train_captions=captions)
    pixels = cap.preprocess(images)
    train_steps(lambda: cap.loss(pixels, captions), cap.model.parameters(), steps=60)
    cap.model.eval()
    greedy = [g[0] for g in cap.generate(pixels, method="greedy", max_new_tokens=8)]
    assert sum(g.endswith(c.split(" in the ")[1]) for g, c in zip(greedy, captions)) >= 7, greedy


def test_registered_captioner_needs_training_captions():
    with pytest.raises(ValueError, match="train_captions"):
        build_captioner(CaptionerSpec(name="blip-tiny"))


def test_captioner_spec_image_size_overrides_registered_config(pairs):
    images, captions = pairs
    cap = build_captioner(CaptionerSpec(name="blip-tiny", image_size=32), train_captions=captions)
    assert cap.preprocess(images[:2]).shape == (2, 3, 32, 32)
    assert len(cap.generate(cap.preprocess(images[:2]), method="greedy", max_new_tokens=4)) == 2


# ---- dual encoders -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_dual(pairs):
    images, captions = pairs
    dual = build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny"))
    pixels, tokens = dual.preprocess(images), dual.tokenize(captions)

    def step() -> torch.Tensor:
        out = dual.model(pixels, tokens)
        return contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"])

    curve = train_steps(step, dual.model.parameters(), steps=20, lr=1e-3)
    dual.model.eval()
    return dual, pixels, curve


def test_dual_encoder_contrastive_loss_falls(trained_dual):
    _, _, curve = trained_dual
    assert curve[-1] < 0.5 * curve[0], curve


def test_dual_encoder_saved_state_dict_loads_in_open_clip(trained_dual, pairs, tmp_path):
    dual, pixels, _ = trained_dual
    _, captions = pairs
    weights = dual.save(tmp_path)
    expected_img, expected_txt = dual.encode_image(pixels), dual.encode_text(captions)
    model, _, preprocess_val = open_clip.create_model_and_transforms("mmw2s-conv-tiny", pretrained=str(weights))
    model.eval()
    tokenizer = open_clip.get_tokenizer("mmw2s-conv-tiny")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels, normalize=True), expected_img)
        torch.testing.assert_close(model.encode_text(tokenizer(captions), normalize=True), expected_txt)
    torch.testing.assert_close(torch.stack([preprocess_val(im) for im in pairs[0]]), pixels)
    local, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    with torch.no_grad():
        torch.testing.assert_close(local.eval().encode_image(pixels, normalize=True), expected_img)
    again = DualEncoder.load(tmp_path)
    again.model.eval()
    torch.testing.assert_close(again.score(pixels, captions), dual.score(pixels, captions))
    from_file = DualEncoder.load(weights, arch="mmw2s-conv-tiny")
    torch.testing.assert_close(from_file.model.eval().encode_text(from_file.tokenize(captions)).detach(),
                               model.encode_text(tokenizer(captions)).detach())


def test_dual_encoder_scores_matching_pairs_higher(trained_dual, pairs):
    dual, pixels, _ = trained_dual
    _, captions = pairs
    matched = dual.score(pixels, captions)
    shuffled = dual.score(pixels, captions[1:] + captions[:1])
    assert matched.shape == (8,) and matched.abs().max() <= 1.0 + 1e-5
    assert matched.mean() > shuffled.mean()
    assert isinstance(dual, CaptionFilter)


@pytest.mark.parametrize("arch", models.list_dual_encoders())
def test_registered_architectures_build_and_embed(arch, pairs):
    dual = build_dual_encoder(DualEncoderSpec(arch=arch))
    pixels = dual.preprocess(pairs[0][:2], train=True)
    assert pixels.shape == (2, 3, 64, 64)
    with torch.no_grad():
        emb = dual.encode_image(pixels)
    assert emb.shape == (2, dual.model_cfg["embed_dim"])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


def test_timm_towers_are_in_timm_registry():
    assert {"mmw2s_convnet_tiny", "mmw2s_convnet_small", "mmw2s_convnet_base"} <= set(timm.list_models("mmw2s_*"))
    tower = timm.create_model("mmw2s_convnet_tiny", num_classes=10)
    assert tower(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_architecture_from_json_path(tmp_path, pairs):
    cfg = json.loads((models.dual_encoders.MODEL_CONFIG_DIR / "mmw2s-conv-tiny.json").read_text())
    cfg["embed_dim"] = 32
    cfg["text_cfg"]["context_length"] = 16
    path = tmp_path / "my-clip.json"
    path.write_text(json.dumps(cfg))
    dual = build_dual_encoder(DualEncoderSpec(arch=str(path)))
    assert dual.tokenize(["a red circle"]).shape == (1, 16)
    assert dual.encode_image(dual.preprocess(pairs[0][:1])).shape == (1, 32)


# ---- BLIP ITM filter ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def itm(pairs):
    return build_itm_filter_tiny(pairs[1])


def build_itm_filter_tiny(captions: list[str]) -> BlipItmFilter:
    flt = build_filter(ItmSpec(name="blip-tiny", mode="itm"), train_captions=captions)
    flt.model.eval()
    return flt


def test_itm_scores_are_probabilities_and_itc_cosines(itm, pairs):
    images, captions = pairs
    p = itm.score(images, captions, mode="itm")
    c = itm.score(images, captions, mode="itc")
    assert p.shape == c.shape == (8,)
    assert ((p >= 0) & (p <= 1)).all()
    assert ((c >= -1 - 1e-5) & (c <= 1 + 1e-5)).all()
    assert isinstance(itm, CaptionFilter)


def test_itm_save_reload_is_identical(itm, pairs, tmp_path):
    images, captions = pairs
    itm.save(tmp_path)
    again = BlipItmFilter.load(tmp_path)
    assert isinstance(BlipForImageTextRetrieval.from_pretrained(tmp_path), BlipForImageTextRetrieval)
    for mode in ("itm", "itc"):
        torch.testing.assert_close(again.score(images, captions, mode=mode), itm.score(images, captions, mode=mode))


def test_itm_loss_trains_both_heads(pairs):
    """``loss`` (ITC + ITM with hard negatives) is finite and reaches both heads and both towers."""
    images, captions = pairs
    flt = build_itm_filter_tiny(captions)
    flt.model.train()
    loss = flt.loss(flt.preprocess(images), captions)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    for module in (flt.model.itm_head, flt.model.vision_proj, flt.model.text_proj, flt.model.vision_model):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_build_filter_dispatches_on_spec_type(pairs):
    assert isinstance(build_filter(DualEncoderSpec(arch="mmw2s-conv-tiny")), DualEncoder)
    assert isinstance(build_filter(ItmSpec(mode="itc"), train_captions=pairs[1]), BlipItmFilter)
    with pytest.raises(TypeError):
        build_filter(CaptionerSpec())
    with pytest.raises(ValueError, match="mode"):
        build_filter(ItmSpec(mode="clip"), train_captions=pairs[1])


def test_score_candidates_groups_scores_per_image(trained_dual, pairs):
    dual, _, _ = trained_dual
    images, captions = pairs
    candidates = [[captions[0], captions[1]], [], [captions[2]]]
    out = score_candidates(dual, images[:3], candidates)
    assert [len(s) for s in out] == [2, 0, 1]
    direct = dual.score(images[:1], captions[:1])
    assert out[0][0] == pytest.approx(direct.item(), abs=1e-5)


# ---- losses ------------------------------------------------------------------------------------


def _embeddings(n: int = 6, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(n, dim, generator=gen), dim=-1)
    return img, txt


def test_contrastive_loss_prefers_aligned_pairs():
    img, _ = _embeddings()
    aligned = contrastive_loss(img, img, 20.0)
    shuffled = contrastive_loss(img, img.roll(1, dims=0), 20.0)
    assert aligned < 0.1 < shuffled
    # matches open_clip's own CLIP loss
    reference = open_clip.ClipLoss()(img, img.roll(1, dims=0), torch.tensor(20.0))
    torch.testing.assert_close(shuffled, reference)


def test_weighted_loss_drops_zero_weight_samples():
    img, txt = _embeddings()
    plain = contrastive_loss(img, txt, 10.0)
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0, weights=torch.ones(6)), plain)
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0, weights=torch.full((6,), 3.0)), plain)
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    bad_txt = txt.clone()
    bad_txt[2] = -img[2]  # sample 2's own pair becomes terrible ...
    with_bad = contrastive_loss(img, bad_txt, 10.0, weights=weights)
    without_bad = contrastive_loss(img, txt, 10.0, weights=weights)
    # ... which the weighted loss only sees through sample 2's role as a negative for the others
    assert abs(with_bad - without_bad) < abs(contrastive_loss(img, bad_txt, 10.0) - plain)
    per_row = [contrastive_loss(img, txt, 10.0, weights=torch.eye(6)[i]) for i in range(6)]
    torch.testing.assert_close(without_bad, torch.stack([per_row[i] for i in (0, 1, 3, 4, 5)]).mean())
    with pytest.raises(ValueError):
        contrastive_loss(img, txt, 10.0, weights=-torch.ones(6))


def test_aux_confidence_loss_schedule_and_limits():
    img, txt = _embeddings()
    plain = contrastive_loss(img, txt, 10.0)
    torch.testing.assert_close(aux_confidence_contrastive_loss(img, txt, 10.0, step_frac=0.0), plain)
    assert aux_confidence_coef(0.1, aux_coef=0.5, warmup_frac=0.2) == pytest.approx(0.25)
    assert aux_confidence_coef(0.9, aux_coef=0.5, warmup_frac=0.2) == pytest.approx(0.5)
    # a student that agrees with the weak pairing: hardened predictions are the weak targets
    torch.testing.assert_close(aux_confidence_contrastive_loss(img, img, 10.0, step_frac=1.0), contrastive_loss(img, img, 10.0))
    # a confident student that disagrees: the loss pulls less toward the weak pairing
    swapped = img.roll(1, dims=0)
    assert aux_confidence_contrastive_loss(img, swapped, 10.0, step_frac=1.0) < contrastive_loss(img, swapped, 10.0)


def test_losses_registry_builds_each_loss():
    img, txt = _embeddings()
    assert set(LOSSES) == {"contrastive", "weighted", "aux_confidence"}
    plain = build_loss("contrastive")(img, txt, 10.0)
    torch.testing.assert_close(build_loss("weighted")(img, txt, 10.0, weights=torch.ones(6)), plain)
    torch.testing.assert_close(build_loss("aux_confidence", aux_coef=0.3)(img, txt, 10.0, step_frac=0.0), plain)
    with pytest.raises(ValueError):
        build_loss("weighted")(img, txt, 10.0)
    with pytest.raises(KeyError):
        build_loss("focal")


def test_captioner_scores_texts_longer_than_its_position_table(pairs, tmp_path):
    images, captions = pairs
    cap = build_captioner(CaptionerSpec(name="blip-tiny", max_length=12), train_captions=captions)
    cap.save(tmp_path)
    again = BlipVedCaptioner.load(tmp_path, max_length=32)  # an eval config's default, longer than the model's
    assert again.max_length == 12
    long_text = " ".join(captions) * 3
    scores = again.log_likelihood(again.preprocess(images[:2]), [long_text, long_text])
    assert torch.isfinite(scores).all()
