"""A word-level tokenizer built in code from a task's vocabulary.

Tasks here have small closed vocabularies (bits, card words, numbers), so each token is a whole
whitespace-separated word. Built with `tokenizers` and wrapped as a ``PreTrainedTokenizerFast`` so it saves
with ``save_pretrained`` and loads back with ``AutoTokenizer.from_pretrained`` alone.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """Tokenizer whose ids are the special tokens then ``words`` in order (duplicates removed)."""
    vocab: dict[str, int] = {}
    for w in [*SPECIAL.values(), *words]:
        if any(c.isspace() for c in w) or not w:
            raise ValueError(f"vocabulary word {w!r} must be non-empty without whitespace")
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL)
    tok.init_kwargs["name_or_path"] = "rlcircuits-word-level"  # TransformerLens reads it
    return tok
