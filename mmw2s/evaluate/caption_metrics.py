"""Caption metrics as the field reports them: COCO caption metrics, CLIPScore, CHAIR.

- BLEU-1..4, METEOR, ROUGE-L, CIDEr (pycocoevalcap's ``Cider`` is CIDEr-D: clipped n-gram counts
  and a length penalty) and SPICE are computed by ``pycocoevalcap`` itself after its PTB tokenizer,
  so the numbers are the COCO evaluation server's. The tokenizer, METEOR and SPICE run on Java.
  Without ``java`` on the PATH, METEOR and SPICE are reported unavailable with the reason, and
  BLEU / ROUGE-L / CIDEr are computed by the same pycocoevalcap scorers on a pure-Python
  tokenization (`python_tokenize`: lower case, PTB-like splitting, PTB punctuation dropped) and
  labelled so (``tokenizer: python-fallback``): close to, not equal to, the server's numbers.
- SPICE needs Stanford CoreNLP 3.6.0 jars in pycocoevalcap's ``spice/lib``; pycocoevalcap downloads
  them on first use. We never download: without them SPICE is "not available" with why.
- CLIPScore and RefCLIPScore (Hessel et al. 2021): ``CLIP-S = w * max(cos(c, v), 0)`` with
  ``w = 2.5``; ``RefCLIP-S = H-mean(CLIP-S, max(max_r cos(c, r), 0))``.
- CHAIR (Rohrbach et al. 2018): of the object words a caption says (mapped to categories through a
  synonym list), the fraction not in the image (CHAIR-i), and the fraction of captions with at
  least one such object (CHAIR-s).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

CLIP_W = 2.5  # Hessel et al.'s rescaling of the cosine
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",",
                             ":", "-", "--", "...", ";"])  # what pycocoevalcap's PTBTokenizer drops
COCO_NAMES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def _require_pycocoevalcap() -> None:
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as exn:  # pragma: no cover - installed with the peers extra
        raise ImportError("caption metrics need pycocoevalcap: pip install 'mmw2s[peers]' "
                          "(or pip install pycocoevalcap)") from exn


def java_available() -> bool:
    """Whether a ``java`` executable is on the PATH (pycocoevalcap calls it by that name)."""
    return shutil.which("java") is not None


def spice_status() -> tuple[bool, str]:
    """(available, reason): SPICE runs only when Java and the CoreNLP jars are already present."""
    if not java_available():
        return False, "java not found on PATH (install a JRE, e.g. Debian's default-jre-headless)"
    import pycocoevalcap.spice as spice

    lib = Path(spice.__file__).parent / "lib"
    missing = [j for j in SPICE_JARS if not (lib / j).is_file()]
    if missing:
        return False, (f"Stanford CoreNLP jars {missing} not in {lib} (pycocoevalcap downloads them on first "
                       "use; we never download: put them there to compute SPICE)")
    return True, ""


# --------------------------------------------------------------------------------------------
# COCO caption metrics


@dataclass
class CocoScores:
    """Corpus metrics, per-image scores, and what was not computed and why."""
    metrics: dict[str, float | None]
    per_image: dict[str, list[float]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    tokenizer: str = "ptb"


def python_tokenize(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """The no-Java stand-in for PTBTokenizer: lower case, words and clitics split from punctuation,
    PTB's punctuation tokens dropped, tokens joined by one space."""
    out = {}
    for key, texts in captions.items():
        out[key] = [" ".join(t for t in re.findall(r"[a-z0-9]+|'[a-z]+|[^\sa-z0-9]", text.lower())
                             if t not in PTB_PUNCTUATION) for text in texts]
    return out


def ptb_tokenize(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1 on Java) on ``{id: [caption, ...]}``."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def check_inputs(refs: Mapping[object, Sequence[str]], preds: Mapping[object, str]) -> None:
    """Raise ValueError unless every image has a prediction and at least one reference."""
    if not refs:
        raise ValueError("no images to score")
    missing = [k for k in refs if k not in preds]
    extra = [k for k in preds if k not in refs]
    if missing or extra:
        raise ValueError(f"predictions and references cover different images: {len(missing)} without a "
                         f"prediction (e.g. {missing[:3]}), {len(extra)} without references (e.g. {extra[:3]})")
    empty = [k for k, v in refs.items() if not v]
    if empty:
        raise ValueError(f"images without a reference caption: {empty[:5]}")


def coco_caption_scores(refs: Mapping[object, Sequence[str]], preds: Mapping[object, str],
                        java: bool | None = None, spice: bool = True) -> CocoScores:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when available) by pycocoevalcap.

    ``refs``: image id -> reference captions; ``preds``: image id -> the one predicted caption.
    ``java=None`` looks for ``java`` on the PATH. Metrics not computed are None, with the reason in
    ``unavailable``.
    """
    _require_pycocoevalcap()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    check_inputs(refs, preds)
    java = java_available() if java is None else java
    tokenize = ptb_tokenize if java else python_tokenize
    gts, res = tokenize(refs), tokenize({k: [preds[k]] for k in refs})
    out = CocoScores({name: None for name in COCO_NAMES}, tokenizer="ptb" if java else "python-fallback")
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out.metrics[f"Bleu_{n + 1}"], out.per_image[f"Bleu_{n + 1}"] = float(bleu[n]), [float(x) for x in bleu_each[n]]
    for name, scorer in (("ROUGE_L", Rouge()), ("CIDEr", Cider())):
        score, each = scorer.compute_score(gts, res)
        out.metrics[name], out.per_image[name] = float(score), [float(x) for x in each]
    if java:
        out.metrics["METEOR"], out.per_image["METEOR"] = _meteor(gts, res)
    else:
        out.unavailable["METEOR"] = "java not found on PATH (METEOR 1.5 is a Java program)"
        out.unavailable["tokenizer"] = ("java not found on PATH: BLEU, ROUGE-L and CIDEr use a pure-Python "
                                        "PTB-like tokenizer, close to but not the COCO server's numbers")
    if not spice:
        ok, why = False, "SPICE not requested (captioning.spice=false)"
    else:
        ok, why = spice_status() if java else (False, "java not found on PATH (SPICE is a Java program)")
    if ok:
        out.metrics["SPICE"], out.per_image["SPICE"] = _spice(gts, res)
    else:
        out.unavailable["SPICE"] = why
    return out


def _meteor(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        score, each = meteor.compute_score(gts, res)
    finally:  # the Java process is otherwise left to the garbage collector
        meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()
    return float(score), [float(x) for x in each]


def _spice(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.spice.spice import Spice

    score, each = Spice().compute_score(gts, res)
    return float(score), [float(x["All"]["f"]) for x in each]


# --------------------------------------------------------------------------------------------
# CLIPScore


def clip_scores(image_emb: torch.Tensor, cand_emb: torch.Tensor,
                ref_emb: Sequence[torch.Tensor] | None = None, w: float = CLIP_W) -> dict[str, torch.Tensor]:
    """Per-image CLIP-S and, with references, RefCLIP-S (Hessel et al. 2021).

    ``image_emb`` (N, D) and ``cand_emb`` (N, D) are the embeddings of each image and its
    candidate caption; ``ref_emb[i]`` (R_i, D) those of image i's references. Embeddings are
    normalised here. Returns ``clip_score`` (N,) and ``ref_clip_score`` (N,) when refs are given,
    and the clipped cosines they are made of (``image_cos``, ``ref_cos``).
    """
    img = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    cand = torch.nn.functional.normalize(cand_emb.float(), dim=-1)
    image_cos = (img * cand).sum(-1).clamp(min=0)  # (N,)
    out = {"clip_score": w * image_cos, "image_cos": image_cos}
    if ref_emb is not None:
        ref_cos = torch.stack([(torch.nn.functional.normalize(r.float(), dim=-1) @ c).max().clamp(min=0)
                               for r, c in zip(ref_emb, cand)])  # (N,)
        out["ref_cos"] = ref_cos
        out["ref_clip_score"] = harmonic_mean(out["clip_score"], ref_cos)
    return out


def harmonic_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise 2ab / (a + b), 0 where both are 0."""
    total = a + b
    return torch.where(total > 0, 2 * a * b / total.clamp(min=1e-12), torch.zeros_like(total))


# --------------------------------------------------------------------------------------------
# CHAIR

_IRREGULAR = {"men": "man", "women": "woman", "people": "person", "children": "child", "mice": "mouse",
              "knives": "knife", "geese": "goose", "teeth": "tooth", "feet": "foot", "oxen": "ox",
              "skis": "ski", "buses": "bus", "glasses": "glass", "benches": "bench", "sandwiches": "sandwich",
              "couches": "couch", "boxes": "box", "dishes": "dish", "wolves": "wolf", "leaves": "leaf"}
_KEEP = frozenset({"bus", "glass", "grass", "dress", "cross", "class", "scissors", "species"})


def singular(word: str) -> str:
    """A small English singulariser, enough to map object words of captions to categories."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _KEEP or len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


@dataclass
class ChairVocab:
    """Object phrases (singular, lower case, 1-3 words) -> category."""
    phrases: dict[tuple[str, ...], str]

    @classmethod
    def from_synonyms(cls, lines: Iterable[str], categories: Iterable[str] | None = None) -> "ChairVocab":
        """From lines in CHAIR's form ``category, synonym, synonym, ...``; with ``categories``, only
        their lines are kept and every category also names itself."""
        wanted = None if categories is None else {c.lower() for c in categories}
        phrases: dict[tuple[str, ...], str] = {}
        for line in lines:
            words = [w.strip().lower() for w in line.split(",") if w.strip()]
            if not words or (wanted is not None and words[0] not in wanted):
                continue
            for word in words:
                phrases[tuple(singular(t) for t in word.split())] = words[0]
        for category in wanted or ():
            phrases.setdefault(tuple(singular(t) for t in category.split()), category)
        return cls(phrases)

    @classmethod
    def from_file(cls, path: str | Path, categories: Iterable[str] | None = None) -> "ChairVocab":
        """`from_synonyms` of a text file."""
        return cls.from_synonyms(Path(path).read_text(encoding="utf-8").splitlines(), categories)

    def objects(self, caption: str) -> list[str]:
        """Distinct categories a caption mentions, in order; longest phrase first (``hot dog``)."""
        words = [singular(w) for w in re.findall(r"[a-z]+", caption.lower())]
        longest = max((len(p) for p in self.phrases), default=1)
        found, i = [], 0
        while i < len(words):
            for n in range(min(longest, len(words) - i), 0, -1):
                category = self.phrases.get(tuple(words[i:i + n]))
                if category is not None:
                    if category not in found:
                        found.append(category)
                    i += n
                    break
            else:
                i += 1
        return found


def chair(captions: Sequence[str], truths: Sequence[Iterable[str]], vocab: ChairVocab) -> dict[str, float | int]:
    """CHAIR-i and CHAIR-s of captions against each image's true object categories.

    An object counts once per caption. ``chair_i`` = hallucinated objects / mentioned objects,
    ``chair_s`` = captions with a hallucinated object / captions; the counts come along.
    """
    mentioned = hallucinated = bad_captions = 0
    for caption, truth in zip(captions, truths):
        said = vocab.objects(caption)
        wrong = [c for c in said if c not in set(truth)]
        mentioned += len(said)
        hallucinated += len(wrong)
        bad_captions += bool(wrong)
    return {"chair_i": hallucinated / mentioned if mentioned else 0.0,
            "chair_s": bad_captions / len(captions) if captions else 0.0,
            "objects_mentioned": mentioned, "objects_hallucinated": hallucinated,
            "captions_hallucinating": bad_captions}
