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

Duplicate captions (``duplicates="multi_positive"``, each loss's constructor). A web batch holds
identical captions (boilerplate alt-text, short synthetic captions, the world's repeated scenes).
With the one-hot target, image i is pushed away from caption j even when caption j *is* caption i,
a target no model can reach: identical captions have identical embeddings. With
``multi_positive`` the caller passes ``caption_ids`` ``(B,)`` (equal ids = identical captions)
and every column whose caption equals the row's is a positive: the target of row i is uniform
over ``{j : id_j == id_i}`` (multi-positive InfoNCE, as in SupCon's, Khosla et al. 2020, label
sets; both directions, the relation is symmetric). With distinct captions it is exactly the plain
loss. In ``aux_confidence`` the hardened prediction is the student's argmax *caption*: spread the
same way over the columns sharing the argmax column's caption, so the student is not made to
prefer one copy of a caption over another at random.
Where identical captions have identical embeddings (a text tower without dropout), the one-hot
target's push on a copy cancels its pull: ``contrastive`` and ``weighted`` then have the same
value and parameter gradients either way, and ``multi_positive`` changes only the hardened
text -> image target of ``aux_confidence`` (all copies of a caption hardening to one image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair_logits(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Scaled cosine logits ``(B, B)``: row i = image i against every text."""
    return logit_scale * img_emb.float() @ txt_emb.float().t()


DUPLICATES = ("distinct", "multi_positive")


def positive_targets(caption_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Row-normalized positives ``(B, B)``: row i uniform over the j whose caption id equals i's.

    ``caption_ids`` ``(B,)``: any integers, equal exactly when the captions are identical. The
    matrix is symmetric before normalization, so it serves both directions of the loss.
    """
    ids = caption_ids.flatten()
    same = (ids[:, None] == ids[None, :]).to(dtype)  # (B, B), diagonal always 1
    return same / same.sum(dim=1, keepdim=True)


def _targets(logits: torch.Tensor, caption_ids: torch.Tensor | None) -> torch.Tensor:
    """The weak target of each row ``(B, B)``: one-hot on the pair, or spread over duplicates."""
    if caption_ids is None:
        return torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
    if caption_ids.numel() != logits.shape[0]:
        raise ValueError(f"caption_ids must be ({logits.shape[0]},), got {tuple(caption_ids.shape)}")
    return positive_targets(caption_ids.to(logits.device), logits.dtype)


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
    caption_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; with ``weights`` ``(B,)`` the filter-score-weighted version.

    With ``caption_ids`` ``(B,)`` identical captions are shared positives (multi-positive target).
    """
    logits = _pair_logits(img_emb, txt_emb, logit_scale)  # (B, B)
    if caption_ids is None:  # the plain path, unchanged to the bit
        labels = torch.arange(logits.shape[0], device=logits.device)
        per_sample = 0.5 * (
            F.cross_entropy(logits, labels, reduction="none") + F.cross_entropy(logits.t(), labels, reduction="none")
        )  # (B,)
        return _weighted_mean(per_sample, weights)
    target = _targets(logits, caption_ids)  # (B, B), symmetric support
    per_sample = 0.5 * (
        F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.t(), target, reduction="none")
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
    caption_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Burns et al. 2023 auxiliary-confidence loss over the batch's image-text logits.

    With ``a = aux_confidence_coef(step_frac, aux_coef, warmup_frac)`` equal to 0 this is exactly
    ``contrastive_loss``. See the module docstring for the adaptation. With ``caption_ids`` both
    the weak target and the hardened prediction spread over identical captions.
    """
    coef = aux_confidence_coef(step_frac, aux_coef, warmup_frac)
    logits = _pair_logits(img_emb, txt_emb, logit_scale)  # (B, B)
    weak = _targets(logits, caption_ids)  # (B, B): one-hot rows, or spread over duplicates

    def _direction(lg: torch.Tensor) -> torch.Tensor:
        picked = lg.detach().argmax(dim=1)  # (B,), no gradient
        # the argmax column's caption: its row of `weak` (itself alone when captions are distinct)
        hard = weak[picked] if caption_ids is not None else F.one_hot(picked, lg.shape[1]).to(lg.dtype)
        target = (1.0 - coef) * weak + coef * hard
        return F.cross_entropy(lg, target, reduction="none")  # (B,)

    per_sample = 0.5 * (_direction(logits) + _direction(logits.t()))
    return _weighted_mean(per_sample, weights)


class _DuplicateAware:
    """How a loss treats identical captions in a batch: ``distinct`` (each pair its own class, the
    one-hot target of CLIP) or ``multi_positive`` (shared positives; needs ``caption_ids``)."""

    def __init__(self, duplicates: str = "distinct"):
        if duplicates not in DUPLICATES:
            raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
        self.duplicates = duplicates

    def _ids(self, caption_ids: torch.Tensor | None) -> torch.Tensor | None:
        """The caption ids the loss uses: None unless multi-positive, where they are required."""
        if self.duplicates == "distinct":
            return None
        if caption_ids is None:
            raise ValueError("duplicates='multi_positive' needs caption_ids (equal ids = identical captions)")
        return caption_ids


class ContrastiveLoss(_DuplicateAware):
    """Plain CLIP loss; ignores weights and the schedule (uniform call signature for trainers)."""

    def __call__(self, img_emb, txt_emb, logit_scale, *, weights=None, step_frac: float = 0.0,
                 caption_ids: torch.Tensor | None = None) -> torch.Tensor:
        return contrastive_loss(img_emb, txt_emb, logit_scale, caption_ids=self._ids(caption_ids))


class WeightedContrastiveLoss(_DuplicateAware):
    """CLIP loss with per-sample weights (filter scores); weights are required."""

    def __call__(self, img_emb, txt_emb, logit_scale, *, weights=None, step_frac: float = 0.0,
                 caption_ids: torch.Tensor | None = None) -> torch.Tensor:
        if weights is None:
            raise ValueError("the 'weighted' loss needs per-sample weights (e.g. filter scores)")
        return contrastive_loss(img_emb, txt_emb, logit_scale, weights=weights, caption_ids=self._ids(caption_ids))


class AuxConfidenceContrastiveLoss(_DuplicateAware):
    """Burns et al. 2023 auxiliary-confidence loss (contrastive form); optional sample weights."""

    def __init__(self, aux_coef: float = 0.5, warmup_frac: float = 0.2, duplicates: str = "distinct"):
        super().__init__(duplicates)
        self.aux_coef = aux_coef
        self.warmup_frac = warmup_frac

    def __call__(self, img_emb, txt_emb, logit_scale, *, weights=None, step_frac: float = 0.0,
                 caption_ids: torch.Tensor | None = None) -> torch.Tensor:
        return aux_confidence_contrastive_loss(
            img_emb, txt_emb, logit_scale, step_frac, self.aux_coef, self.warmup_frac, weights=weights,
            caption_ids=self._ids(caption_ids),
        )


# name -> loss class; ``LOSSES[name](**kwargs)`` gives a callable
# ``loss(img_emb, txt_emb, logit_scale, *, weights=None, step_frac=0.0, caption_ids=None) -> scalar``.
LOSSES = {
    "contrastive": ContrastiveLoss,
    "weighted": WeightedContrastiveLoss,
    "aux_confidence": AuxConfidenceContrastiveLoss,
}


def build_loss(name: str, **kwargs: float | str) -> ContrastiveLoss | WeightedContrastiveLoss | AuxConfidenceContrastiveLoss:
    """The loss registered as ``name`` in ``LOSSES``, with its keyword settings."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)
