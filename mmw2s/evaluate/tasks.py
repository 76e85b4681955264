"""The four evaluation tasks over a `Scorer` and a `Benchmark`, batched and without gradients.

Each task returns ``(metrics, details)``: CLIP_benchmark-named metrics, and what a reader needs to
trust them (images, texts, templates used, subsets, notes).

Embedding scorers (dual encoders) follow CLIP_benchmark exactly: the text classifier is the
renormalised mean of the normalised template embeddings of each class, computed once per
benchmark; logits are cosine similarities. Pairwise scorers (captioner log-likelihood, ITM) score
every image with every class prompt; a class scores the log of the mean over its prompts of
exp(score) (a marginal over prompts; equal to the score itself with one prompt).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from typing import Any, Iterable

import torch

from mmw2s.data_pipelines.benchmark_types import CAPTIONING, CLASSIFICATION, RETRIEVAL, SELECTION, Benchmark, Example
from mmw2s.data_pipelines.caption_benchmarks import CAPTIONING_TASK
from mmw2s.evaluate import metrics as M
from mmw2s.evaluate.captioning import evaluate_captioning
from mmw2s.evaluate.common import Skipped, batched
from mmw2s.evaluate.scorers import AnswerScorer, EmbeddingScorer, PairwiseScorer, Scorer
from mmw2s.evaluate.vqa import VQA, answer


@dataclass
class TaskSettings:
    """Knobs of the tasks (from the eval config)."""
    batch_size: int = 64
    recall_k: tuple[int, ...] = M.RECALL_KS
    pairwise_max_templates: int = 4  # prompts per class for pairwise scorers (cost: N x C x T)
    pairwise_retrieval_images: int = 100  # retrieval subset for pairwise scorers (cost: N x N x ~3)
    retrieval_images: int | None = None  # retrieval subset for every scorer (comparable numbers)
    retrieval_positives: str = "own"  # "own" (CLIP_benchmark) or "shared" (identical captions count too)
    limit: int | None = None  # at most this many examples per benchmark (smoke runs)
    captioning: Any = None  # CaptioningConfig of the captioning task (None: its defaults)
    result_file: str | None = None  # MODEL__BENCH.json being made: the captioning task keeps its chunks beside it
    device: str = "auto"  # where the captioning task's CLIPScore model runs


def run_task(scorer: Scorer, bench: Benchmark, settings: TaskSettings) -> tuple[dict, dict]:
    """Evaluate ``scorer`` on ``bench``; raises `Skipped` when the pair makes no sense."""
    runners = {CLASSIFICATION: classify, RETRIEVAL: retrieve, SELECTION: select, CAPTIONING: caption,
               VQA: answer, CAPTIONING_TASK: evaluate_captioning}
    if bench.task not in runners:
        raise ValueError(f"unknown task {bench.task!r} of benchmark {bench.name}")
    if isinstance(scorer, AnswerScorer) and bench.task != VQA:
        raise Skipped(f"{type(scorer).__name__} answers questions in words; it has no image-text "
                      f"score for {bench.task}")
    if not getattr(scorer, "can_score", True) and bench.task in (CLASSIFICATION, RETRIEVAL, SELECTION):
        raise Skipped(f"{scorer.name} is a prompted VLM captioner: it writes captions (captioning, caption "
                      f"accuracy, VQA) but has no text likelihood for {bench.task}")
    examples = islice(bench.examples(), settings.limit) if settings.limit else bench.examples()
    with torch.no_grad():
        return runners[bench.task](scorer, bench, examples, settings)


# --------------------------------------------------------------------------------------------
# Zero-shot classification


def class_prompts(bench: Benchmark, max_templates: int | None = None) -> list[list[str]]:
    """Prompts of every class; at most ``max_templates`` per class, evenly spread over the list."""
    prompts = []
    for name in bench.classnames or []:
        texts = bench.class_texts(name)
        if max_templates and len(texts) > max_templates:
            step = len(texts) / max_templates
            texts = [texts[int(i * step)] for i in range(max_templates)]
        prompts.append(texts)
    return prompts


def text_classifier(scorer: EmbeddingScorer, prompts: list[list[str]], batch_size: int) -> torch.Tensor:
    """(C, D): per class, the mean of its normalised prompt embeddings, renormalised (CLIP)."""
    flat = [t for texts in prompts for t in texts]
    emb = torch.cat([scorer.encode_texts(chunk) for chunk in batched(flat, batch_size)])  # (P, D)
    emb = torch.nn.functional.normalize(emb.float(), dim=-1)
    weights, start = [], 0
    for texts in prompts:
        mean = emb[start:start + len(texts)].mean(dim=0)
        weights.append(mean / mean.norm())
        start += len(texts)
    return torch.stack(weights)  # (C, D)


def pairwise_class_logits(scores: torch.Tensor, prompts: list[list[str]]) -> torch.Tensor:
    """(B, P) prompt scores -> (B, C) class scores: log-mean-exp over each class's prompts."""
    out, start = [], 0
    for texts in prompts:
        block = scores[:, start:start + len(texts)]  # (B, T_c)
        out.append(torch.logsumexp(block, dim=1) - math.log(len(texts)))
        start += len(texts)
    return torch.stack(out, dim=1)


def classify(scorer: Scorer, bench: Benchmark, examples: Iterable[Example],
             settings: TaskSettings) -> tuple[dict, dict]:
    """Zero-shot classification: acc1, acc5, mean_per_class_recall."""
    pairwise = isinstance(scorer, PairwiseScorer)
    prompts = class_prompts(bench, settings.pairwise_max_templates if pairwise else None)
    if pairwise:
        texts = scorer.prepare_texts([t for ps in prompts for t in ps])
    else:
        classifier = text_classifier(scorer, prompts, settings.batch_size)  # once per benchmark
    logits, targets = [], []
    for batch in batched(examples, settings.batch_size):
        images = [ex.image for ex in batch]
        if pairwise:
            logits.append(pairwise_class_logits(scorer.score(images, texts), prompts))
        else:
            logits.append(100.0 * scorer.encode_images(images).float() @ classifier.T)  # (B, C)
        targets.extend(ex.label for ex in batch)
    if not targets:
        raise ValueError(f"benchmark {bench.name} has no examples")
    logits_t, target_t = torch.cat(logits), torch.tensor(targets)
    counts = torch.bincount(target_t, minlength=len(prompts)).tolist()
    details = {"images": len(targets), "classes": len(prompts), "class_counts": counts,
               "prompts_per_class": [len(p) for p in prompts],
               "predicted_counts": torch.bincount(logits_t.argmax(1), minlength=len(prompts)).tolist(),
               # confusion[true][predicted]: what a systematic bias (purple called blue) shows up in
               "confusion": M.confusion_matrix(logits_t.argmax(1), target_t, len(prompts)).tolist()}
    return M.classification_metrics(logits_t, target_t), details


# --------------------------------------------------------------------------------------------
# Retrieval, caption selection, caption accuracy


def retrieve(scorer: Scorer, bench: Benchmark, examples: Iterable[Example],
             settings: TaskSettings) -> tuple[dict, dict]:
    """Image->text and text->image recall@k with every caption of an image a positive.

    By CLIP_benchmark's rule a caption is a positive for its own image only; with
    ``retrieval_positives="shared"`` also for every other image that has the identical caption.

    ``retrieval_images`` limits every scorer to the first N images and their captions (recall over
    fewer candidates is higher, so only equal N compare). Otherwise a pairwise scorer, which scores
    every (image, text) pair, runs on the first ``pairwise_retrieval_images`` images only (noted).
    """
    pairwise = isinstance(scorer, PairwiseScorer)
    subset = settings.retrieval_images or (settings.pairwise_retrieval_images if pairwise else None)
    if subset:
        examples = islice(examples, subset)
    items = list(examples)
    texts, positives = M.positives_from_captions([ex.texts or [] for ex in items],
                                                  shared=settings.retrieval_positives == "shared")  # (T, I)
    if pairwise:
        prepared = scorer.prepare_texts(texts)
        scores = torch.cat([scorer.score([ex.image for ex in b], prepared)
                            for b in batched(items, settings.batch_size)]).T  # (T, I)
    else:
        img = torch.cat([scorer.encode_images([ex.image for ex in b]) for b in batched(items, settings.batch_size)])
        txt = torch.cat([scorer.encode_texts(b) for b in batched(texts, settings.batch_size)])
        scores = txt.float() @ img.float().T  # (T, I)
    details = {"images": len(items), "texts": len(texts)}
    if pairwise and not settings.retrieval_images:
        details["notes"] = (f"pairwise scorer: retrieval over the first {len(items)} images only "
                            "(every image-text pair is scored)")
    return M.retrieval_metrics(scores, positives, settings.recall_k), details


def select(scorer: Scorer, bench: Benchmark, examples: Iterable[Example],
           settings: TaskSettings) -> tuple[dict, dict]:
    """Image-caption selection: does the true caption (candidate 0) score highest?"""
    per_image: list[torch.Tensor] = []
    n = 0
    for batch in batched(examples, settings.batch_size):
        images = [ex.image for ex in batch for _ in ex.texts]
        texts = [t for ex in batch for t in ex.texts]
        if isinstance(scorer, PairwiseScorer):
            flat = scorer.score_pairs(images, texts)  # (sum T_i,)
        else:
            img = scorer.encode_images([ex.image for ex in batch])
            rows = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor([len(ex.texts) for ex in batch]))
            flat = (img[rows].float() * scorer.encode_texts(texts).float()).sum(-1)
        per_image.extend(flat.split([len(ex.texts) for ex in batch]))
        n += len(batch)
    return M.selection_accuracy(per_image), {"images": n}


def caption(scorer: Scorer, bench: Benchmark, examples: Iterable[Example],
            settings: TaskSettings) -> tuple[dict, dict]:
    """Greedy captions against the world's truth: exact match, object recall, hallucinations."""
    if not getattr(scorer, "can_caption", False):
        raise Skipped(f"{type(scorer).__name__} does not write captions")
    captions, truths = [], []
    for batch in batched(examples, settings.batch_size):
        written = scorer.caption([ex.image for ex in batch])
        captions.extend(written)
        truths.extend(ex.truth for ex in batch)
    shown = [{"caption": c, "gold": t["gold_caption"]} for c, t in zip(captions[:5], truths[:5])]
    return M.mean_caption_scores(captions, truths), {"images": len(captions), "examples": shown}
