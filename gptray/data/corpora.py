"""Named corpora: where to find them on disk, and where to download them from when missing."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gptray.errors import ConfigError, DataError

CORPORA_PATH_ENV = "GPTRAY_CORPORA"  # directories (os.pathsep-separated) searched before downloading


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    filename: str
    url: str
    sha256: str
    size: str
    text_unit: str = "file"  # how its text files divide into documents


REGISTRY: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in [
        Corpus(
            name="tinyshakespeare",
            description="40,000 lines of Shakespeare (Karpathy's char-rnn corpus); one document per speech",
            filename="tinyshakespeare.txt",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            size="1.1 MB",
            text_unit="paragraph",
        ),
    ]
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gptray" / "corpora"


def search_dirs() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get(CORPORA_PATH_ENV, "").split(os.pathsep) if d]
    return dirs + [default_cache_dir()]


def lookup(name: str, key: str = "corpus") -> Corpus:
    if name not in REGISTRY:
        raise ConfigError(key, f"unknown corpus {name!r}; known corpora: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def corpus_file(name: str, key: str = "corpus") -> Path:
    """The local file of a named corpus: found in GPTRAY_CORPORA dirs or the cache, else downloaded."""
    corpus = lookup(name, key)
    for directory in search_dirs():
        candidate = directory / corpus.filename
        if candidate.is_file():
            return candidate
    return _download(corpus)


def _download(corpus: Corpus) -> Path:
    target = default_cache_dir() / corpus.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        try:
            with urllib.request.urlopen(corpus.url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    tmp.write(chunk)
        except OSError as exc:
            os.unlink(tmp.name)
            places = ", ".join(str(d) for d in search_dirs())
            raise DataError(
                f"corpus {corpus.name!r} is not on this machine and downloading {corpus.url} failed ({exc}). "
                f"Put {corpus.filename} in one of: {places} (or set {CORPORA_PATH_ENV})."
            ) from exc
    if digest.hexdigest() != corpus.sha256:
        os.unlink(tmp.name)
        raise DataError(f"download of {corpus.url} has sha256 {digest.hexdigest()}, expected {corpus.sha256}")
    shutil.move(tmp.name, target)
    return target
