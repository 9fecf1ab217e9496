"""Locations: local paths and object-store URIs (s3://bucket/prefix?endpoint_override=…), told apart and joined."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit


def is_uri(location: str) -> bool:
    return "://" in location


def absolute_path(path: str) -> str:
    """Make a local path absolute (against the working directory); URIs stay as they are."""
    if is_uri(path):
        return path
    return str(Path(os.path.expanduser(path)).absolute())


def join_path(base: str, *parts: str) -> str:
    """`base/part/…` for a local path or a URI."""
    if is_uri(base):
        # settings in the query (s3://bucket/prefix?endpoint_override=…) stay at the end
        location, _, query = base.partition("?")
        return "/".join([location.rstrip("/"), *parts]) + (f"?{query}" if query else "")
    return str(Path(base, *parts))


def parent(location: str) -> str:
    """The directory holding a local path or URI (a URI keeps its ?query of settings)."""
    if not is_uri(location):
        return str(Path(location).parent)
    path, mark, query = location.partition("?")
    return path.rstrip("/").rsplit("/", 1)[0] + mark + query


def within(location: str, directory: str) -> bool:
    """Whether a location is a directory or inside it (local paths, or URIs on the same store)."""
    if is_uri(location) != is_uri(directory):
        return False
    if is_uri(location):
        inner, outer = location.partition("?")[0].rstrip("/"), directory.partition("?")[0].rstrip("/")
        return inner == outer or inner.startswith(outer + "/")
    inner, outer = Path(location).absolute(), Path(directory).absolute()
    return inner == outer or outer in inner.parents


def cache_home(*parts: str) -> Path:
    """gptray's cache on this machine (XDG_CACHE_HOME, else ~/.cache, then gptray/…): token arrays, corpora,
    eval files and checkpoint copies each have a folder of their own in it."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "gptray", *parts)


# Query settings that carry secrets (pyarrow's S3 and GCS filesystems read these from a URI's query).
_SECRET_SETTINGS = {"access_key", "secret_key", "session_token", "access_token", "password", "token", "secret"}


def credentials_in(location: str) -> str | None:
    """What part of a URI holds credentials (user:password@ before the host, or a secret ?setting), else
    None. Credentials in a URI end up in logs, config.yaml and MLflow; they belong in the environment."""
    if not is_uri(location):
        return None
    parts = urlsplit(location)
    if "@" in parts.netloc:
        return "user:password@ before the host"
    secrets = sorted(k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if k.lower() in _SECRET_SETTINGS)
    return f"?{'&'.join(f'{k}=…' for k in secrets)}" if secrets else None


def hash_file(path: str | Path, digest, chunk_bytes: int = 4 << 20):
    """`digest` (a hashlib object, or anything with update()) fed a local file's bytes in pieces; returned."""
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest
