"""Duplicate-aware contrastive losses: identical captions in a batch are shared positives."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmw2s.train.tasks import caption_ids
from mmw2s.models.losses import (
    aux_confidence_contrastive_loss,
    build_loss,
    contrastive_loss,
    positive_targets,
)


def _embeddings(n: int = 5, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def _expected_multi_positive(img: torch.Tensor, txt: torch.Tensor, scale: float, captions: list[str]) -> float:
    """The multi-positive InfoNCE written out term by term, in float64 Python arithmetic:
    row i's loss is -mean_{j: c_j == c_i} log softmax(row i)_j, averaged over both directions."""
    logits = (scale * img.double() @ txt.double().t()).tolist()
    n = len(captions)

    def direction(rows: list[list[float]]) -> list[float]:
        out = []
        for i in range(n):
            log_z = math.log(sum(math.exp(v) for v in rows[i]))
            positives = [j for j in range(n) if captions[j] == captions[i]]
            out.append(-sum(rows[i][j] - log_z for j in positives) / len(positives))
        return out

    cols = [[logits[j][i] for j in range(n)] for i in range(n)]
    i2t, t2i = direction(logits), direction(cols)
    return sum(0.5 * (a + b) for a, b in zip(i2t, t2i)) / n


def test_multi_positive_equals_plain_loss_when_captions_are_distinct():
    img, txt = _embeddings(6)
    ids = caption_ids([f"a caption {i}" for i in range(6)])
    weights = torch.tensor([1.0, 0.5, 0.0, 2.0, 1.0, 0.3])
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0, caption_ids=ids), contrastive_loss(img, txt, 10.0))
    torch.testing.assert_close(contrastive_loss(img, txt, 10.0, weights, caption_ids=ids),
                               contrastive_loss(img, txt, 10.0, weights))
    for frac in (0.0, 0.1, 1.0):
        torch.testing.assert_close(aux_confidence_contrastive_loss(img, txt, 10.0, frac, caption_ids=ids),
                                   aux_confidence_contrastive_loss(img, txt, 10.0, frac))
    for name, kw in (("contrastive", {}), ("weighted", {"weights": weights}), ("aux_confidence", {"step_frac": 1.0})):
        multi = build_loss(name, duplicates="multi_positive")(img, txt, 10.0, caption_ids=ids, **kw)
        torch.testing.assert_close(multi, build_loss(name)(img, txt, 10.0, **kw))


def test_multi_positive_value_and_gradient_on_a_batch_with_duplicates():
    captions = ["a red circle", "a blue square", "a red circle", "a green star", "a red circle"]
    img, txt = _embeddings(5, seed=3)
    ids = caption_ids(captions)
    assert ids[0] == ids[2] == ids[4] and len(set(ids.tolist())) == 3
    got = contrastive_loss(img, txt, 10.0, caption_ids=ids)
    assert got.item() == pytest.approx(_expected_multi_positive(img, txt, 10.0, captions), rel=1e-5)
    assert not torch.isclose(got, contrastive_loss(img, txt, 10.0))  # the duplicates change the target

    # Gradient w.r.t. the logits of row 0 (image of "a red circle"): d/dl_j = (p_j - t_j) / 2B in the
    # image->text direction, with t uniform (1/3) over columns 0, 2, 4: every copy is pulled toward,
    # none pushed away; the plain loss pushes columns 2 and 4 away (t = one-hot on column 0).
    logits = (10.0 * img @ txt.t()).requires_grad_(True)
    loss = 0.5 * (F.cross_entropy(logits, positive_targets(ids)) + F.cross_entropy(logits.t(), positive_targets(ids)))
    torch.testing.assert_close(loss, got)
    loss.backward()
    p_row = logits.detach().softmax(dim=1)[0]
    p_col = logits.detach().t().softmax(dim=1)  # text j over images: its entry for image 0
    for j in range(5):
        t = 1 / 3 if captions[j] == "a red circle" else 0.0
        expected = ((p_row[j] - t) + (p_col[j, 0] - t)) / (2 * 5)
        assert logits.grad[0, j].item() == pytest.approx(expected.item(), abs=1e-6)
    # against the plain one-hot loss, each copy (columns 2, 4) is pulled toward image 0 by exactly
    # 1/3 of a positive in each direction, (1/3 + 1/3) / 2B, and column 0 by (2/3 + 2/3) / 2B less
    plain_logits = (10.0 * img @ txt.t()).requires_grad_(True)
    labels = torch.arange(5)
    (0.5 * (F.cross_entropy(plain_logits, labels) + F.cross_entropy(plain_logits.t(), labels))).backward()
    shift = logits.grad[0] - plain_logits.grad[0]
    torch.testing.assert_close(shift, torch.tensor([4 / 3, 0, -2 / 3, 0, -2 / 3]) / 10)


def test_identical_captions_embedded_alike_make_multi_positive_contrastive_a_no_op():
    """A text tower embeds identical captions identically; then the one-hot loss's push on a copy
    cancels against its pull, and multi-positive InfoNCE has the same value and the same gradient
    on what the towers receive (images; each caption's copies summed)."""
    captions = ["a", "b", "a", "c", "a"]
    ids = caption_ids(captions)
    img, txt = _embeddings(5, seed=4)
    copies = torch.tensor([0, 2, 4])
    txt[copies] = txt[0].clone()

    def grads(**kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i, t = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        loss = contrastive_loss(i, t, 10.0, **kw)
        loss.backward()
        return loss.detach(), i.grad, t.grad[copies].sum(0)

    for got, want in zip(grads(caption_ids=ids), grads()):
        torch.testing.assert_close(got, want)


def test_aux_confidence_hardens_to_the_argmax_caption_not_one_of_its_images():
    """Two images share caption "a" and are equally close to it. The one-hot hardening sends both
    copies of "a" to the first image (argmax of a tie): a rich-get-richer pull on one image; the
    multi-positive hardening spreads over every image of the caption, so the two stay alike."""
    captions = ["a", "a", "b", "c"]
    ids = caption_ids(captions)
    img = torch.eye(4)  # (B, D)
    txt = torch.stack([torch.tensor([1.0, 1.0, 0, 0]) / 2 ** 0.5] * 2 + [torch.eye(4)[2], torch.eye(4)[3]])

    def image_grads(**kw) -> torch.Tensor:
        i = img.clone().requires_grad_(True)
        aux_confidence_contrastive_loss(i, txt, 10.0, step_frac=1.0, aux_coef=1.0, **kw).backward()
        return i.grad  # (B, D)

    multi, one_hot = image_grads(caption_ids=ids), image_grads()
    mirrored = multi[[1, 0]][:, [1, 0, 2, 3]]  # image 0 <-> image 1, dims 0 <-> 1
    torch.testing.assert_close(mirrored, multi[[0, 1]])
    assert not torch.allclose(one_hot[[1, 0]][:, [1, 0, 2, 3]], one_hot[[0, 1]], atol=1e-4)
    # here the student agrees with the weak captions caption by caption: the hardened target is the
    # weak target itself, and the loss is the multi-positive contrastive loss
    torch.testing.assert_close(aux_confidence_contrastive_loss(img, txt, 10.0, 1.0, aux_coef=1.0, caption_ids=ids),
                               contrastive_loss(img, txt, 10.0, caption_ids=ids))


def test_multi_positive_needs_caption_ids_and_a_known_mode():
    img, txt = _embeddings(3)
    with pytest.raises(ValueError, match="caption_ids"):
        build_loss("contrastive", duplicates="multi_positive")(img, txt, 10.0)
    with pytest.raises(ValueError, match="duplicates"):
        build_loss("contrastive", duplicates="dedupe")
    with pytest.raises(ValueError, match="caption_ids"):
        contrastive_loss(img, txt, 10.0, caption_ids=torch.arange(4))
    # distinct (the default) ignores ids: today's behaviour exactly
    torch.testing.assert_close(build_loss("contrastive")(img, txt, 10.0, caption_ids=torch.zeros(3)),
                               contrastive_loss(img, txt, 10.0))


def test_clip_task_gives_the_loss_ids_of_identical_captions():
    """`loss.duplicates=multi_positive` reaches the loss: the task's value is the multi-positive
    loss of its own features with ids equal exactly for identical captions."""
    from mmw2s.config import ConfigError, load_config
    from mmw2s.train.config import TrainConfig
    from mmw2s.train.tasks import ClipTask
    from mmw2s.train.texts import TextSelector

    cfg = load_config(TrainConfig, None, ["data=unused", "out=unused", "steps=10", "loss.duplicates=multi_positive",
                                          "dual_encoder.arch=mmw2s-conv-tiny", "dual_encoder.image_size=32"])
    task = ClipTask(cfg, TextSelector(cfg.text))
    texts = ["a red circle", "a blue square", "a red circle", "a red circle"]
    batch = {"pixel_values": torch.rand(4, 3, 32, 32), "texts": texts, "weights": torch.ones(4)}
    seen = {}

    def recording(*args, caption_ids=None, **kw):
        seen["ids"] = caption_ids
        return real(*args, caption_ids=caption_ids, **kw)

    real, task.loss_fn = task.loss_fn, recording
    assert torch.isfinite(task.loss(batch, step=0))
    ids = seen["ids"]
    assert ids.shape == (4,) and ids[0] == ids[2] == ids[3] and ids[0] != ids[1]
    torch.testing.assert_close(ids, caption_ids(texts))
    with pytest.raises(ConfigError, match="loss.duplicates=multi_positive"):
        load_config(TrainConfig, None, ["data=unused", "out=unused", "task=captioner", "loss.duplicates=multi_positive"])
    cfg.loss.duplicates = "distinct"
    plain = ClipTask(cfg, TextSelector(cfg.text))
    real, plain.loss_fn = plain.loss_fn, recording
    plain.loss(batch, step=0)
    assert seen["ids"] is None  # the default passes nothing: today's loss to the bit
