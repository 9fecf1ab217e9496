"""Seals on a node's decoded cache files: their size and a BLAKE2b digest, written beside them by the
process that decoded them and checked before a process uses them.

A cache file is decoded once per node and then trusted by every process that maps it; a file cut short,
corrupted on disk, or replaced by another job sharing the cache directory would otherwise be read as
training data. A file whose seal is missing or does not match is decoded again, never used. (Whoever can
write the cache directory can write a seal too: the directory must be writable only by the users whose
jobs share it — docs/security.md.)
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from gptray.core.paths import hash_file

SUFFIX = ".seal"
_CHUNK = 16 << 20


class Digest:
    """A running BLAKE2b digest of bytes written, and their count."""

    def __init__(self):
        self._hash = hashlib.blake2b(digest_size=16)
        self.size = 0

    def update(self, data) -> None:
        view = memoryview(data).cast("B")
        self._hash.update(view)
        self.size += len(view)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def seal_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def file_digest(path: Path) -> Digest:
    return hash_file(path, Digest(), _CHUNK)


def write_seal(path: Path, digest: Digest) -> None:
    """Record `path`'s size and digest beside it (atomically: a reader sees the whole seal or none)."""
    target = seal_path(path)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"bytes": digest.size, "blake2b": digest.hexdigest()}))
    os.replace(tmp, target)


def read_seal(path: Path) -> dict | None:
    try:
        seal = json.loads(seal_path(path).read_text())
    except (OSError, ValueError):
        return None
    return seal if isinstance(seal, dict) and isinstance(seal.get("bytes"), int) else None


def sealed_size(path: Path, expected_bytes: int | None) -> bool:
    """The cheap check: the file and its seal exist and agree with the size expected (None: with each
    other), without reading the file."""
    seal = read_seal(path)
    try:
        return seal is not None and seal["bytes"] == path.stat().st_size and expected_bytes in (None, seal["bytes"])
    except OSError:
        return False


def is_intact(path: Path, expected_bytes: int | None) -> bool:
    """Whether `path` holds exactly what its decoder sealed: size and digest (reads the whole file)."""
    if not sealed_size(path, expected_bytes):
        return False
    try:
        return file_digest(path).hexdigest() == read_seal(path)["blake2b"]
    except (OSError, TypeError):
        return False
