"""A dataset directory and a node's cache are read, never trusted: a manifest whose fingerprint is not
its content's digest or whose shard paths leave the dataset is refused, and a cached decoded file that
is not what its decoder sealed is decoded again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_node_cache import SHARD_TOKENS, cache, write_shards

from gptray.core.errors import DataError
from gptray.data.cache_seal import seal_path
from gptray.data.global_order import open_split_tokens
from gptray.data.manifest import Manifest, SplitInfo


def dataset(root: Path, shards: int = 2) -> tuple[Path, list[np.ndarray]]:
    """A token dataset of `shards` real Parquet shards and its manifest, as tokenize writes it."""
    infos, streams = write_shards(root / "data", shards)
    manifest = Manifest(tokenizer={"name": "gpt2", "dtype": "uint16", "vocab_size": 50257}, split={}, sources=[],
                        splits={"train": SplitInfo(shards, SHARD_TOKENS * shards, infos)},
                        documents=shards, tokens=SHARD_TOKENS * shards)
    manifest.fingerprint = manifest.compute_fingerprint()
    manifest.save(root / "data")
    return root / "data", streams


def edit_manifest(directory: Path, change) -> None:
    data = json.loads((directory / "manifest.json").read_text())
    change(data)
    (directory / "manifest.json").write_text(json.dumps(data))


def test_a_fingerprint_that_is_not_the_content_digest_is_refused(tmp_path):
    directory, _ = dataset(tmp_path)
    assert Manifest.load(directory).fingerprint == Manifest.load(directory).compute_fingerprint()
    for planted in (str(tmp_path / "elsewhere"), "../../home", "0" * 64):
        edit_manifest(directory, lambda m, planted=planted: m.update(fingerprint=planted))
        with pytest.raises(DataError, match="is not the digest of its tokenizer and shard checksums"):
            Manifest.load(directory)


@pytest.mark.parametrize("path", ["../../outside.parquet", "/etc/passwd", "train/../../x.parquet",
                                  "s3://bucket/x.parquet", "", "train\\..\\x.parquet"])
def test_a_shard_path_leaving_the_dataset_is_refused(tmp_path, path):
    """The fingerprint covers shard checksums, not paths: the path check is what stops these."""
    directory, _ = dataset(tmp_path)
    edit_manifest(directory, lambda m: m["splits"]["train"]["shards"][0].update(path=path))
    with pytest.raises(DataError, match="leaves the dataset directory"):
        Manifest.load(directory)


def test_a_manifest_as_tokenize_writes_it_loads(tmp_path):
    directory, _ = dataset(tmp_path)
    written = json.loads((directory / "manifest.json").read_text())
    loaded = Manifest.load(directory)
    assert [s.path for s in loaded.splits["train"].shards] == [s["path"] for s in written["splits"]["train"]["shards"]]
    assert loaded.fingerprint == written["fingerprint"]


def test_a_corrupted_or_planted_split_cache_is_decoded_again(tmp_path):
    directory, streams = dataset(tmp_path)
    manifest = Manifest.load(directory)
    expected = np.concatenate(streams)
    cache_dir = tmp_path / "cache"
    assert np.array_equal(open_split_tokens(str(directory), manifest, "train", str(cache_dir)), expected)
    cached = cache_dir / manifest.fingerprint / "train.bin"
    assert seal_path(cached).is_file()
    # another job poisons the cache: same size, other tokens
    cached.write_bytes(np.full(len(expected), 7, dtype=np.uint16).tobytes())
    assert np.array_equal(open_split_tokens(str(directory), manifest, "train", str(cache_dir)), expected)
    # a file planted without a seal, at the right size
    cached.unlink()
    seal_path(cached).unlink()
    cached.write_bytes(np.full(len(expected), 9, dtype=np.uint16).tobytes())
    assert np.array_equal(open_split_tokens(str(directory), manifest, "train", str(cache_dir)), expected)


def test_a_corrupted_shard_in_the_node_cache_is_decoded_again(tmp_path):
    infos, streams = write_shards(tmp_path / "data", 2)
    first = cache(tmp_path, infos, 10_000)
    tokens, _ = first.arrays(1, set())
    assert np.array_equal(tokens, streams[1])
    first.close()
    decoded = tmp_path / "cache" / "000001.tokens"
    decoded.write_bytes(np.zeros(SHARD_TOKENS, dtype=np.uint16).tobytes())  # same size, poisoned
    second = cache(tmp_path, infos, 10_000)
    tokens, _ = second.arrays(1, set())
    assert np.array_equal(tokens, streams[1])
    second.close()
    seal_path(decoded).unlink()  # a file nobody sealed is never used either
    decoded.write_bytes(np.zeros(SHARD_TOKENS, dtype=np.uint16).tobytes())
    third = cache(tmp_path, infos, 10_000)
    assert np.array_equal(third.arrays(1, set())[0], streams[1])
    third.close()


def test_a_task_records_shard_outside_the_dataset_or_of_another_size_is_not_intact(tmp_path):
    """A rerun of tokenize keeps a read task whose record's shards are intact; the record is read from the dataset
    directory, so its paths are data too: one that leaves the dataset is never read, even with the right bytes."""
    import dataclasses
    import hashlib

    from gptray.data.shards import shard_is_intact

    directory, _ = dataset(tmp_path)
    shard = Manifest.load(directory).splits["train"].shards[0]
    assert shard_is_intact(directory, shard)
    outside = tmp_path / "outside.parquet"
    outside.write_bytes((directory / shard.path).read_bytes())  # the same bytes, the same sha256
    assert hashlib.sha256(outside.read_bytes()).hexdigest() == shard.sha256
    assert not shard_is_intact(directory, dataclasses.replace(shard, path="../outside.parquet"))
    assert not shard_is_intact(directory, dataclasses.replace(shard, path=str(outside)))
    assert not shard_is_intact(directory, dataclasses.replace(shard, bytes=shard.bytes + 1))  # never read
