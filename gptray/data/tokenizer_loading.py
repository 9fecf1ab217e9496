"""Which tokenizer: the one `data.tokenizer` names (tiktoken, a tokenizer.json, hf:NAME), or a dataset's own."""

from __future__ import annotations

import logging
from pathlib import Path

from gptray.config import ExperimentConfig
from gptray.config.schema import tokenizer_kind
from gptray.core.errors import DataError
from gptray.core.paths import is_uri
from gptray.core.storage import Storage
from gptray.data.bytes_tokenizer import BytesTokenizer
from gptray.data.hf_tokenizer import HuggingFaceTokenizer
from gptray.data.tiktoken_tokenizer import TiktokenTokenizer

log = logging.getLogger(__name__)


def load_tokenizer(spec: str):
    """The tokenizer `data.tokenizer` names: a tiktoken encoding (gpt2), a tokenizer.json (or a directory
    holding one, as `gptray tokenizer train` writes) by path or URI, hf:NAME[@REVISION] from the Hub, or `bytes`."""
    kind = tokenizer_kind(spec)
    if kind == "hub":
        return HuggingFaceTokenizer.from_hub(spec)
    if kind == "file":
        return HuggingFaceTokenizer.from_file(tokenizer_file(spec), spec)
    if kind == "bytes":
        return BytesTokenizer()
    return TiktokenTokenizer(spec)


TOKENIZER_FILE = "tokenizer.json"  # a Hugging Face tokenizer's file, kept in its dataset and run directories


def dataset_tokenizer(dataset, manifest):
    """The tokenizer a token dataset was written with (`dataset`: its Storage): tiktoken's by name, any
    other from the tokenizer.json the tokenize job kept beside the manifest, checked against its digest."""
    info = manifest.tokenizer
    if info.get("kind", "tiktoken") == "tiktoken":
        return TiktokenTokenizer(info["name"])
    if info["kind"] == BytesTokenizer.kind:
        return BytesTokenizer()
    tokenizer = stored_tokenizer(dataset, info["name"])
    if tokenizer is None:
        raise DataError(f"{dataset.uri()} lacks {TOKENIZER_FILE}, the tokenizer its manifest names "
                        f"({info['name']}): tokenize it again")
    if tokenizer.digest != info.get("digest"):
        raise DataError(f"{dataset.uri(TOKENIZER_FILE)} is not the tokenizer the dataset was written with "
                        f"(sha256 {tokenizer.digest[:12]}…, the manifest says {str(info.get('digest'))[:12]}…)")
    return tokenizer


def stored_tokenizer(directory, name: str) -> HuggingFaceTokenizer | None:
    """The tokenizer.json a dataset or run directory (a Storage) keeps, named `name`; None without one."""
    if not directory.exists(TOKENIZER_FILE):
        return None
    return HuggingFaceTokenizer(directory.read_bytes(TOKENIZER_FILE).decode("utf-8"), name)


def tokenizer_file(spec: str) -> str:
    """The tokenizer.json a path names: the path itself, or the file of that name in the directory."""
    if spec.endswith(".json"):
        return spec
    return f"{spec.rstrip('/')}/tokenizer.json"


def tokenizer_for_run(config: ExperimentConfig, manifest):
    """The dataset's tokenizer, which data.tokenizer must name (a run's samples, evals and exports use it)."""
    tokenizer = dataset_tokenizer(Storage(config.data.dataset_dir), manifest)
    if config.data.tokenizer == tokenizer.name or _learned_elsewhere(config.data.tokenizer, tokenizer.name):
        return tokenizer
    if load_tokenizer(config.data.tokenizer).digest != tokenizer.digest:
        raise DataError(f"{config.data.dataset_dir} was tokenized with {tokenizer.name}, but data.tokenizer is "
                        f"{config.data.tokenizer}: tokenize into another data.dataset_dir, or set data.tokenizer "
                        f"to the dataset's")
    return tokenizer


def _learned_elsewhere(spec: str, dataset_name: str) -> bool:
    """Whether data.tokenizer is a local tokenizer.json missing here that the dataset's tokenizer was learned
    as on another machine or in another job's working directory (the same directory name, as a relative
    default like data/tokenizers/tinyshakespeare-8k reads from anywhere): the dataset's copy then serves."""
    if tokenizer_kind(spec) != "file" or is_uri(spec) or tokenizer_kind(dataset_name) != "file":
        return False
    ours, theirs = Path(tokenizer_file(spec)), Path(tokenizer_file(dataset_name))
    if ours.is_file() or ours.parts[-2:] != theirs.parts[-2:]:
        return False
    log.info("data.tokenizer %s is not on this machine: using the copy the dataset keeps (learned as %s)",
             spec, dataset_name)
    return True
