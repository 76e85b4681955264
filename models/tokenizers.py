"""Word-level tokenizers for from-scratch text models, built with the ``tokenizers`` library.

A model trained from scratch on our captions needs a vocabulary of those captions, not a 30k
BERT or 50k GPT-2 vocabulary that it would mostly never see (and that we could not download).
The tokenizer is a ``PreTrainedTokenizerFast`` so it is saved with ``save_pretrained`` next to the
model and reloads with ``AutoTokenizer.from_pretrained(folder)``, with no code of ours.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, CLS, SEP, MASK, BOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BOS]"
# Order fixes the ids: [PAD]=0 (HF models default pad_token_id to 0), [SEP] doubles as eos.
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK, BOS]


def build_word_tokenizer(
    captions: Iterable[str],
    max_vocab: int | None = None,
    min_frequency: int = 1,
    model_max_length: int = 32,
    first_token: str = BOS,
) -> PreTrainedTokenizerFast:
    """Train a lowercase word-level tokenizer on ``captions``.

    Words and punctuation marks are tokens (``Whitespace`` pre-tokenizer); words outside the
    vocabulary map to ``[UNK]``. Encoding with special tokens gives ``first_token words [SEP]``:
    ``[BOS]`` for captioning decoders (BLIP's decoder start), ``[CLS]`` for encoders that pool the
    first position (BLIP ITM / ITC). ``max_vocab`` counts the special tokens too.
    """
    if first_token not in SPECIAL_TOKENS:
        raise ValueError(f"first_token must be one of {SPECIAL_TOKENS}, got {first_token!r}")
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=max_vocab or 10_000_000,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first_token} $A {SEP}",
        special_tokens=[(first_token, tok.token_to_id(first_token)), (SEP, tok.token_to_id(SEP))],
    )
    # WordPiece's decoder joins words with spaces and glues punctuation back ("red ." -> "red.").
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=model_max_length,
        pad_token=PAD,
        unk_token=UNK,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        bos_token=first_token,
        eos_token=SEP,
    )
