"""manifest.json: what a token dataset holds — counts, checksums, tokenizer, sources, split, problems."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from gptray.config.loader import build
from gptray.errors import ConfigError, DataError

MANIFEST_NAME = "manifest.json"
FORMAT = "gptray.token-shards"
VERSION = 1
SPLITS = ("train", "val")
EXAMPLES_KEPT = 5  # locations of each kind of problem shown in the manifest


@dataclass
class ShardInfo:
    path: str  # relative to the dataset directory
    documents: int
    tokens: int
    first_document: int  # global index (corpus order) of the shard's first document
    sha256: str
    bytes: int


@dataclass
class SplitInfo:
    documents: int = 0
    tokens: int = 0
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass
class ProblemCounts:
    """Bad input found while reading: counts by kind, and the first few locations of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, status: str, loc: str, error: str = "") -> None:
        self.counts[status] = self.counts.get(status, 0) + 1
        shown = self.examples.setdefault(status, [])
        if len(shown) < EXAMPLES_KEPT:
            shown.append(f"{loc}: {error}" if error else loc)

    def merge(self, other: ProblemCounts) -> None:
        for status, n in other.counts.items():
            self.counts[status] = self.counts.get(status, 0) + n
            shown = self.examples.setdefault(status, [])
            shown.extend(other.examples.get(status, [])[: EXAMPLES_KEPT - len(shown)])

    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class SourceInfo:
    description: str
    kind: str
    text_unit: str
    files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)
    documents: int = 0
    tokens: int = 0
    problems: ProblemCounts = field(default_factory=ProblemCounts)


@dataclass
class Manifest:
    tokenizer: dict
    split: dict  # how documents were assigned: {"val_fraction", "seed", "method"}
    sources: list[SourceInfo]
    splits: dict[str, SplitInfo]
    documents: int = 0
    tokens: int = 0
    problems: ProblemCounts = field(default_factory=ProblemCounts)
    fingerprint: str = ""
    created_at: str = ""
    format: str = FORMAT
    version: int = VERSION

    def compute_fingerprint(self) -> str:
        """Identity of the token stream: tokenizer plus every shard's checksum, in order."""
        content = {
            "tokenizer": self.tokenizer,
            "splits": {name: [(s.sha256, s.tokens) for s in info.shards] for name, info in sorted(self.splits.items())},
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, dataset_dir: str | Path) -> Path:
        path = Path(dataset_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)  # readers never see a half-written manifest
        return path

    @classmethod
    def load(cls, dataset_dir: str | Path) -> Manifest:
        path = Path(dataset_dir) / MANIFEST_NAME
        if not path.is_file():
            raise DataError(f"no token dataset at {dataset_dir} (missing {MANIFEST_NAME}); run `gptray tokenize` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path} is not valid JSON: {exc}") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise DataError(f"{path} is not a {FORMAT} v{VERSION} manifest")
        try:
            return build(cls, data)
        except ConfigError as exc:
            raise DataError(f"{path} is malformed: {exc}") from None

    def split_info(self, split: str) -> SplitInfo:
        return self.splits.get(split, SplitInfo())
