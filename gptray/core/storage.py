"""Files on local disk or in object stores (s3://, gs://, anything fsspec knows) behind one pyarrow interface.

A location is a local path or a URI. `resolve` turns it into a pyarrow FileSystem and a path inside
it; the FileSystem pickles with its settings (endpoint, region), so Ray tasks read through it
exactly as the driver does. S3 settings come from the usual AWS variables (AWS_ENDPOINT_URL,
AWS_REGION, AWS_ACCESS_KEY_ID, …) or from query parameters in the URI
(`s3://bucket/prefix?endpoint_override=http://127.0.0.1:9000&region=us-east-1`).
"""

from __future__ import annotations

import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from gptray.core.errors import StorageError
from gptray.core.paths import credentials_in, is_uri, join_path

# Compression suffixes read transparently, and the codec pyarrow streams them with.
COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class FileEntry:
    """A file found by listing: its path inside the filesystem, size and modification time."""

    path: str
    size: int
    mtime_ns: int


class Storage:
    """A filesystem and a base path inside it; every method takes paths relative to the base."""

    def __init__(self, location: str):
        if where := credentials_in(location):  # the location itself is not repeated: it holds the secret
            raise StorageError(f"a storage URI holds credentials ({where}), which would be logged and saved: give "
                               "them in the environment instead (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                               "GOOGLE_APPLICATION_CREDENTIALS)")
        self.location = location
        self.fs, self.base = resolve(location)

    @classmethod
    def of(cls, location: Location) -> Storage:
        """A location as a Storage; a Storage is taken as it is (its filesystem is not looked up again)."""
        return location if isinstance(location, Storage) else cls(str(location))

    @classmethod
    def on(cls, fs: pafs.FileSystem, base: str, location: str | None = None) -> Storage:
        """A Storage on a filesystem already resolved (e.g. one Ray hands over), without a lookup."""
        store = cls.__new__(cls)
        store.fs, store.base, store.location = fs, base, location or base
        return store

    def child(self, relative: str) -> Storage:
        """The Storage of a subdirectory, on the same filesystem (its settings are not looked up again)."""
        return Storage.on(self.fs, self.path(relative), join_path(self.location, relative))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, relative: str = "") -> str:
        return join(self.base, relative) if relative else self.base

    def uri(self, relative: str = "") -> str:
        """The user-facing name of a file (a URI for object stores, a path locally)."""
        return join(self.location.split("?", 1)[0], relative) if relative else self.location

    def exists(self, relative: str) -> bool:
        return self.size(relative) is not None

    def read_bytes(self, relative: str) -> bytes:
        return read_bytes(self.fs, self.path(relative), self.uri(relative))

    def read_ranges(self, relative: str, size: int, part_bytes: int = 8 << 20, threads: int = 8) -> bytes:
        """A file of known `size` read as concurrent range requests of `part_bytes` (one object-store GET
        is limited by its connection, many together by the node's network); one plain read locally. A file
        of another size is refused before anything is allocated or read."""
        actual = self.size(relative)
        if actual is None:
            raise StorageError(f"no such file: {self.uri(relative)}")
        if actual != size:
            raise StorageError(f"{self.uri(relative)} is {actual:,} bytes, not the {size:,} expected "
                               "(changed or corrupt); not read")
        if self.is_local or size <= part_bytes:
            return self.read_bytes(relative)
        buffer = bytearray(size)

        def read_part(offset: int) -> None:
            data = source.read_at(min(part_bytes, size - offset), offset)  # read_at is safe across threads
            if len(data) != min(part_bytes, size - offset):
                raise StorageError(f"{self.uri(relative)} is shorter than {size} bytes (changed while read?)")
            buffer[offset:offset + len(data)] = data

        try:
            with self.fs.open_input_file(self.path(relative)) as source:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(read_part, range(0, size, part_bytes)))
        except FileNotFoundError as exc:
            raise StorageError(f"no such file: {self.uri(relative)}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(relative)}: {exc}") from exc
        return bytes(buffer)

    def open_input(self, relative: str):
        """A file opened for random access (an object store answers each read with a range request)."""
        try:
            return self.fs.open_input_file(self.path(relative))
        except FileNotFoundError as exc:
            raise StorageError(f"no such file: {self.uri(relative)}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(relative)}: {exc}") from exc

    def size(self, relative: str) -> int | None:
        """A file's size in bytes; None if there is no such file."""
        try:
            info = self.fs.get_file_info(self.path(relative))
        except OSError as exc:
            raise StorageError(f"cannot look up {self.uri(relative)}: {exc}") from exc
        return info.size if info.type == pafs.FileType.File else None

    def write_bytes(self, relative: str, data: bytes) -> None:
        write_bytes(self.fs, self.path(relative), data, self.uri(relative))

    def delete(self, relative: str) -> None:
        self._delete(self.fs.delete_file, relative)

    def delete_dir(self, relative_dir: str) -> None:
        """Delete a directory and everything under it (nothing if it is not there)."""
        self._delete(self.fs.delete_dir, relative_dir)

    def _delete(self, remove, relative: str) -> None:
        try:
            remove(self.path(relative))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri(relative)}: {exc}") from exc

    def list(self, relative_dir: str) -> list[str]:
        """Names of the files directly in a directory (none if it does not exist)."""
        return self._names(relative_dir, pafs.FileType.File)

    def list_dirs(self, relative_dir: str = "") -> list[str]:
        """Names of the directories directly in a directory (on object stores: the key prefixes)."""
        return self._names(relative_dir, pafs.FileType.Directory)

    def _names(self, relative_dir: str, kind: pafs.FileType) -> list[str]:
        selector = pafs.FileSelector(self.path(relative_dir), allow_not_found=True, recursive=False)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise StorageError(f"cannot list {self.uri(relative_dir)}: {exc}") from exc
        return sorted(i.base_name for i in infos if i.type == kind)

    def download(self, local_dir: str | Path) -> None:
        """Copy every file under the base into a local directory."""
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        try:
            pafs.copy_files(self.base, str(local_dir), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
        except OSError as exc:
            raise StorageError(f"cannot download {self.uri()}: {exc}") from exc

    def upload(self, local_dir: str | Path) -> None:
        """Copy every file under a local directory to the base (replacing files of the same names)."""
        try:
            # one thread: pyarrow's threaded uploads to S3 are not safe (apache/arrow#32372, as Ray notes)
            pafs.copy_files(str(local_dir), self.base, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs, use_threads=False)
        except OSError as exc:
            raise StorageError(f"cannot upload {local_dir} to {self.uri()}: {exc}") from exc

    def copy_to(self, target: Storage) -> None:
        """Copy every file under the base to another Storage's base (either may be local or an object store),
        streamed, in no particular order."""
        try:
            pafs.copy_files(self.base, target.base, source_filesystem=self.fs, destination_filesystem=target.fs,
                            use_threads=False)  # as upload: threaded copies to S3 are not safe
        except OSError as exc:
            raise StorageError(f"cannot copy {self.uri()} to {target.uri()}: {exc}") from exc

    def make_dirs(self, relative_dir: str) -> None:
        if isinstance(self.fs, pafs.LocalFileSystem):
            self.fs.create_dir(self.path(relative_dir), recursive=True)
        # object stores have no directories: a key's prefix exists once a key under it does


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow FileSystem of a local path or URI, and the path inside it."""
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(location))
    try:
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as arrow_error:
        # Schemes pyarrow has no native filesystem for (hf://, az://, …) go through fsspec.
        try:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            fs, path = fsspec.core.url_to_fs(location)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"no filesystem for {location!r}: {arrow_error}; fsspec: {exc}") from exc
        return PyFileSystem(FSSpecHandler(fs)), path
    except OSError as exc:
        raise StorageError(f"cannot open {location!r}: {exc}") from exc


def join(base: str, relative: str) -> str:
    return f"{base.rstrip('/')}/{relative.lstrip('/')}" if base else relative


def read_bytes(fs: pafs.FileSystem, path: str, name: str | None = None) -> bytes:
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as exc:
        raise StorageError(f"no such file: {name or path}") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {name or path}: {exc}") from exc


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes, name: str | None = None) -> None:
    """Write a whole file so that readers see either the old or the new content, never a part.

    Object-store uploads are atomic by themselves; on a local or shared filesystem the bytes go
    to a temporary file beside the target first and are renamed over it.
    """
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(path) as stream:
                stream.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {name or path}: {exc}") from exc


def file_entry(fs: pafs.FileSystem, path: str) -> FileEntry | None:
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return FileEntry(path, info.size or 0, _mtime_ns(info))


def list_tree(fs: pafs.FileSystem, directory: str) -> list[FileEntry]:
    """Every file under a directory (recursively), hidden files left out, in sorted path order."""
    infos = fs.get_file_info(pafs.FileSelector(directory, recursive=True))
    prefix = directory.rstrip("/") + "/"
    entries = [
        FileEntry(i.path, i.size or 0, _mtime_ns(i)) for i in infos
        if i.type == pafs.FileType.File and not _hidden(i.path[len(prefix):])
    ]
    return sorted(entries, key=lambda e: e.path)


def glob_files(fs: pafs.FileSystem, pattern: str) -> list[FileEntry]:
    """Files matching a glob (`*` and `?` within a name, `[…]` classes, `**` across directories)."""
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in GLOB_CHARS))
    base = "/".join(parts[:fixed]) or "/"
    recursive = len(parts) - fixed > 1 or "**" in pattern
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"cannot list {base}: {exc}") from exc
    matcher = glob_regex(pattern)
    prefix = base.rstrip("/") + "/"
    entries = [
        FileEntry(i.path, i.size or 0, _mtime_ns(i)) for i in infos
        if i.type == pafs.FileType.File and matcher.fullmatch(i.path) and not _hidden(i.path[len(prefix):])
    ]
    return sorted(entries, key=lambda e: e.path)


def glob_regex(pattern: str) -> re.Pattern:
    """The regular expression of a path glob, with shell semantics: wildcards never match '/' except `**`."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def compression_of(path: str) -> str | None:
    """The codec a file's suffix implies (`.gz` → gzip, `.zst` → zstd, …), else None."""
    for suffix, codec in COMPRESSION_SUFFIXES.items():
        if path.lower().endswith(suffix):
            return codec
    return None


def strip_compression(path: str) -> str:
    codec_suffix = next((s for s in COMPRESSION_SUFFIXES if path.lower().endswith(s)), "")
    return path[: len(path) - len(codec_suffix)] if codec_suffix else path


def open_stream(fs: pafs.FileSystem, path: str):
    """A sequential reader of a file's content, decompressed by suffix."""
    return fs.open_input_stream(path, compression=compression_of(path), buffer_size=1 << 20)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _mtime_ns(info: pafs.FileInfo) -> int:
    return int(info.mtime_ns or 0) if info.mtime is not None else 0


# Where a file or directory is, as callers hold it: a local path (str or Path), an object-store URI, or a
# Storage already resolved. Library functions take any of them and resolve it once, with Storage.of.
Location = str | Path | Storage
