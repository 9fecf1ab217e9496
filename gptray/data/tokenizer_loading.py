"""Which tokenizer: the one `data.tokenizer` names (tiktoken, a tokenizer.json, hf:NAME), or a dataset's own."""

from __future__ import annotations

from gptray.base.errors import DataError
from gptray.config.schema import tokenizer_kind
from gptray.data.hf_tokenizer import HuggingFaceTokenizer
from gptray.data.tokenizer import TiktokenTokenizer


def load_tokenizer(spec: str):
    """The tokenizer `data.tokenizer` names: a tiktoken encoding (gpt2), a tokenizer.json (or a directory
    holding one, as `gptray tokenizer train` writes) by path or URI, or hf:NAME[@REVISION] from the Hub."""
    kind = tokenizer_kind(spec)
    if kind == "hub":
        return HuggingFaceTokenizer.from_hub(spec)
    if kind == "file":
        return HuggingFaceTokenizer.from_file(tokenizer_file(spec), spec)
    return TiktokenTokenizer(spec)


TOKENIZER_FILE = "tokenizer.json"  # a Hugging Face tokenizer's file, kept in its dataset and run directories


def dataset_tokenizer(dataset, manifest):
    """The tokenizer a token dataset was written with (`dataset`: its Storage): tiktoken's by name, any
    other from the tokenizer.json the tokenize job kept beside the manifest, checked against its digest."""
    info = manifest.tokenizer
    if info.get("kind", "tiktoken") == "tiktoken":
        return TiktokenTokenizer(info["name"])
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
