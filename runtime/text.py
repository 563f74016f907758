"""Transcript tokenisation with Hugging Face ``tokenizers`` (Rust, batched).

The same encoder serves training and inference: the model folder's ``tokenizer.json``
(MiniLM's WordPiece vocabulary), truncated to ``max_tokens`` including [CLS] and [SEP].

For BERT-style tokenizers (``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece`` +
``[CLS] A [SEP]``) plain-ASCII transcripts take a fast path that gives the same ids as
the Rust tokenizer (tested against it on fuzzed text): the BERT normalisation and
pre-tokenisation of ASCII are a lowercase, a control-character filter and a split at
whitespace and punctuation, and each distinct word's WordPiece ids are computed once by
the Rust model and remembered. Most of a Rust ``encode`` call's time is spent keeping
character alignments that this engine never uses. Anything else (non-ASCII text, text
that could contain an added token such as ``[MASK]``, other tokenizer types) goes
through ``Tokenizer.encode_batch``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from runtime.errors import ModelFolderError, TextError

# BERT's clean_text drops control characters except tab/newline/CR, which become spaces.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# After lowercasing, every printable ASCII character that is not [a-z0-9] or whitespace
# is BERT punctuation and stands alone; runs of [a-z0-9] are words.
_ASCII_PIECES = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
_ASCII_PRINTABLE = re.compile(r"[!-~]")
# Memory the remembered words may take, estimated per entry as the word, its id tuple,
# the ids' int objects and a dict slot (bytes): a few hundred thousand everyday words.
WORD_CACHE_BYTES = 16 << 20
# Longer words are not remembered: BERT's WordPiece turns a word of more than 100
# characters into [UNK], and a client sending unique long words would fill the cache.
MAX_CACHED_WORD_CHARS = 100
_SLOT_BYTES = 64  # a dict entry, amortised over the table's growth


def _bert_layout(config: dict) -> tuple[int, int] | None:
    """``(cls_id, sep_id)`` if ``tokenizer.json`` is the BERT pipeline the fast path
    reproduces, else None."""
    norm, pre, model, post = (config.get(k) or {} for k in ("normalizer", "pre_tokenizer", "model", "post_processor"))
    if norm.get("type") != "BertNormalizer" or not norm.get("clean_text") or not norm.get("lowercase"):
        return None
    if pre.get("type") != "BertPreTokenizer" or model.get("type") != "WordPiece":
        return None
    if post.get("type") == "BertProcessing":
        return int(post["cls"][1]), int(post["sep"][1])
    if post.get("type") == "TemplateProcessing":
        single = post.get("single", [])
        specials = post.get("special_tokens", {})
        shape = [("S", s["SpecialToken"]["id"]) if "SpecialToken" in s else ("A", None) for s in single]
        if len(shape) == 3 and shape[1][0] == "A" and shape[0][0] == shape[2][0] == "S":
            cls, sep = (specials.get(shape[i][1], {}).get("ids", [None]) for i in (0, 2))
            if len(cls) == 1 and len(sep) == 1 and None not in (cls[0], sep[0]):
                return int(cls[0]), int(sep[0])
    return None


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, e.g. from JSON's ``"\\udfff"``
    or undecodable command-line bytes), or None. The tokenizer cannot take such text."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"it is not valid Unicode: a lone surrogate U+{ord(text[e.start]):04X} at character {e.start} (send UTF-8 text)"
    return None


class TextEncoder:
    """Batched WordPiece encoding into padded id arrays and lengths."""

    def __init__(self, tokenizer_file: str | Path, max_tokens: int = 128, max_chars: int = 2000):
        """Raises ``ModelFolderError`` if ``tokenizer_file`` is not a tokenizer the
        ``tokenizers`` library can load (malformed JSON, an unknown model type)."""
        from tokenizers import Tokenizer

        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
            self.tokenizer.no_padding()
            self.tokenizer.enable_truncation(max_length=max_tokens)
            config = json.loads(self.tokenizer.to_str())  # the loaded pipeline, not a second file read
            self._bert = _bert_layout(config)
        except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception for every load failure
            raise ModelFolderError(f"{tokenizer_file} is not a tokenizer this runtime can load ({str(e)[:300]})") from e
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        # Texts containing a character that starts an added token (e.g. "[" of "[MASK]")
        # go to the Rust tokenizer, which matches added tokens before normalising.
        # A "normalized" added token is matched after lowercasing, so both cases count.
        starts: set[str] = set()
        for t in config.get("added_tokens", []):
            if t.get("content"):
                first = t["content"][0]
                starts |= {first, first.lower(), first.upper()} if t.get("normalized") else {first}
        self._added_starts = frozenset(starts)
        self._words: dict[str, tuple[int, ...]] = {}
        self.cache_bytes = 0  # the estimated size of _words (WORD_CACHE_BYTES at most)

    def check(self, text: object, name: str = "text") -> str:
        """Return ``text`` if it is an acceptable transcript, else raise ``TextError``."""
        if not isinstance(text, str):
            raise TextError(f"{name} must be a string or None, got {type(text).__name__}")
        if len(text) > self.max_chars:
            raise TextError(f"{name} is {len(text)} characters long; the maximum is {self.max_chars}")
        problem = unicode_problem(text)
        if problem:
            raise TextError(f"{name} cannot be read: {problem}")
        return text

    def has_words(self, text: str) -> bool:
        """Whether ``text`` tokenises to at least one token besides [CLS] and [SEP]. Blank
        text has none, and so has text made only of characters the normaliser drops
        (NUL and other control characters, zero-width spaces, lone combining accents)."""
        if self._bert is not None:
            # BERT's normaliser keeps every printable ASCII character, and each becomes (part
            # of) a token; text with none is either ASCII controls and spaces, or needs a look.
            if _ASCII_PRINTABLE.search(text):
                return True
            if text.isascii():
                return False
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) > 0

    def clear_cache(self) -> None:
        """Forget the remembered words (benchmarks time a cold start with this)."""
        self._words.clear()
        self.cache_bytes = 0

    def _fast_ids(self, text: str) -> list[int] | None:
        """Ids of an ASCII text through the BERT fast path, or None if it does not apply."""
        if self._bert is None or not text.isascii() or any(c in self._added_starts for c in text):
            return None
        words = self._words
        body: list[int] = []
        for piece in _ASCII_PIECES.findall(_ASCII_CONTROL.sub("", text).lower()):
            ids = words.get(piece)
            if ids is None:
                ids = tuple(t.id for t in self.tokenizer.model.tokenize(piece))
                if len(piece) <= MAX_CACHED_WORD_CHARS:
                    size = sys.getsizeof(piece) + sys.getsizeof(ids) + 28 * len(ids) + _SLOT_BYTES
                    if self.cache_bytes + size <= WORD_CACHE_BYTES:
                        words[piece] = ids
                        self.cache_bytes += size
            body.extend(ids)
        cls, sep = self._bert
        return [cls, *body[: max(self.max_tokens - 2, 0)], sep]

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``(B, L)`` int64, zero-padded, and lengths ``(B,)`` int64."""
        if not texts:
            return np.zeros((0, 1), dtype=np.int64), np.zeros((0,), dtype=np.int64)
        rows = [self._fast_ids(t) for t in texts]
        slow = [i for i, r in enumerate(rows) if r is None]
        if slow:
            for i, enc in zip(slow, self.tokenizer.encode_batch_fast([texts[i] for i in slow], add_special_tokens=True)):
                rows[i] = enc.ids
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        ids = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
        for row, r in zip(ids, rows):
            row[: len(r)] = r
        return ids, lengths
