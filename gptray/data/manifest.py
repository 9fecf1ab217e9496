"""manifest.json: what a token dataset holds — counts, checksums, tokenizer, sources, split, problems."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from gptray.config.loader import build
from gptray.core.errors import ConfigError, DataError
from gptray.core.storage import Location, Storage

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
    first_document: int  # id of the shard's first document (ids grow in corpus order; shards.py)
    sha256: str
    bytes: int
    last_document: int = -1  # id of its last document (-1: not recorded, older manifests)
    source: int = -1  # index of the data.sources entry its documents came from (-1: older manifests)


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
    weight: float = 1.0  # mixture weight: copies written of each document (fractions subsample)
    documents_read: int = 0  # documents read and tokenized, before the weight
    tokens_read: int = 0
    bytes_read: int = 0  # input bytes of its documents and problem records
    documents: int = 0  # documents written to the shards (after the weight)
    tokens: int = 0
    share: float = 0.0  # its part of all tokens written
    problems: ProblemCounts = field(default_factory=ProblemCounts)
    # A Hugging Face dataset's commit, the exact revision read (data/hub_revision.py); "unknown" where neither the
    # Hub (offline) nor its local copy could tell; None for sources that are no Hub repository.
    revision: str | None = None


@dataclass
class Manifest:
    tokenizer: dict
    split: dict  # how documents were assigned: {"val_fraction", "seed", "method", "request_digest"}
    sources: list[SourceInfo]
    splits: dict[str, SplitInfo]
    documents: int = 0
    tokens: int = 0
    problems: ProblemCounts = field(default_factory=ProblemCounts)
    mixture: dict = field(default_factory=dict)  # how source weights became copies: {"method"}
    # Shards carry prompt_tokens per document (prompt/completion sources): training computes no
    # loss on a document's first prompt_tokens tokens.
    prompt_masked: bool = False
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

    def save(self, dataset_dir: Location) -> str:
        """Write manifest.json atomically (readers never see a half-written one); returns its location."""
        store = dataset_dir if isinstance(dataset_dir, Storage) else Storage(str(dataset_dir))
        store.write_bytes(MANIFEST_NAME, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return store.uri(MANIFEST_NAME)

    @classmethod
    def load(cls, dataset_dir: Location) -> Manifest:
        """The manifest of a token dataset in a local directory or at an object-store URI."""
        store = dataset_dir if isinstance(dataset_dir, Storage) else Storage(str(dataset_dir))
        where = store.uri(MANIFEST_NAME)
        if not store.exists(MANIFEST_NAME):
            raise DataError(f"no token dataset at {store.uri()} (missing {MANIFEST_NAME}); run `gptray tokenize` first")
        try:
            data = json.loads(store.read_bytes(MANIFEST_NAME))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise DataError(f"{where} is not a {FORMAT} v{VERSION} manifest")
        try:
            manifest = build(cls, data)
        except ConfigError as exc:
            raise DataError(f"{where} is malformed: {exc}") from None
        manifest.check(where)
        return manifest

    def check(self, where: str) -> None:
        """Refuse a manifest whose fingerprint is not the digest of its content (the fingerprint names the
        node's cache directory) or whose shard paths leave the dataset directory."""
        if self.fingerprint != self.compute_fingerprint():
            raise DataError(f"{where}: its fingerprint {self.fingerprint[:80]!r} is not the digest of its tokenizer "
                            "and shard checksums (edited or corrupt); tokenize the dataset again")
        for split, info in self.splits.items():
            for shard in info.shards:
                if not is_inside(shard.path):
                    raise DataError(f"{where}: {split} shard path {shard.path!r} leaves the dataset directory "
                                    "(absolute, a URI, or with '..'); shard paths are relative to it")

    def split_info(self, split: str) -> SplitInfo:
        return self.splits.get(split, SplitInfo())


def is_inside(relative: str) -> bool:
    """Whether a path from a manifest names a file inside the dataset directory: relative, no '..', no URI."""
    if not relative or "\\" in relative or "\0" in relative or "://" in relative:
        return False
    path = PurePosixPath(relative)
    return not path.is_absolute() and ".." not in path.parts
