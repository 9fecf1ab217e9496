"""A Hugging Face dataset's Parquet files, found from its repository's layout, so read tasks read them themselves.

The Hub lays a dataset out as Parquet files per config and split: the README's `configs:` front
matter names each split's files (`data_files: [{split: train, path: data/train-*}]`), and a repo
without it holds `data/<split>-00000-of-0000N.parquet`. Listing them (and, when planning, reading
their footers) is all the driver does; each file's row groups are read by the read tasks, on
whatever node runs them. The same code lists a local copy of a repository and, through
huggingface_hub's filesystem, the Hub itself.
"""

from __future__ import annotations

import fnmatch

import pyarrow.fs as pafs
import yaml

from gptray.core.storage import FileEntry, file_entry, list_tree

README = "README.md"


def hub_parquet_files(fs: pafs.FileSystem, root: str, config: str | None, split: str) -> list[FileEntry]:
    """The Parquet files of `split` of `config` in the repository at `root` of `fs`, in name order; [] when the
    layout names none (a script, JSON or text dataset: then `datasets` prepares it)."""
    root = root.rstrip("/")
    patterns = _split_patterns(_configs(fs, root), config, split)
    files = [f for f in list_tree(fs, root) if f.path.endswith(".parquet")]
    chosen = [f for f in files if any(fnmatch.fnmatch(f.path[len(root) + 1:], p) for p in patterns)]
    return sorted(chosen, key=lambda f: f.path)


def _configs(fs: pafs.FileSystem, root: str) -> list[dict]:
    """The README's `configs:` entries (its YAML front matter), or [] without one."""
    entry = file_entry(fs, f"{root}/{README}")
    if entry is None:
        return []
    with fs.open_input_stream(entry.path) as stream:
        text = stream.read().decode("utf-8", "replace")
    if not text.startswith("---"):
        return []
    front = text[3:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError:
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [c for c in configs if isinstance(c, dict)] if isinstance(configs, list) else []


def _split_patterns(configs: list[dict], config: str | None, split: str) -> list[str]:
    """Globs (relative to the repository) of the split's files: the README's, else the Hub's default layout."""
    if not configs:
        return [f"data/{split}-*", f"data/{split}/*", f"{config}/{split}-*" if config else f"{split}-*"]
    chosen = next((c for c in configs if c.get("config_name") == config), None) if config else None
    if chosen is None and not config:
        chosen = next((c for c in configs if c.get("default")), configs[0] if len(configs) == 1 else None)
    if chosen is None:
        return []
    data_files = chosen.get("data_files")
    if isinstance(data_files, str):
        return [data_files] if split == "train" else []
    patterns: list[str] = []
    for item in data_files if isinstance(data_files, list) else []:
        if isinstance(item, dict) and item.get("split") == split:
            paths = item.get("path")
            patterns += [paths] if isinstance(paths, str) else list(paths or [])
    return [p + "*" if p.endswith("/") else p for p in patterns]


def hub_filesystem(repo: str, revision: str | None) -> tuple[pafs.FileSystem, str]:
    """The Hub as a pyarrow filesystem and the repository's root in it (network; huggingface_hub's credentials)."""
    from huggingface_hub import HfFileSystem

    return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem())), f"datasets/{repo}" + (f"@{revision}"
                                                                                         if revision else "")
