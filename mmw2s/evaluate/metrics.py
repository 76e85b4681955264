"""Evaluation metrics, defined as LAION-AI/CLIP_benchmark defines them, plus caption scores.

- ``acc1`` / ``acc5``: fraction of samples whose target is among the k highest logits; ``acc5`` is
  undefined (None here, NaN in CLIP_benchmark) with fewer than 5 classes.
- ``mean_per_class_recall``: balanced accuracy, the mean over the classes present in the targets of
  the recall of the top-1 prediction (sklearn's ``balanced_accuracy_score``).
- ``image_retrieval_recall@k`` (text -> image) and ``text_retrieval_recall@k`` (image -> text): the
  fraction of queries with at least one positive among their top k; an image with several captions
  is a hit when any of them is retrieved; a caption is a positive of its own image only (a caption
  shared by several images counts for its own, as in CLIP_benchmark; `shared=True` is our variant).
- ``acc`` of image-caption selection: the true caption (index 0) scores highest.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch

from mmw2s.data_pipelines.world import COLORS, SHAPES, SIZES

RECALL_KS = (1, 5, 10)


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[float]:
    """Top-k accuracies of ``logits`` (N, C) against class indices ``target`` (N,)."""
    top = logits.topk(max(ks), dim=1).indices  # (N, kmax), best first
    hits = top.eq(target.view(-1, 1))  # (N, kmax)
    return [hits[:, :k].any(dim=1).float().mean().item() for k in ks]


def mean_per_class_recall(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Balanced accuracy: mean over classes that occur in ``target`` of their top-1 recall."""
    recalls = [(pred[target == c] == c).float().mean().item() for c in target.unique().tolist()]
    return sum(recalls) / len(recalls)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """``(C, C)`` counts: row = true class, column = predicted class."""
    flat = target.long() * classes + pred.long()
    return torch.bincount(flat, minlength=classes * classes).reshape(classes, classes)


def classification_metrics(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float | None]:
    """``acc1``, ``acc5`` (None with fewer than 5 classes) and ``mean_per_class_recall``."""
    logits, target = logits.float(), target.long()
    if logits.shape[1] >= 5:
        acc1, acc5 = topk_accuracy(logits, target, (1, 5))
    else:
        (acc1,), acc5 = topk_accuracy(logits, target, (1,)), None
    return {"acc1": acc1, "acc5": acc5,
            "mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), target)}


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """Per query (row): 1.0 when any positive column is among its ``k`` best scores, else 0.0.

    ``scores`` and ``positives`` are (Q, G): queries by gallery items. Ties are broken as
    ``torch.topk`` breaks them.
    """
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (Q, k)
    return positives.gather(1, top).any(dim=1).float()


def retrieval_metrics(scores: torch.Tensor, positives: torch.Tensor,
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Recall@k both ways from text-by-image ``scores`` (T, I) and a boolean ``positives`` (T, I).

    ``image_retrieval_recall@k``: each text retrieves images. ``text_retrieval_recall@k``: each image
    retrieves texts, a hit when any of its captions is in the top k.
    """
    positives = positives.bool()
    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = recall_at_k(scores, positives, k).mean().item()
        metrics[f"text_retrieval_recall@{k}"] = recall_at_k(scores.T, positives.T, k).mean().item()
    return metrics


def positives_from_captions(captions: Sequence[Sequence[str]],
                            shared: bool = False) -> tuple[list[str], torch.Tensor]:
    """Flatten per-image captions into texts and the (T, I) positive matrix.

    A text is positive for its own image (CLIP_benchmark's definition). With ``shared=True`` it is
    also positive for every other image that lists the identical text (two scenes of the world can
    share a caption); recall is then higher, and no longer comparable with CLIP_benchmark's.
    """
    texts = [t for caps in captions for t in caps]
    positives = torch.zeros(len(texts), len(captions), dtype=torch.bool)
    owners: dict[str, set[int]] = {}
    for i, caps in enumerate(captions):
        for t in caps:
            owners.setdefault(t, set()).add(i)
    row = 0
    for i, caps in enumerate(captions):
        for t in caps:
            positives[row, sorted(owners[t]) if shared else i] = True
            row += 1
    return texts, positives


def selection_accuracy(scores: Sequence[torch.Tensor]) -> dict[str, float]:
    """``acc``: fraction of images whose true caption (candidate 0) scores highest."""
    hits = [float(s.argmax().item() == 0) for s in scores]
    return {"acc": sum(hits) / len(hits)}


# --------------------------------------------------------------------------------------------
# Caption accuracy against the world's scene truth

_PHRASE = re.compile(r"\b(?:(?P<size>%s)\s+)?(?:(?P<color>%s)\s+)?(?P<shape>%s)\b" % (
    "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES)))
_ATTRIBUTE_WORDS = frozenset(SIZES + COLORS + SHAPES)


def mentioned_objects(caption: str) -> list[dict]:
    """Object phrases of a caption: ``[{"size", "color", "shape"}]`` (size, color may be None)."""
    return [m.groupdict() for m in _PHRASE.finditer(caption.lower())]


def caption_scores(caption: str, scene: dict, gold: str) -> dict[str, float]:
    """Caption accuracy of one caption against its scene.

    ``exact_match``: equals the gold caption (case and outer space ignored). ``object_recall``:
    fraction of the true objects whose colour and shape are named together in one phrase.
    ``hallucination_rate``: fraction of the size, colour and shape words said that no object of the
    scene has (0 when none is said).
    """
    objects = scene["objects"]
    mentions = mentioned_objects(caption)
    found = sum(any(m["color"] == o["color"] and m["shape"] == o["shape"] for m in mentions)
                for o in objects)
    present = {o[a] for o in objects for a in ("size", "color", "shape")}
    said = [w for w in re.findall(r"[a-z]+", caption.lower()) if w in _ATTRIBUTE_WORDS]
    wrong = sum(w not in present for w in said)
    return {"exact_match": float(caption.strip().lower() == gold.strip().lower()),
            "object_recall": found / len(objects),
            "hallucination_rate": wrong / len(said) if said else 0.0}


def mean_caption_scores(captions: Sequence[str], truths: Sequence[dict]) -> dict[str, float]:
    """Mean of ``caption_scores`` over images; ``truths`` are ``{"scene", "gold_caption"}`` (the
    captions suite's metrics; `mmw2s audit` scores captions its own way: `caption_attribute_accuracy`)."""
    rows = [caption_scores(c, t["scene"], t["gold_caption"]) for c, t in zip(captions, truths)]
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
