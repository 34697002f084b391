"""A real ``transformers.CLIPTokenizer`` with a small vocabulary, built locally (no hub).

CLIP's tokenizer is byte-level BPE: a word is split into byte-characters, the last one marked
with ``</w>``, then merged pair by pair following ``merges.txt``. We write the 256 byte
characters (with and without ``</w>``), learn the merges on a word list with plain BPE
(Sennrich et al. 2016, Algorithm 1) until every listed word is a single token, and save
``vocab.json`` + ``merges.txt``. Any other text still tokenizes, character by character.
"""
from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

SPECIAL = ("<|startoftext|>", "<|endoftext|>")


@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _symbols(word: str) -> tuple[str, ...]:
    chars = [bytes_to_unicode()[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Plain BPE: merge the most frequent adjacent pair until each word is one symbol."""
    vocab = Counter(_symbols(w.lower()) for w in words if w)
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for sym, freq in vocab.items():
            for a, b in zip(sym, sym[1:]):
                pairs[a, b] += freq
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))  # most frequent, ties alphabetical
        merges.append(best)
        merged = Counter()
        for sym, freq in vocab.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            merged[tuple(out)] += freq
        vocab = merged


def build_clip_tokenizer(words, folder, *, max_length: int = 16) -> CLIPTokenizer:
    """Write a CLIP BPE tokenizer whose listed ``words`` are single tokens; load it back.

    Args:
        words: words that should each be one token (the caption vocabulary); may be empty.
        folder: where ``vocab.json``, ``merges.txt`` and the tokenizer config are saved.
        max_length: ``model_max_length`` (prompts are padded to it).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base]
    merges = learn_merges(sorted(set(words)))
    tokens += [a + b for a, b in merges]
    tokens += list(SPECIAL)
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
              "bos_token": SPECIAL[0], "eos_token": SPECIAL[1], "unk_token": SPECIAL[1],
              "pad_token": SPECIAL[1], "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    tok = CLIPTokenizer.from_pretrained(folder)
    tok.save_pretrained(folder)  # adds the fast tokenizer.json where the backend has one
    return tok
