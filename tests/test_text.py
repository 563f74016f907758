"""Transcript tokenisation: the ASCII fast path gives exactly the Rust tokenizer's ids."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pytest

from runtime.text import WORD_CACHE_BYTES, TextEncoder


def _rust_ids(enc: TextEncoder, text: str) -> list[int]:
    return enc.tokenizer.encode(text, add_special_tokens=True).ids


def _fuzz_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    noisy = string.printable + "\x00\x01\x0b\x0c\x1f\x7f"
    common = string.ascii_letters + string.digits + "    ',.!?-"
    out = []
    for _ in range(n):
        alphabet = noisy if rng.random() < 0.3 else common
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))))
    out += ["", " ", "x" * 101 + " ok", "x" * 100, "Don't!! Really?? $5.00 #1 e-mail", "word " * 200]
    return out


def test_fast_path_equals_rust_tokenizer_on_fuzzed_ascii(tokenizer_file):
    enc = TextEncoder(tokenizer_file, max_tokens=32)
    texts = _fuzz_texts(3000, seed=0)
    # every text took the fast path except those with "[", which may start an added token
    assert all((enc._fast_ids(t) is None) == ("[" in t) for t in texts)
    for t in texts:
        assert enc._fast_ids(t) in (None, _rust_ids(enc, t)), repr(t)
    ids, lengths = enc.encode(texts)
    for t, row, n in zip(texts, ids, lengths):
        assert row[:n].tolist() == _rust_ids(enc, t) and not row[n:].any()
    assert lengths.max() == 32  # truncated to max_tokens, [SEP] kept


def test_has_words_equals_the_tokenizer_on_fuzzed_text(tokenizer_file):
    """``has_words`` (a printable-ASCII shortcut, else the tokenizer) says exactly whether
    the tokenizer gives any token, on text full of what the BERT normaliser drops."""
    enc = TextEncoder(tokenizer_file)
    rng = random.Random(1)
    dropped = ["\x00", "\x01", "\x1f", "\x7f", " ", "\t", "\n", "\u200b", "\u200d", "\ufeff", "\u0301", "\u034f", "\u00a0", "\u3000", "\u2028", "\u0085"]
    kept = ["a", "Z", "7", "!", "[", "~", "\u00e9", "\u4e2d", "\U0001f600", "\u00df"]
    texts = ["".join(rng.choice(dropped if rng.random() < 0.9 else kept) for _ in range(rng.randint(0, 8))) for _ in range(5000)]
    texts += _fuzz_texts(1000, seed=2)
    for t in texts:
        assert enc.has_words(t) == (len(enc.tokenizer.encode(t, add_special_tokens=False).ids) > 0), repr(t)
    assert sum(map(enc.has_words, texts[:5000])) not in (0, 5000)  # both answers occur


@pytest.mark.parametrize("text", ["Café crème, s'il vous plaît", "你好 world", "a [MASK] here", "[CLS] twice", "naïve\u00a0space"])
def test_other_text_goes_through_rust_and_batches_mix(tokenizer_file, text):
    enc = TextEncoder(tokenizer_file)
    assert enc._fast_ids(text) is None
    batch = ["plain ascii words", text, "more plain words!"]
    ids, lengths = enc.encode(batch)
    for t, row, n in zip(batch, ids, lengths):
        assert row[:n].tolist() == _rust_ids(enc, t)


def test_non_bert_tokenizer_never_takes_the_fast_path(tmp_path, tokenizer_file):
    config = json.loads(tokenizer_file.read_text())
    config["pre_tokenizer"] = {"type": "Whitespace"}  # splits differently from BertPreTokenizer
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(config))
    enc = TextEncoder(path)
    assert enc._bert is None and enc._fast_ids("hello world") is None
    ids, lengths = enc.encode(["don't stop"])
    assert ids[0, : lengths[0]].tolist() == _rust_ids(enc, "don't stop")


def test_word_cache_is_bounded_by_bytes(tokenizer_file, monkeypatch):
    """The cache was capped at 65536 words of any length: unique 2000-character words held
    +129 MB. It is now capped by its estimated bytes, and long words are not kept."""
    import tracemalloc

    import runtime.text

    monkeypatch.setattr(runtime.text, "WORD_CACHE_BYTES", 300)
    enc = TextEncoder(tokenizer_file)
    text = "one two three four five six seven eight"
    assert enc._fast_ids(text) == _rust_ids(enc, text)
    assert 0 < len(enc._words) < 8 and enc.cache_bytes <= 300 and WORD_CACHE_BYTES > 300
    assert enc._fast_ids(text) == _rust_ids(enc, text)  # misses still tokenise correctly
    monkeypatch.undo()

    enc = TextEncoder(tokenizer_file, max_chars=2000)
    rng = random.Random(1)
    long_words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(2000)) for _ in range(2000)]
    short_words = [f"w{i}x" for i in range(20_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for w in long_words:
        enc.encode([w])
    for i in range(0, len(short_words), 100):
        enc.encode([" ".join(short_words[i : i + 100])])
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert not any(len(w) > runtime.text.MAX_CACHED_WORD_CHARS for w in enc._words)
    assert enc.cache_bytes <= WORD_CACHE_BYTES
    assert held < 1.5 * enc.cache_bytes + (1 << 20), f"{held / 1e6:.1f} MB held for a cache estimated at {enc.cache_bytes / 1e6:.1f} MB"


def test_empty_batch(tokenizer_file):
    ids, lengths = TextEncoder(tokenizer_file).encode([])
    assert ids.shape == (0, 1) and lengths.shape == (0,) and ids.dtype == np.int64


def test_normalized_added_token_is_matched_case_insensitively(tmp_path, tokenizer_file):
    config = json.loads(tokenizer_file.read_text())
    new_id = len(config["model"]["vocab"])
    config["added_tokens"].append(
        {"id": new_id, "content": "emotech", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False}
    )
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(config))
    enc = TextEncoder(path)
    for text in ("EMOTECH rocks", "emotech", "no token here"):
        ids, lengths = enc.encode([text])
        assert ids[0, : lengths[0]].tolist() == _rust_ids(enc, text)
    assert new_id in enc.encode(["EMOTECH rocks"])[0][0]
