"""Resolve configured sources to concrete inputs, and read each as an ordered Ray Dataset of documents."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from gptray.config import SourceConfig
from gptray.data import corpora
from gptray.data.readers import file_format, read_documents
from gptray.errors import ConfigError, DataError


@dataclass
class ResolvedSource:
    """A source with its files found (local) or its Hugging Face dataset named, ready to read."""

    index: int
    config: SourceConfig
    kind: str  # "files" or "hf"
    description: str
    text_unit: str = "file"
    files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # found in a directory, format not supported


def resolve_sources(sources: list[SourceConfig]) -> list[ResolvedSource]:
    """Find every input before any Ray work starts; a missing path is a ConfigError naming its key."""
    if not sources:
        raise ConfigError("data.sources", "no sources: give at least one path, hf dataset or corpus")
    return [_resolve(i, source) for i, source in enumerate(sources)]


def _resolve(index: int, source: SourceConfig) -> ResolvedSource:
    key = f"data.sources[{index}]"
    if source.hf:
        return ResolvedSource(index, source, "hf", source.describe(), text_unit=source.text_unit or "file")
    if source.corpus:
        entry = corpora.lookup(source.corpus, f"{key}.corpus")
        path = str(corpora.corpus_file(source.corpus, f"{key}.corpus"))
        return ResolvedSource(index, source, "files", source.describe(),
                              text_unit=source.text_unit or entry.text_unit, files=[path])
    files, skipped = _local_files(source.path, f"{key}.path")
    return ResolvedSource(index, source, "files", source.describe(), text_unit=source.text_unit or "file",
                          files=files, skipped_files=skipped)


def _local_files(path: str, key: str) -> tuple[list[str], list[str]]:
    if any(ch in path for ch in "*?["):
        matches = sorted(m for m in glob.glob(path, recursive=True) if os.path.isfile(m))
        if not matches:
            raise ConfigError(key, f"no files match {path!r}")
        return _split_supported(matches, key, path)
    p = Path(path)
    if p.is_dir():
        found = sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        if not found:
            raise ConfigError(key, f"directory {path} holds no files")
        return _split_supported(found, key, path)
    if p.is_file():
        if file_format(path) is None:
            raise ConfigError(key, f"{path}: unsupported file type (use .txt, .jsonl, .json, .parquet, "
                                   "or .gz of text or JSON)")
        return [str(p)], []
    raise ConfigError(key, f"no such file or directory: {path}")


def _split_supported(paths: list[str], key: str, pattern: str) -> tuple[list[str], list[str]]:
    supported = [p for p in paths if file_format(p) is not None]
    skipped = [p for p in paths if file_format(p) is None]
    if not supported:
        raise ConfigError(key, f"{pattern}: none of its {len(paths)} file(s) is .txt, .jsonl, .json or .parquet")
    return supported, skipped


def _read_file_row(row: dict, text_unit: str, text_field: str):
    yield from read_documents(row["path"], text_unit=text_unit, text_field=text_field)


def source_dataset(source: ResolvedSource, rows_per_block: int = 4096):
    """An ordered Ray Dataset of `{text, loc, status, error}` records for one source."""
    import ray.data

    if source.kind == "files":
        files = ray.data.from_items([{"path": f} for f in source.files], override_num_blocks=len(source.files))
        return files.flat_map(
            _read_file_row, fn_kwargs={"text_unit": source.text_unit, "text_field": source.config.text_field}
        )
    table = _hf_table(source)
    blocks = [table.slice(start, rows_per_block) for start in range(0, max(len(table), 1), rows_per_block)]
    return ray.data.from_arrow(blocks).map_batches(
        _hf_records, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"text_field": source.config.text_field, "description": source.description},
    )


def _hf_table(source: ResolvedSource) -> pa.Table:
    """Load a Hugging Face dataset (downloading/caching as `datasets` does) as one Arrow table."""
    import datasets

    cfg = source.config
    try:
        dataset = datasets.load_dataset(cfg.hf, cfg.hf_config, split=cfg.hf_split, data_files=cfg.data_files)
    except Exception as exc:  # datasets raises many kinds: missing files, hub errors, bad configs
        raise DataError(
            f"could not load Hugging Face dataset {source.description}: {type(exc).__name__}: {exc}"
        ) from exc
    if cfg.text_field not in dataset.column_names:
        raise ConfigError(
            f"data.sources[{source.index}].text_field",
            f"{source.description} has no column {cfg.text_field!r} (columns: {', '.join(dataset.column_names)})",
        )
    # Slicing in arrow format gives the rows in dataset order (honouring any indices mapping)
    # without copying memory-mapped data.
    table = dataset.select_columns([cfg.text_field]).with_format("arrow")[:]
    return table.append_column("__row", pa.array(np.arange(len(table), dtype=np.int64)))


def _hf_records(batch: pa.Table, text_field: str, description: str) -> pa.Table:
    texts = batch.column(text_field).to_pylist()
    rows = batch.column("__row").to_pylist()
    out = {"text": [], "loc": [], "status": [], "error": []}
    for text, row in zip(texts, rows):
        loc = f"{description}:row {row + 1}"
        if not isinstance(text, str):
            out["text"].append("")
            out["status"].append("missing_field")
            out["error"].append(f"{text_field!r} is {type(text).__name__}, not a string")
        else:
            out["text"].append(text)
            out["status"].append("ok" if text.strip() else "empty")
            out["error"].append("")
        out["loc"].append(loc)
    return pa.table(out)
