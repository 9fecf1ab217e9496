"""Named corpora: what each one is, how big, where it comes from, and how to find it on this machine.

Two kinds. A file corpus (tinyshakespeare) is one file, found in $GPTRAY_CORPORA or the cache,
else downloaded; either way checked against its sha256. A Hugging Face corpus loads through `datasets`
from the Hub (streamed where it is large), or from a local copy of its Hub repository: a
directory `<dir>/<owner>/<name>` in $GPTRAY_CORPORA, e.g. made with
`huggingface-cli download --repo-type dataset Salesforce/wikitext --local-dir $GPTRAY_CORPORA/Salesforce/wikitext`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gptray.core.errors import ConfigError, DataError
from gptray.core.paths import cache_home, hash_file
from gptray.data.hub_revision import is_commit

CORPORA_PATH_ENV = "GPTRAY_CORPORA"  # directories (os.pathsep-separated) searched before downloading


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    size: str  # documents, GPT-2 tokens and bytes, as far as known (approximate)
    # A file corpus:
    filename: str = ""
    url: str = ""
    sha256: str = ""
    text_unit: str = "file"  # how its text file divides into documents
    # A Hugging Face corpus:
    hf: str = ""
    hf_config: str | None = None
    hf_revision: str | None = None
    text_field: str = "text"
    streaming: bool = False  # large corpora are streamed: nothing is prepared on local disk first
    # Rows that are lines of longer documents, joined back before tokenizing ("wikitext": an article
    # starts at a ` = Title = ` heading row).
    join_rows: str | None = None

    @property
    def kind(self) -> str:
        return "hf" if self.hf else "file"

    @property
    def pin(self) -> str:
        """What fixes its content: a file's sha256, a Hub commit, or what an unpinned Hub corpus follows."""
        if self.kind == "file":
            return f"sha256 {self.sha256[:12]}…"
        if is_commit(self.hf_revision):
            return f"commit {self.hf_revision[:12]}…"
        return f"no: {self.hf_revision or 'main'}"  # a branch moves; the commit read is in the dataset's manifest

    @property
    def source(self) -> str:
        if self.hf:
            return f"hf:{self.hf}" + (f" ({self.hf_config})" if self.hf_config else "")
        return self.url


REGISTRY: dict[str, Corpus] = {
    corpus.name: corpus
    for corpus in [
        Corpus(
            name="tinyshakespeare",
            description="40,000 lines of Shakespeare (Karpathy's char-rnn corpus); one document per speech",
            size="7.2K documents, 0.33M tokens, 1.1 MB",
            filename="tinyshakespeare.txt",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            text_unit="paragraph",
        ),
        Corpus(
            name="wikitext-2",
            description="WikiText-2 (raw): Wikipedia Good and Featured articles; one document per article",
            size="0.6K articles, 2.4M tokens, 11 MB",
            hf="Salesforce/wikitext", hf_config="wikitext-2-raw-v1", join_rows="wikitext",
        ),
        Corpus(
            name="wikitext-103",
            description="WikiText-103 (raw): Wikipedia Good and Featured articles; one document per article",
            size="28K articles, 0.12B tokens, 0.54 GB",
            hf="Salesforce/wikitext", hf_config="wikitext-103-raw-v1", join_rows="wikitext",
        ),
        Corpus(
            name="wikipedia",
            description="Wikipedia (wikimedia/wikipedia): the cleaned articles of one language's dump, one "
                        "document per article. Pick the dump with hf_config: <date>.<language> (default "
                        "20231101.en; e.g. 20231101.de). Small alternative: wikitext-2",
            size="20231101.en: 6.4M articles, ~4.7B tokens, 20 GB",
            hf="wikimedia/wikipedia", hf_config="20231101.en", streaming=True,
        ),
        Corpus(
            name="openwebtext-10k",
            description="The first 10,000 documents of OpenWebText, for quick experiments",
            size="10K documents, 11M tokens, 50 MB",
            hf="stas/openwebtext-10k", hf_revision="refs/convert/parquet", hf_config="plain_text",
        ),
        Corpus(
            name="openwebtext",
            description="OpenWebText: an open reproduction of GPT-2's WebText (Reddit-linked web pages)",
            size="8.0M documents, 9.0B tokens, 38 GB",
            hf="Skylion007/openwebtext", streaming=True,
        ),
        Corpus(
            name="tinystories",
            description="TinyStories: short stories in simple English written by GPT-3.5/GPT-4",
            size="2.1M documents, 0.47B tokens, 1.9 GB",
            hf="roneneldan/TinyStories",
        ),
        Corpus(
            name="fineweb-edu-10bt",
            description="FineWeb-Edu sample-10BT: educational web pages filtered from FineWeb",
            size="9.7M documents, 10B tokens, 27 GB",
            hf="HuggingFaceFW/fineweb-edu", hf_config="sample-10BT", streaming=True,
        ),
        Corpus(
            name="c4-en",
            description="C4 (en): the Colossal Clean Crawled Corpus used to train T5",
            size="365M documents, 156B tokens, 305 GB",
            hf="allenai/c4", hf_config="en", streaming=True,
        ),
        Corpus(
            name="pile-uncopyrighted",
            description="The Pile with its copyrighted subsets (Books3, BookCorpus2, OpenSubtitles, YTSubtitles, "
                        "OWT2) removed",
            size="~177M documents, ~0.3T tokens, ~0.8 TB",
            hf="monology/pile-uncopyrighted", streaming=True,
        ),
        Corpus(
            name="redpajama-sample",
            description="RedPajama-Data-1T-Sample: a 1B-token sample of RedPajama's LLaMA-style mixture",
            size="0.93M documents, ~1B tokens, ~3 GB",
            hf="togethercomputer/RedPajama-Data-1T-Sample", hf_revision="refs/convert/parquet", streaming=True,
        ),
    ]
}


def default_cache_dir() -> Path:
    return cache_home("corpora")


def search_dirs() -> list[Path]:
    dirs = [Path(d) for d in os.environ.get(CORPORA_PATH_ENV, "").split(os.pathsep) if d]
    return dirs + [default_cache_dir()]


def lookup(name: str, key: str = "corpus") -> Corpus:
    if name not in REGISTRY:
        raise ConfigError(key, f"unknown corpus {name!r}; known corpora: {', '.join(sorted(REGISTRY))} "
                               "(`gptray data list` describes them)")
    return REGISTRY[name]


def local_copy(corpus: Corpus) -> Path | None:
    """Where the corpus already is on this machine: its file, or a local copy of its Hub repository."""
    for directory in search_dirs():
        candidate = directory / (corpus.filename if corpus.kind == "file" else corpus.hf)
        if candidate.is_file() if corpus.kind == "file" else candidate.is_dir():
            return candidate
    return None


def corpus_file(name: str, key: str = "corpus") -> Path:
    """The local file of a named file corpus: found in GPTRAY_CORPORA dirs or the cache, else downloaded."""
    corpus = lookup(name, key)
    if corpus.kind != "file":
        raise ConfigError(key, f"corpus {name!r} is a Hugging Face dataset, not a file")
    found = local_copy(corpus)
    if found is None:
        return _download(corpus)
    # a copy on this machine is the corpus only if it is byte for byte the one the registry names
    if (digest := _sha256(found)) != corpus.sha256:
        raise DataError(f"{found} is not corpus {name!r}: its sha256 is {digest}, the corpus's is {corpus.sha256} "
                        f"({corpus.url}). Remove or replace it; a file of your own is a path source, not a corpus")
    return found


def _sha256(path: Path) -> str:
    return hash_file(path, hashlib.sha256()).hexdigest()


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
