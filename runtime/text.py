"""Transcript tokenisation with Hugging Face ``tokenizers`` (Rust, batched).

The same encoder serves training and inference: the model folder's ``tokenizer.json``
(MiniLM's WordPiece vocabulary), truncated to ``max_tokens`` including [CLS] and [SEP].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import TextError


class TextEncoder:
    """Batched WordPiece encoding into padded id arrays and lengths."""

    def __init__(self, tokenizer_file: str | Path, max_tokens: int = 128, max_chars: int = 2000):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        self.max_chars = max_chars

    def check(self, text: object, name: str = "text") -> str:
        """Return ``text`` if it is an acceptable transcript, else raise ``TextError``."""
        if not isinstance(text, str):
            raise TextError(f"{name} must be a string or None, got {type(text).__name__}")
        if len(text) > self.max_chars:
            raise TextError(f"{name} is {len(text)} characters long; the maximum is {self.max_chars}")
        return text

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``(B, L)`` int64, zero-padded, and lengths ``(B,)`` int64."""
        if not texts:
            return np.zeros((0, 1), dtype=np.int64), np.zeros((0,), dtype=np.int64)
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.zeros((len(texts), int(lengths.max())), dtype=np.int64)
        for row, enc in zip(ids, encodings):
            row[: len(enc.ids)] = enc.ids
        return ids, lengths
