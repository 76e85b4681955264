"""`LlavaStudent`: masks and splicing, freezing per stage, a few training steps, generation, reload."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmw2s.models.llava import IGNORE_INDEX, IMAGE_TOKEN_ID, LlavaStudent
from mmw2s.models.llava_spec import LlavaSpec

COLORS = ["red", "blue", "green", "yellow"]
QUESTION = "What color is the circle?"


def conversations() -> list[list[tuple[str, str]]]:
    return [[(f"<image>\n{QUESTION}", c), ("How many objects are there?", "1")] for c in COLORS]


def texts() -> list[str]:
    return [t for conv in conversations() for q, a in conv for t in (q, a)]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [Image.new("RGB", (64, 64), c) for c in COLORS]


@pytest.fixture
def student() -> LlavaStudent:
    # A short system prompt keeps sequences (and CPU steps) short.
    spec = LlavaSpec(vision_tower="mmw2s_convnet_tiny", lm="llama-tiny", max_length=64, seed=0,
                     system_prompt="Answer about the image.")
    return LlavaStudent.build(spec, texts())


def test_image_placeholder_expands_and_only_answers_are_labels(student):
    enc = student.encode_conversation(conversations()[0])
    ids, labels = enc["input_ids"], enc["labels"]
    assert ids.count(IMAGE_TOKEN_ID) == student.num_image_tokens == 16  # 4x4 grid at block -2
    learned = [t for t in labels if t != IGNORE_INDEX]
    tok = student.tokenizer
    assert tok.decode(learned, skip_special_tokens=True).split() == ["red", "1"]
    assert learned.count(tok.eos_token_id) == 2  # each answer ends with eos
    assert all(lab == IGNORE_INDEX for t, lab in zip(ids, labels) if t == IMAGE_TOKEN_ID)


def test_spliced_embeddings_carry_the_projected_image(student, images):
    batch = student.collate([student.encode_conversation(c) for c in conversations()[:2]])
    pixels = student.preprocess(images[:2])
    embeds = student.embed(pixels, batch["input_ids"])  # (B, T, D)
    image_rows = batch["input_ids"] == IMAGE_TOKEN_ID
    expected = student.encode_images(pixels).reshape(-1, embeds.shape[-1])
    assert torch.allclose(embeds[image_rows], expected)


def test_stage_1_trains_the_projector_only_and_stage_2_also_the_lm(student, images):
    batch = student.collate([student.encode_conversation(c) for c in conversations()])
    pixels = student.preprocess(images)
    assert student.freeze(1) == ["projector"]
    student(pixels, **batch).loss.backward()
    assert all(p.grad is None for p in student.lm.parameters())
    assert all(p.grad is None for p in student.vision.parameters())
    assert all(p.grad is not None for p in student.projector.parameters())
    student.zero_grad(set_to_none=True)
    assert student.freeze(2) == ["projector", "lm"]
    student(pixels, **batch).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.lm.parameters())
    assert all(p.grad is None for p in student.vision.parameters())
    assert student.freeze(1, train_lm=True) == ["projector", "lm"]  # a from-scratch LM may learn captions
    assert all(p.requires_grad for p in student.lm.parameters())


@pytest.mark.slow
def test_student_learns_answers_from_the_image_generates_and_reloads_identically(student, images, tmp_path):
    batch = student.collate([student.encode_conversation(c[:1]) for c in conversations()])
    pixels = student.preprocess(images)
    student.freeze(2)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    student.train()
    for _ in range(20):
        loss = student(pixels, **batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    student.eval()
    assert losses[-1] < 0.2 * losses[0]
    answers = student.generate(pixels, [QUESTION] * 4, max_new_tokens=4)
    assert answers == COLORS  # the same question, answered per image: the image tokens are used
    # Batched (left-padded) generation agrees with one prompt at a time.
    assert student.generate(pixels[1:2], [QUESTION], max_new_tokens=4) == [answers[1]]
    student.save_pretrained(tmp_path / "llava")
    reloaded = LlavaStudent.from_pretrained(tmp_path / "llava")
    assert reloaded.generate(reloaded.preprocess(images), [QUESTION] * 4, max_new_tokens=4) == answers
    with torch.no_grad():
        assert torch.allclose(reloaded(pixels, **batch).logits, student(pixels, **batch).logits, atol=1e-5)


def test_open_clip_vision_towers_give_image_tokens(images):
    spec = LlavaSpec(vision_source="open_clip", vision_tower="mmw2s-vit-tiny", lm="llama-tiny", vision_layer=-2)
    student = LlavaStudent.build(spec, texts())
    assert student.num_image_tokens == 64  # 8x8 patches of the ViT, class token dropped
    tokens = student.encode_images(student.preprocess(images[:1]))
    assert tokens.shape == (1, 64, student.lm.get_input_embeddings().embedding_dim)


def test_truncation_that_cuts_the_image_is_refused(student):
    small = LlavaStudent(student.vision, student.projector, student.lm, student.tokenizer,
                         LlavaSpec(vision_tower="mmw2s_convnet_tiny", max_length=12,
                                   system_prompt="Answer about the image."), student.image_cfg,
                         student.num_image_tokens)
    assert small.encode_conversation(conversations()[0]) is None


def test_a_tower_from_a_clip_folder_reloads_without_that_folder(images, tmp_path):
    import shutil

    from mmw2s.models.dual_encoders import build_dual_encoder
    from mmw2s.models.specs import DualEncoderSpec

    build_dual_encoder(DualEncoderSpec(arch="mmw2s-conv-tiny", image_size=32, seed=3)).save(tmp_path / "clip")
    spec = LlavaSpec(vision_source="open_clip", vision_tower=f"local-dir:{tmp_path / 'clip'}", vision_layer=-2,
                     lm="llama-tiny", max_length=64, system_prompt="Answer about the image.", image_positions=True)
    student = LlavaStudent.build(spec, texts()).eval()
    # each image token carries its own learned position on top of the projected features
    pixels = student.preprocess(images)
    with torch.no_grad():
        added = student.encode_images(pixels) - student.projector(student.vision(pixels))  # (B, N, D)
    assert torch.allclose(added[0], added[1], atol=1e-5) and not torch.allclose(added[0, 0], added[0, 1])
    student.save_pretrained(tmp_path / "llava")
    shutil.rmtree(tmp_path / "clip")  # e.g. the run folder of the CLIP was cleaned up, or moved
    reloaded = LlavaStudent.from_pretrained(tmp_path / "llava")
    assert reloaded.image_cfg == student.image_cfg
    assert torch.allclose(reloaded.encode_images(pixels), student.encode_images(pixels))
    assert reloaded.generate(pixels, [QUESTION] * 4, max_new_tokens=3) == student.generate(
        pixels, [QUESTION] * 4, max_new_tokens=3)
    reloaded.save_pretrained(tmp_path / "again")  # and a reloaded student saves a folder that reloads
    again = LlavaStudent.from_pretrained(tmp_path / "again")
    assert torch.allclose(again.encode_images(pixels), student.encode_images(pixels))
