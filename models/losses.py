"""Student losses for CLIP-style training on bootstrapped captions, selectable by name (``LOSSES``).

All take L2-normalized embeddings ``img_emb`` / ``txt_emb`` of shape ``(B, D)`` where row i of
each is one (image, caption) pair, and ``logit_scale``: the multiplier itself (already
exponentiated, as open_clip's ``CLIP.forward`` returns it). The batch is the local batch; gather
embeddings across ranks before calling if a global batch is wanted.

- ``contrastive``: CLIP's symmetric InfoNCE (Radford et al. 2021): cross-entropy of each image
  over the batch's texts and of each text over the batch's images, the true pair as target.
- ``weighted``: the same, each pair's two cross-entropy terms weighted by a per-sample weight,
  e.g. the filter's score of the caption (soft CapFilt: instead of keeping / dropping a pair at a
  threshold, a caption the filter trusts less pulls less). Normalized by the sum of weights, so
  scaling all weights changes nothing; a zero weight removes the pair as an anchor (it still
  serves as a negative for the other rows: its image and text are real, only their pairing is
  doubtful).
- ``aux_confidence``: the auxiliary-confidence loss of Burns et al. 2023, "Weak-to-Strong
  Generalization" (openai/weak-to-strong, ``logconf_loss_fn``), adapted to the contrastive
  setting. The target of each row is ``(1 - a) * weak_target + a * hardened_student``:
  the weak target is the one-hot on the row's own (weakly supervised) caption, the hardened
  student prediction is the one-hot on the student's own argmax over the batch (no gradient).
  It lets a confident student overrule weak labels it disagrees with instead of imitating the
  weak supervisor's errors. ``a`` ramps linearly from 0 to ``aux_coef`` over the first
  ``warmup_frac`` of training, so early on, before the student has anything to be confident
  about, it learns from the weak targets alone. (The paper's binary version hardens at a
  threshold matching the weak labels' class balance; with one positive per row, argmax is the
  hardening.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair_logits(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Scaled cosine logits ``(B, B)``: row i = image i against every text."""
    return logit_scale * img_emb.float() @ txt_emb.float().t()


def _weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``(B,)`` losses, or their weighted mean normalized by the sum of weights."""
    if weights is None:
        return per_sample.mean()
    weights = weights.to(per_sample).flatten()
    if weights.shape != per_sample.shape:
        raise ValueError(f"weights must be ({per_sample.shape[0]},), got {tuple(weights.shape)}")
    if (weights < 0).any():
        raise ValueError("sample weights must be non-negative")
    return (weights * per_sample).sum() / weights.sum().clamp_min(1e-8)


def contrastive_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; with ``weights`` ``(B,)`` the filter-score-weighted version."""
    logits = _pair_logits(img_emb, txt_emb, logit_scale)  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    per_sample = 0.5 * (
        F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.t(), labels, reduction="none")
    )  # (B,)
    return _weighted_mean(per_sample, weights)


def aux_confidence_coef(step_frac: float, aux_coef: float = 0.5, warmup_frac: float = 0.2) -> float:
    """Weight ``a`` of the student's hardened predictions at ``step_frac`` (0..1) of training."""
    if warmup_frac <= 0:
        return aux_coef
    return aux_coef * min(1.0, max(0.0, step_frac) / warmup_frac)


def aux_confidence_contrastive_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    logit_scale: torch.Tensor | float,
    step_frac: float,
    aux_coef: float = 0.5,
    warmup_frac: float = 0.2,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Burns et al. 2023 auxiliary-confidence loss over the batch's image-text logits.

    With ``a = aux_confidence_coef(step_frac, aux_coef, warmup_frac)`` equal to 0 this is exactly
    ``contrastive_loss``. See the module docstring for the adaptation.
    """
    coef = aux_confidence_coef(step_frac, aux_coef, warmup_frac)
    logits = _pair_logits(img_emb, txt_emb, logit_scale)  # (B, B)
    weak = torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)  # (B, B) one-hot rows

    def _direction(lg: torch.Tensor) -> torch.Tensor:
        hard = F.one_hot(lg.detach().argmax(dim=1), lg.shape[1]).to(lg.dtype)  # (B, B), no gradient
        target = (1.0 - coef) * weak + coef * hard
        return F.cross_entropy(lg, target, reduction="none")  # (B,)

    per_sample = 0.5 * (_direction(logits) + _direction(logits.t()))
    return _weighted_mean(per_sample, weights)


class ContrastiveLoss:
    """Plain CLIP loss; ignores weights and the schedule (uniform call signature for trainers)."""

    def __call__(self, img_emb, txt_emb, logit_scale, *, weights=None, step_frac: float = 0.0) -> torch.Tensor:
        return contrastive_loss(img_emb, txt_emb, logit_scale)


class WeightedContrastiveLoss:
    """CLIP loss with per-sample weights (filter scores); weights are required."""

    def __call__(self, img_emb, txt_emb, logit_scale, *, weights=None, step_frac: float = 0.0) -> torch.Tensor:
        if weights is None:
            raise ValueError("the 'weighted' loss needs per-sample weights (e.g. filter scores)")
        return contrastive_loss(img_emb, txt_emb, logit_scale, weights=weights)


class AuxConfidenceContrastiveLoss:
    """Burns et al. 2023 auxiliary-confidence loss (contrastive form); optional sample weights."""

    def __init__(self, aux_coef: float = 0.5, warmup_frac: float = 0.2):
        self.aux_coef = aux_coef
        self.warmup_frac = warmup_frac

    def __call__(self, img_emb, txt_emb, logit_scale, *, weights=None, step_frac: float = 0.0) -> torch.Tensor:
        return aux_confidence_contrastive_loss(
            img_emb, txt_emb, logit_scale, step_frac, self.aux_coef, self.warmup_frac, weights=weights
        )


# name -> loss class; ``LOSSES[name](**kwargs)`` gives a callable
# ``loss(img_emb, txt_emb, logit_scale, *, weights=None, step_frac=0.0) -> scalar``.
LOSSES = {
    "contrastive": ContrastiveLoss,
    "weighted": WeightedContrastiveLoss,
    "aux_confidence": AuxConfidenceContrastiveLoss,
}


def build_loss(name: str, **kwargs: float) -> ContrastiveLoss | WeightedContrastiveLoss | AuxConfidenceContrastiveLoss:
    """The loss registered as ``name`` in ``LOSSES``, with its keyword settings."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
