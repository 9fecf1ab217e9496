"""Per-document decisions that must never depend on where or when a document is read: its split and its copies.

Both are functions of the document's bytes and a seed alone, so adding, removing or re-ordering
other documents (or shards) never moves a document between splits or changes how often it is written.
"""

from __future__ import annotations

import hashlib
import math

SPLIT_METHOD = "blake2b-64(document utf-8, key=split_seed) / 2^64 < val_fraction"
MIXTURE_METHOD = ("floor(weight) copies, plus one more when blake2b-64(document utf-8, key=split_seed, "
                  "person='gptray-mixture') / 2^64 < frac(weight)")


def _unit_hash(data: bytes, seed: int, person: bytes = b"") -> float:
    digest = hashlib.blake2b(data, digest_size=8, key=seed.to_bytes(8, "little"), person=person)
    return int.from_bytes(digest.digest(), "little") / 2**64


def is_validation(data: bytes, val_fraction: float, seed: int) -> bool:
    """Stable split by content: the same document lands in the same split in every run and corpus."""
    return val_fraction > 0 and _unit_hash(data, seed) < val_fraction


def copies(data: bytes, weight: float, seed: int) -> int:
    """How many times a document of a source with this mixture weight is written.

    A weight of 3 writes every document three times; 0.25 keeps a deterministic quarter of them;
    2.5 writes each twice and half of them a third time. The choice is independent of the split's.
    """
    whole = math.floor(weight)
    fraction = weight - whole
    if fraction > 0 and _unit_hash(data, seed, b"gptray-mixture") < fraction:
        whole += 1
    return whole
