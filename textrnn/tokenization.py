"""Tokenizers built on Hugging Face `tokenizers`, stored as one `tokenizer.json`.

Classifiers use a word-level tokenizer whose normaliser and pre-tokeniser turn raw text
(`It's not bad!`) into the Penn Treebank style of SST-2 (`it 's not bad !`), so training and
serving read text the same way. Language models use a character tokenizer that round-trips
every character of its alphabet and maps anything else to an explicit unknown token.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

__all__ = [
    "PAD",
    "UNK",
    "build_char_tokenizer",
    "build_word_tokenizer",
    "encode_batch",
    "load_tokenizer",
    "save_tokenizer",
]

PAD = "<pad>"
UNK = "<unk>"


def _word_normalizer() -> normalizers.Normalizer:
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Lowercase(),
        normalizers.Replace("\u2019", "'"),  # typographic apostrophe, as in "it’s"
        normalizers.Replace("\u2018", "'"),
        normalizers.Replace("``", '"'),
        normalizers.Replace("''", '"'),
        normalizers.Replace(Regex(r"<br\s*/?>"), " "),  # IMDB-style HTML line breaks
    ])


def _word_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # PTB style: punctuation apart, clitics split off ("does n't", "it 's").
    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[^\w\s'-]"), "isolated"),
        pre_tokenizers.Split(Regex(r"n't$"), "isolated"),
        pre_tokenizers.Split(Regex(r"'(s|re|ve|ll|d|m)$"), "isolated"),
    ])


def build_word_tokenizer(texts: Iterable[str], *, min_frequency: int = 1,
                         max_vocab: int | None = None) -> Tokenizer:
    """Train a word-level tokenizer on `texts`; id 0 is padding, id 1 the unknown word."""
    normalizer, pre = _word_normalizer(), _word_pre_tokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    # Sort by count, then alphabetically, so the vocabulary does not depend on data order.
    words = sorted((w for w, n in counts.items() if n >= min_frequency), key=lambda w: (-counts[w], w))
    if max_vocab is not None:
        words = words[: max(0, max_vocab - 2)]
    vocab = {PAD: 0, UNK: 1} | {w: i + 2 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    return tokenizer


def build_char_tokenizer(text: str) -> Tokenizer:
    """A character tokenizer over the characters of `text`; id 0 is the unknown character."""
    alphabet = sorted(set(text))
    vocab = {UNK: 0} | {c: i + 1 for i, c in enumerate(alphabet)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer


def encode_batch(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no special tokens added)."""
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """Write `tokenizer.json`."""
    tokenizer.save(str(path))


def load_tokenizer(path: Path) -> Tokenizer:
    """Read a `tokenizer.json` (no code runs)."""
    return Tokenizer.from_file(str(path))
