"""The node-local token cache: decoded once from the shards, equal to them, and corruption is refused."""

from __future__ import annotations

import numpy as np
import pytest

from gptray.core.errors import DataError
from gptray.data.global_order import open_split_tokens
from gptray.data.manifest import Manifest
from gptray.data.shards import read_shard, shard_tokens


def test_token_cache_equals_the_shards_and_rejects_corruption(shakespeare_dataset, tmp_path):
    manifest = shakespeare_dataset.manifest
    dataset_dir = shakespeare_dataset.dataset_dir
    tokens = open_split_tokens(dataset_dir, manifest, "train", str(tmp_path / "cache"))
    shards = manifest.split_info("train").shards
    expected = np.concatenate([shard_tokens(read_shard(dataset_dir, s)) for s in shards])
    assert np.array_equal(tokens, expected)
    # a second open reuses the cache file
    again = open_split_tokens(dataset_dir, manifest, "train", str(tmp_path / "cache"))
    assert again.filename == tokens.filename

    # a shard changed after tokenizing fails its checksum when the cache is built
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    shard = copy / shards[0].path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum"):
        open_split_tokens(str(copy), Manifest.load(copy), "train", str(tmp_path / "cache2"))
