"""A node's cache of decoded train shards: bounded in bytes, shared by the node's ranks, never evicting a shard in use.

Under the block order (block_order.py) each rank needs the shards of the block in use and, ahead
of time, of the next one. The ranks of a node are separate processes sharing one directory,
<cache_dir>/<fingerprint>/train-shards/:

  NNNNNN.tokens   a shard's decoded token stream (NNNNNN.mask beside it for prompt-masked data);
                  complete once renamed into place and sealed, the mask first
  NNNNNN.tokens.seal  its size and digest, written by the process that decoded it (cache_seal.py);
                  checked before a process maps the file, which is decoded again if they disagree
  NNNNNN.P.tmp    a shard being decoded by process P: created at its full size, so the space it
                  will take counts from the moment it is reserved
  NNNNNN.pin      every process using the shard holds a shared flock on it; evicting the shard
                  takes the exclusive lock without waiting, so a shard in use is never evicted
  NNNNNN.build    held by the one process decoding the shard: the others wait for it, or (when
                  prefetching) turn to another shard. A .tmp file whose build lock nobody holds was
                  left by a process that died (a killed worker) and is deleted
  space.lock      held while the space in use is counted, freed and reserved, and while a decoded
                  shard is renamed into place (a directory listed mid-rename can show a file twice or
                  not at all)

The bytes counted are the sizes of the .tokens, .mask and .tmp files, which never exceed the
limit: space is reserved before a shard is decoded, by evicting shards that no process has
pinned and that the caller does not protect (the blocks in use and the next), or else waited for.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptray.core.errors import DataError
from gptray.core.storage import Storage
from gptray.data.cache_seal import Digest, is_intact, seal_path, sealed_size, write_seal
from gptray.data.manifest import ShardInfo
from gptray.data.shards import read_shard, shard_loss_mask, shard_tokens

log = logging.getLogger(__name__)

SPACE_WAIT_SECONDS = 600.0  # a rank waits this long for other ranks to release space before giving up
_POLL_SECONDS = 0.02


@dataclass
class _Open:
    tokens: np.ndarray
    mask: np.ndarray | None
    pin: int  # file descriptor holding the shared lock


class ShardCache:
    """Decoded shards of one split on this node, within `limit` bytes (see the module docstring)."""

    def __init__(self, dataset: Storage, shards: list[ShardInfo], directory: Path, limit: int, dtype: np.dtype,
                 with_mask: bool):
        self.dataset = dataset
        self.shards = shards
        self.directory = Path(directory)
        self.limit = limit
        self.dtype = np.dtype(dtype)
        self.with_mask = with_mask
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open: dict[int, _Open] = {}
        self.decode_seconds = 0.0  # spent decoding shards in this process (foreground and prefetch)

    # -- sizes ----------------------------------------------------------------------------------------
    def shard_bytes(self, index: int) -> int:
        tokens = self.shards[index].tokens
        return tokens * self.dtype.itemsize + (tokens if self.with_mask else 0)

    def used_bytes(self) -> int:
        """Bytes of decoded and reserved shards in the cache now (every process's), counted under the
        space lock: a directory listed while a file is renamed can show it twice, or not at all."""
        with _flock(self.directory / "space.lock"):
            return self._count_bytes()

    def _count_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.directory):
            if entry.name.endswith((".tokens", ".mask", ".tmp")):
                try:
                    total += entry.stat().st_size
                except FileNotFoundError:
                    pass  # evicted or renamed while we looked
        return total

    # -- reading --------------------------------------------------------------------------------------
    def arrays(self, index: int, protected: set[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """A shard's tokens (and loss mask), pinned until released; decoded first if missing (waits)."""
        if index not in self._open:
            pin = self._pin(index)
            try:
                if not (self._complete(index) and self._intact(index)):
                    self._discard_unless_intact(index)
                    self._fetch(index, protected | {index}, wait=True)
                tokens = np.memmap(self._file(index, "tokens"), dtype=self.dtype, mode="r")
                mask = np.memmap(self._file(index, "mask"), dtype=np.uint8, mode="r") if self.with_mask else None
            except BaseException:
                os.close(pin)
                raise
            self._open[index] = _Open(tokens, mask, pin)
        entry = self._open[index]
        return entry.tokens, entry.mask

    def release_except(self, keep: set[int]) -> None:
        """Unpin the shards this process no longer reads (they may then be evicted)."""
        for index in [i for i in self._open if i not in keep]:
            entry = self._open.pop(index)
            del entry.tokens, entry.mask  # unmap before unlocking
            os.close(entry.pin)

    def prefetch(self, index: int, protected: set[int]) -> bool:
        """Decode a shard ahead of time if it is missing, no other process is decoding it, and it fits
        without evicting a protected or pinned shard; whether it is in the cache now."""
        if self._complete(index):
            return True
        return self._fetch(index, protected | {index}, wait=False)

    def close(self) -> None:
        self.release_except(set())

    # -- files ----------------------------------------------------------------------------------------
    def _file(self, index: int, kind: str) -> Path:
        return self.directory / f"{index:06d}.{kind}"

    def _complete(self, index: int) -> bool:
        """Its files and their seals are in place, at the sizes expected (cheap: no file is read)."""
        tokens = self.shards[index].tokens
        return sealed_size(self._file(index, "tokens"), tokens * self.dtype.itemsize) and (  # sealed last
            not self.with_mask or sealed_size(self._file(index, "mask"), tokens))

    def _intact(self, index: int) -> bool:
        """Its files hold what the process that decoded them sealed (reads them: once per process and shard)."""
        tokens = self.shards[index].tokens
        return is_intact(self._file(index, "tokens"), tokens * self.dtype.itemsize) and (
            not self.with_mask or is_intact(self._file(index, "mask"), tokens))

    def _discard_unless_intact(self, index: int) -> None:
        """Delete a shard's cached files unless they are intact (a decode in progress finishes first)."""
        with _flock(self._file(index, "build")):
            if self._complete(index) and self._intact(index):
                return
            with _flock(self.directory / "space.lock"):
                for kind in ("tokens", "mask"):
                    path = self._file(index, kind)
                    if path.is_file():
                        log.warning("%s does not match the seal its decoder wrote (cut short, corrupt or "
                                    "replaced): decoding shard %s again", path, self.shards[index].path)
                    path.unlink(missing_ok=True)
                    seal_path(path).unlink(missing_ok=True)

    def _pin(self, index: int) -> int:
        fd = os.open(self._file(index, "pin"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def _fetch(self, index: int, protected: set[int], wait: bool) -> bool:
        """Decode shard `index` into the cache (one process per node does it; the others wait or skip)."""
        with _flock(self._file(index, "build"), wait=wait) as held:
            if not held:
                return False  # another process is decoding it
            if self._complete(index):
                return True
            reserved = self._reserve(index, protected, wait)
            if reserved is None:
                return False
            self._decode(index, reserved)
            return True

    def _reserve(self, index: int, protected: set[int], wait: bool) -> dict[str, Path] | None:
        """Temporary files at their full size for the shard, once the space is free (None: not now)."""
        need = self.shard_bytes(index)
        if need > self.limit:
            raise DataError(f"shard {self.shards[index].path} decodes to {need:,} bytes, more than "
                            f"data.cache_limit ({self.limit:,} bytes)")
        deadline = time.monotonic() + SPACE_WAIT_SECONDS
        while True:
            with _flock(self.directory / "space.lock"):
                self._remove_orphans()
                used = self._count_bytes()
                if used + need > self.limit:
                    used -= self._evict(need - (self.limit - used), protected)
                if used + need <= self.limit:
                    return self._create_tmp(index)
            if not wait:
                return None
            if time.monotonic() > deadline:
                raise DataError(
                    f"the node cache {self.directory} stayed full for {SPACE_WAIT_SECONDS:.0f} s: shard "
                    f"{self.shards[index].path} needs {need:,} bytes, {used:,} of data.cache_limit {self.limit:,} "
                    "are held by shards in use. Raise data.cache_limit")
            time.sleep(_POLL_SECONDS)

    def _create_tmp(self, index: int) -> dict[str, Path]:
        tokens = self.shards[index].tokens
        sizes = {"tokens": tokens * self.dtype.itemsize, **({"mask": tokens} if self.with_mask else {})}
        files = {}
        for kind, size in sizes.items():
            path = self.directory / f"{index:06d}.{kind}.{os.getpid()}.tmp"
            with open(path, "wb") as f:
                f.truncate(size)  # counted at its full size at once
            files[kind] = path
        return files

    def _evict(self, wanted: int, protected: set[int]) -> int:
        """Delete unpinned, unprotected shards (lowest index first) until `wanted` bytes are free; bytes freed."""
        freed = 0
        for index in sorted(self._cached() - protected):
            if freed >= wanted:
                break
            with _flock(self._file(index, "pin"), wait=False) as held:
                if not held:
                    continue  # some process reads it
                for kind in ("tokens", "mask"):
                    path = self._file(index, kind)
                    seal_path(path).unlink(missing_ok=True)
                    if path.is_file():
                        freed += path.stat().st_size
                        path.unlink()
        return freed

    def _remove_orphans(self) -> None:
        """Delete the temporary files of decodes whose process died (a killed worker's): nobody holds
        their shard's build lock any more, so nobody will finish them, and they would count forever."""
        for name in os.listdir(self.directory):
            if not name.endswith(".tmp"):
                continue
            index = int(name.split(".")[0])
            with _flock(self._file(index, "build"), wait=False) as held:
                if held:  # else it is being decoded now (perhaps by this process)
                    (self.directory / name).unlink(missing_ok=True)

    def _cached(self) -> set[int]:
        # .mask too: a decode that failed between its two renames leaves a mask alone, which must not stay
        return {int(name.split(".")[0]) for name in os.listdir(self.directory) if name.endswith((".tokens", ".mask"))}

    def _decode(self, index: int, files: dict[str, Path]) -> None:
        start = time.perf_counter()
        try:
            table = read_shard(self.dataset, self.shards[index], verify=True)
            tokens = shard_tokens(table)
            if len(tokens) != self.shards[index].tokens:
                raise DataError(f"shard {self.shards[index].path} holds {len(tokens)} tokens, manifest says "
                                f"{self.shards[index].tokens}")
            arrays = {"tokens": tokens.astype(self.dtype, copy=False)}
            if self.with_mask:
                arrays["mask"] = shard_loss_mask(table)
            digests = {}
            for kind in ("mask", "tokens"):
                if kind in files:
                    data = arrays[kind].tobytes()
                    digests[kind] = Digest()
                    digests[kind].update(data)
                    with open(files[kind], "r+b") as f:
                        f.write(data)
            # renamed under the space lock, so that no count lists the directory mid-rename; tokens
            # sealed last: its seal means the shard is complete
            with _flock(self.directory / "space.lock"):
                for kind in ("mask", "tokens"):
                    if kind in files:
                        seal_path(self._file(index, kind)).unlink(missing_ok=True)
                        os.replace(files[kind], self._file(index, kind))
                        write_seal(self._file(index, kind), digests[kind])
        finally:
            for path in files.values():
                path.unlink(missing_ok=True)
        self.decode_seconds += time.perf_counter() - start


@contextlib.contextmanager
def _flock(path: Path, mode: int = fcntl.LOCK_EX, wait: bool = True):
    """Hold a flock on `path` (created if missing) for the block; yields whether it was taken (always, when
    waiting). Closing the file releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
