"""Resolve configured sources before any Ray work: find files (local or object store), open Hugging Face datasets.

Everything that can be wrong with a source's configuration (a missing path, an unknown corpus, a
dataset without the text column) is found here and reported as a ConfigError naming its key.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gptray.config import SourceConfig
from gptray.core import storage
from gptray.core.errors import ConfigError, DataError
from gptray.core.paths import is_uri
from gptray.core.storage import FileEntry
from gptray.data import corpora
from gptray.data.hub_files import hub_filesystem, hub_parquet_files
from gptray.data.hub_revision import UNKNOWN, hub_offline, is_commit, source_commit
from gptray.data.readers import article_starts, file_format
from gptray.data.token_files import TokenLayout, read_layout

TOKEN_FILE_SUFFIX = ".bin"  # what a directory of token files holds (a glob or a file path takes any name)
LAYOUT_THREADS = 16
SUPPORTED_HELP = ".txt/.text/.md, .jsonl/.ndjson/.json, .parquet, text and JSON also as .gz/.zst/.bz2"

log = logging.getLogger(__name__)


@dataclass
class ResolvedSource:
    """A source with its files found or its dataset opened, ready to plan read tasks for."""

    index: int
    config: SourceConfig
    kind: str  # "files", "hf_table" (prepared in the local datasets cache) or "hf_stream"
    description: str
    text_unit: str = "file"
    text_field: str = "text"
    prompt_field: str | None = None  # JSON sources of prompt/completion pairs: the prompt's field
    weight: float = 1.0
    fs: pafs.FileSystem | None = None
    name_prefix: str = ""  # turns a path inside `fs` into the name users know ("s3://" + "bucket/key")
    files: list[FileEntry] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # found in a directory or glob, format not supported
    table: pa.Table | None = None  # hf_table: the text column, in dataset order
    join_rows: str | None = None  # rows are lines of documents ("wikitext")
    stream: Any = None  # hf_stream: a datasets.IterableDataset of the text column
    identity: dict = field(default_factory=dict)  # what decides the source's content (for rerun checks)
    # The commit of the Hugging Face repository it reads (hub_revision.py): a sha, "unknown" (offline, or a local
    # copy of a corpus that records none), None for sources that are no repository.
    revision: str | None = None
    token_format: str | None = None  # token files ("nanogpt", "llmc"): ids read as they are, never tokenized
    token_layouts: list[TokenLayout] = field(default_factory=list)  # token files: each file's ids, checked
    split: str | None = None  # "val" for data.val_sources, "train" for data.sources beside them; None: hashed
    continuous: bool = False  # one continuous text (a built-in file corpus): data.split auto cuts it at its tail

    def name(self, entry: FileEntry) -> str:
        return self.name_prefix + entry.path

    @property
    def file_names(self) -> list[str]:
        return [self.name(f) for f in self.files]


def resolve_sources(sources: list[SourceConfig], vocab_size: int | None = None,
                    val_sources: list[SourceConfig] = ()) -> list[ResolvedSource]:
    """Find every input before any Ray work starts; a missing path is a ConfigError naming its key.

    `vocab_size` (data.tokenizer's) decides nanoGPT token files' dtype; `val_sources` follow the train
    sources, and with them every source's split is fixed instead of hashed.
    """
    if not sources:
        raise ConfigError("data.sources", "no sources: give at least one path, hf dataset or corpus")
    resolved = [_resolve(i, source, f"data.sources[{i}]", vocab_size) for i, source in enumerate(sources)]
    resolved += [_resolve(len(sources) + i, source, f"data.val_sources[{i}]", vocab_size)
                 for i, source in enumerate(val_sources)]
    if val_sources:
        for source in resolved:
            source.split = "train" if source.index < len(sources) else "val"
    return resolved


def _resolve(index: int, source: SourceConfig, key: str, vocab_size: int | None) -> ResolvedSource:
    common = dict(index=index, config=source, description=source.describe(), text_field=source.text_field,
                  prompt_field=source.prompt_field, weight=source.weight)
    if source.path and source.format:
        return _resolve_token_files(source.path, f"{key}.path", source.format, vocab_size, **common)
    if source.path:
        return _resolve_files(source.path, f"{key}.path", text_unit=source.text_unit or "file", **common)
    if source.hf:
        streaming = bool(source.streaming)
        return _resolve_hf(source.hf, source.hf_config, source.hf_split, source.hf_revision, source.data_files,
                           streaming, None, key, **common)
    corpus = corpora.lookup(source.corpus, f"{key}.corpus")
    if corpus.kind == "file" and source.hf_revision is not None:
        raise ConfigError(f"{key}.hf_revision", f"corpus {corpus.name!r} is a file, pinned by its sha256, "
                                                "not a Hugging Face dataset")
    if corpus.kind == "file":
        path = str(corpora.corpus_file(source.corpus, f"{key}.corpus"))
        resolved = _resolve_files(path, f"{key}.corpus", text_unit=source.text_unit or corpus.text_unit, **common)
        resolved.continuous = True
        return resolved
    streaming = corpus.streaming if source.streaming is None else source.streaming
    if corpus.join_rows and streaming:
        raise ConfigError(f"{key}.streaming", f"corpus {corpus.name!r} joins rows into documents, "
                                              "which needs streaming: false")
    mirror = corpora.local_copy(corpus)
    common["text_field"] = corpus.text_field if source.text_field == "text" else source.text_field
    # The source's hf_revision pins the corpus, over the registry's. A local copy is checked against a pin of
    # the source's or a commit of the registry's; the registry's branch names are the Hub's layout, not a pin.
    revision = source.hf_revision or corpus.hf_revision
    if mirror and not (source.hf_revision or is_commit(corpus.hf_revision)):
        revision = None
    # hf_config picks another of the corpus's configs (Wikipedia: another language or dump date).
    resolved = _resolve_hf(str(mirror) if mirror else corpus.hf, source.hf_config or corpus.hf_config,
                           source.hf_split, revision, None, streaming, corpus.join_rows, key, **common)
    if resolved.revision is None:  # a local copy of the corpus's repository that records no commit
        log.warning("%s: the local copy %s records no Hub commit (download it with `huggingface-cli download "
                    "--local-dir`, which does): its dataset will record the revision as unknown", key, mirror)
        resolved.revision = UNKNOWN
    return resolved


# --- files ---------------------------------------------------------------------------------------

def _resolve_files(location: str, key: str, **common) -> ResolvedSource:
    fs, prefix, found = _find_files(location, key)
    supported = [f for f in found if file_format(f.path) is not None]
    if not supported:
        raise ConfigError(key, f"{location}: none of its {len(found)} file(s) is {SUPPORTED_HELP}")
    if common.get("prompt_field"):
        not_json = [f.path for f in supported if file_format(f.path) != "json"]
        if not_json:
            raise ConfigError(key.rsplit(".", 1)[0] + ".prompt_field",
                              f"prompt/completion fields need JSON files, but {not_json[0]} is not .jsonl/.json")
    source = ResolvedSource(kind="files", fs=fs, name_prefix=prefix, files=supported, **common)
    source.skipped_files = [prefix + f.path for f in found if file_format(f.path) is None]
    source.identity = {"files": [[source.name(f), f.size, f.mtime_ns] for f in supported]}
    return source


def _resolve_token_files(location: str, key: str, fmt: str, vocab_size: int | None, **common) -> ResolvedSource:
    """Token files: every file a glob or a path names (in a directory, its .bin files), each header checked."""
    if vocab_size is None:
        raise ConfigError(key.rsplit(".", 1)[0] + ".format", "token files need data.tokenizer's vocabulary")
    fs, prefix, found = _find_files(location, key, token_files=True)
    source = ResolvedSource(kind="files", fs=fs, name_prefix=prefix, files=found, token_format=fmt,
                            text_unit="tokens", **common)
    with ThreadPoolExecutor(LAYOUT_THREADS) as pool:  # a header each: object stores have latency
        source.token_layouts = list(pool.map(lambda f: read_layout(fs, f.path, source.name(f), fmt, vocab_size),
                                             found))
    source.identity = {"files": [[source.name(f), f.size, f.mtime_ns] for f in found], "format": fmt}
    return source


def _find_files(location: str, key: str, token_files: bool = False) -> tuple[pafs.FileSystem, str, list[FileEntry]]:
    """The files a path, directory or glob names, with the prefix that turns their paths back into names."""
    try:
        fs, path = storage.resolve(location)
    except DataError as exc:
        raise ConfigError(key, str(exc)) from None
    prefix = location.split("://", 1)[0] + "://" if is_uri(location) else ""
    if prefix == "file://":
        prefix = ""
    try:
        if any(ch in path for ch in storage.GLOB_CHARS):
            found = storage.glob_files(fs, path)
            if not found:
                raise ConfigError(key, f"no files match {location!r}")
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                found = storage.list_tree(fs, path)
                if token_files:
                    found = [f for f in found if f.path.endswith(TOKEN_FILE_SUFFIX)]
                if not found:
                    raise ConfigError(key, f"directory {location} holds no files")
            elif info.type == pafs.FileType.File:
                if file_format(path) is None and not token_files:
                    raise ConfigError(key, f"{location}: unsupported file type (use {SUPPORTED_HELP})")
                found = [storage.file_entry(fs, path)]
            else:
                raise ConfigError(key, f"no such file or directory: {location}")
    except (OSError, DataError) as exc:
        raise ConfigError(key, f"cannot list {location}: {exc}") from None
    return fs, prefix, found


# --- Hugging Face datasets -----------------------------------------------------------------------

def _resolve_hf(path: str, name: str | None, split: str, revision: str | None, data_files: list[str] | None,
                streaming: bool, join_rows: str | None, key: str, **common) -> ResolvedSource:
    import datasets

    description = common["description"]
    text_field = common["text_field"]
    # Read at one commit, resolved now: the dataset records it, and a branch moving mid-job changes nothing.
    commit = source_commit(path, revision, key)
    if os.path.isdir(path):
        revision = None  # a local copy is the revision it holds (source_commit checked it against a pin)
    elif is_commit(commit):
        revision = commit
    if not streaming and join_rows is None and data_files is None:
        found = _hub_parquet(path, name, split, revision, f"{key}.text_field", **common)
        if found is not None:
            return _with_revision(found, commit)
    try:
        dataset = datasets.load_dataset(path, name, split=split, revision=revision, data_files=data_files,
                                        streaming=streaming)
    except Exception as exc:  # datasets raises many kinds: missing files, hub errors, bad configs
        raise DataError(f"could not load Hugging Face dataset {description} from {path}: "
                        f"{type(exc).__name__}: {exc}") from exc
    columns = dataset.column_names
    if columns is None and streaming:  # JSON/text builders learn their columns from the first rows
        columns = list(next(iter(dataset.take(1)), {}).keys())
    field_key = f"{key}.text_field"
    if text_field not in (columns or []):
        raise ConfigError(field_key, f"{description} has no column {text_field!r} "
                                     f"(columns: {', '.join(columns or []) or 'none'})")
    identity = {"hf": path, "config": name, "split": split, "revision": revision, "streaming": streaming,
                "data_files": _local_file_stats(data_files or []) + _local_file_stats([path])}
    if streaming:
        stream = dataset.select_columns([text_field])
        # Parquet datasets read a row group per shard: more parallel read tasks than files.
        stream = stream.reshard() if hasattr(stream, "reshard") else stream
        identity["shards"] = stream.num_shards
        return _with_revision(ResolvedSource(kind="hf_stream", stream=stream, identity=identity, join_rows=None,
                                             **common), commit)
    table = dataset.select_columns([text_field]).with_format("arrow")[:]
    identity["cache_files"] = [os.path.basename(os.path.dirname(f["filename"])) + "/" + os.path.basename(f["filename"])
                               for f in dataset.cache_files]
    identity["rows"] = table.num_rows
    return _with_revision(ResolvedSource(kind="hf_table", table=table, identity=identity, join_rows=join_rows,
                                         **common), commit)


def _with_revision(source: ResolvedSource, commit: str | None) -> ResolvedSource:
    """The source with the commit it reads; a known one is part of its identity (a dataset made from another
    commit is another request). Only when known, so that a request made before commits were recorded is equal."""
    source.revision = commit
    if is_commit(commit):
        source.identity["commit"] = commit
        log.info("%s: Hugging Face commit %s", source.description, commit)
    elif commit == UNKNOWN:
        log.warning("%s: the Hub could not be asked which commit it reads (offline?): its dataset will record the "
                    "revision as unknown; set hf_revision to a commit to pin it", source.description)
    return source


def _hub_parquet(path: str, name: str | None, split: str, revision: str | None, field_key: str,
                 **common) -> ResolvedSource | None:
    """The dataset as its repository's Parquet files, which read tasks read themselves (hub_files.py); None when
    its layout has none for this split, or the Hub cannot be listed (offline): then `datasets` prepares it."""
    if os.path.isdir(path):
        fs, root, prefix = pafs.LocalFileSystem(), os.path.abspath(path), ""
    elif "/" in path and not hub_offline():
        try:
            fs, root = hub_filesystem(path, revision)
        except ImportError:
            return None
        prefix = "hf://"
    else:
        return None
    try:
        files = hub_parquet_files(fs, root, name, split)
        columns = pq.read_schema(fs.open_input_file(files[0].path)).names if files else []
    except Exception as exc:  # the Hub unreachable (its client raises many kinds), a file not Parquet: datasets tries
        log.info("listing %s's Parquet files failed (%s); loading it through the datasets cache", path, exc)
        return None
    if not files:
        return None
    if common["text_field"] not in columns:
        raise ConfigError(field_key, f"{common['description']} has no column {common['text_field']!r} "
                                     f"(columns: {', '.join(columns) or 'none'})")
    source = ResolvedSource(kind="files", fs=fs, name_prefix=prefix, files=files, text_unit="row", **common)
    source.identity = {"hf": path, "config": name, "split": split, "revision": revision,
                       "parquet_files": [[source.name(f), f.size, f.mtime_ns] for f in files]}
    return source


def _local_file_stats(paths: list[str]) -> list:
    """Size and modification time of local files (every file under a local directory)."""
    stats = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, names in sorted(os.walk(path)):
                for name in sorted(names):
                    full = os.path.join(root, name)
                    stats.append([full, os.path.getsize(full), os.stat(full).st_mtime_ns])
        elif os.path.isfile(path):
            stats.append([path, os.path.getsize(path), os.stat(path).st_mtime_ns])
    return stats


def document_start_rows(table: pa.Table, text_field: str, join_rows: str | None) -> np.ndarray:
    """Rows where a document may begin: every row, or for joined rows only the rows that open a document."""
    if join_rows == "wikitext":
        return np.array(article_starts(table.column(text_field)), dtype=np.int64)
    return np.arange(table.num_rows, dtype=np.int64)
