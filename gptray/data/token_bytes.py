"""Bits per byte: losses in a unit that does not depend on the tokenizer, so runs with different ones compare.

The bits per byte (bpb) of a set of scored targets is

    (sum of their cross-entropy, in nats) / (ln 2 × sum of the UTF-8 byte lengths of the target tokens)

Every scored target's nats count, <|endoftext|> targets included: they stand for 0 bytes, but predicting
where a document ends is information the text carries, and every tokenizer has exactly one per document,
so the figure stays comparable. Targets a loss leaves out (prompt tokens, padding) count in neither sum.
A token's byte length comes from the tokenizer's `token_byte_lengths()`, and nothing else here reads the
tokenizer: any tokenizer kind that has that method (and `vocab_size`) gets bpb.
"""

from __future__ import annotations

import math

import numpy as np


def byte_table(tokenizer, vocab_size: int | None = None) -> np.ndarray:
    """int64 (V,): the UTF-8 bytes each token id stands for, padded with zeros to `vocab_size` (a model's
    vocabulary may be padded past the tokenizer's; the padding ids are never targets)."""
    lengths = np.asarray(tokenizer.token_byte_lengths(), dtype=np.int64)
    if vocab_size is not None and len(lengths) < vocab_size:
        lengths = np.concatenate([lengths, np.zeros(vocab_size - len(lengths), dtype=np.int64)])
    return lengths


def bits_per_byte(nats: float, num_bytes: float) -> float:
    """Summed cross-entropy (nats) over the summed bytes of the same targets, in bits per byte; NaN
    where the targets hold no bytes (nothing to measure per byte)."""
    return float(nats) / (math.log(2) * float(num_bytes)) if num_bytes > 0 else math.nan


def dataset_mismatch(tokenizer, manifest_tokenizer: dict) -> str | None:
    """Why a token dataset's ids cannot be read as `tokenizer`'s (a sentence), or None where they can: the
    bytes of a dataset's tokens are only known from the tokenizer that wrote it. The content digest decides
    where the manifest records one (a tokenizer file may be named by another path), else name and size."""
    theirs = (manifest_tokenizer.get("name"), manifest_tokenizer.get("vocab_size"))
    ours = (tokenizer.name, tokenizer.vocab_size)
    if manifest_tokenizer.get("digest") is not None:
        same = manifest_tokenizer["digest"] == getattr(tokenizer, "digest", None)
    else:
        same = theirs == ours
    if not same:
        return (f"the dataset was tokenized with {theirs[0]} ({theirs[1]} tokens), not {ours[0]} "
                f"({ours[1]} tokens)")
    return None
