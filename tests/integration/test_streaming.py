"""Training under the block order on local Ray: a dataset 10× the node cache trains to the end within the
limit (watched while it trains), one worker sees the same batches as two, and a killed worker's run
recovers to the uninterrupted run's losses exactly."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_distributed import close, train_workers

from gptray.checkpoint.files import read_state
from gptray.data.manifest import Manifest
from gptray.data.node_cache import ShardCache
from gptray.data.tokenize_job import tokenize_corpus
from gptray.data.train_windows import decoded_bytes
from gptray.train.pretrain import pretrain
from helpers import PretrainInThread, make_config, metric_history, small_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def many_shards(ray_session, tmp_path_factory):
    """tinyshakespeare in ~6,000-token shards: ~50 train shards."""
    root = tmp_path_factory.mktemp("many-shards")
    return tokenize_corpus(make_config(root, "data.shard_tokens=6000"))


def block_config(root: Path, dataset, cache_dir: Path, *overrides: str):
    limit = decoded_bytes(Manifest.load(dataset.dataset_dir)) // 10
    return small_run_config(root, dataset, "data.shuffle=block", "data.shuffle_block_shards=1",
                            f"data.cache_limit={limit}", f"data.cache_dir={cache_dir}", "train.max_steps=24",
                            *overrides)


@pytest.fixture(scope="module")
def block_run(many_shards, tmp_path_factory):
    """Two workers on a node whose cache holds a tenth of the train split, its size sampled all along."""
    root = tmp_path_factory.mktemp("block-run")
    config = block_config(root, many_shards, root / "cache", "name=block")
    manifest = Manifest.load(many_shards.dataset_dir)
    watcher = ShardCache(None, manifest.split_info("train").shards, root / "cache" / manifest.fingerprint /
                         "train-shards", config.data.cache_limit_bytes(), np.uint16, False)
    sizes, done = [], threading.Event()

    def watch():
        while not done.is_set():
            sizes.append(watcher.used_bytes())
            time.sleep(0.005)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        result = pretrain(config, sample=False)
    finally:
        done.set()
        thread.join()
    return config, result, sizes


def test_a_dataset_ten_times_the_cache_trains_to_the_end_within_the_limit(block_run, many_shards):
    config, result, sizes = block_run
    assert result.final_step == 24
    limit = config.data.cache_limit_bytes()
    assert decoded_bytes(Manifest.load(many_shards.dataset_dir)) >= 10 * limit
    assert len(sizes) > 100 and 0 < max(sizes) <= limit
    assert read_state(result.checkpoint).data_order == {"shuffle": "block", "block_shards": 1, "global_batch": 8}
    losses = metric_history(result, "train/loss")
    assert losses[24] < losses[1] - 0.5
    # the next blocks are decoded before they are needed: over the run, under 5% of step time waits for data
    # (one step of a busy 2-core host can wait longer: the run's mean is what the issue asks of it)
    waits = metric_history(result, "train/data_wait_fraction")
    assert np.mean(list(waits.values())) < 0.05, waits


def test_one_worker_sees_the_same_block_ordered_batches_as_two(block_run, many_shards, tmp_path):
    _, reference, _ = block_run
    config = block_config(tmp_path, many_shards, tmp_path / "cache", "name=one", "ray.num_workers=1",
                          "train.max_steps=12")
    result = pretrain(config, sample=False)
    ours, theirs = metric_history(result, "train/loss"), metric_history(reference, "train/loss")
    assert ours[1] == pytest.approx(theirs[1], abs=1e-6)
    close(ours, theirs, range(1, 13), tolerance=2e-3)
    close(metric_history(result, "val/loss"), metric_history(reference, "val/loss"), [12], tolerance=2e-3)


def test_a_killed_worker_recovers_to_the_uninterrupted_block_ordered_losses(block_run, many_shards, tmp_path):
    _, reference, _ = block_run
    config = block_config(tmp_path, many_shards, tmp_path / "cache", "name=killed", "ray.max_failures=2")
    run = PretrainInThread(config, sample=False)
    run.wait_for_checkpoint(12)
    victims = train_workers()
    assert len(victims) == 2
    os.kill(victims[-1], signal.SIGKILL)  # its pins on the cache go with it: the flocks are the kernel's
    result = run.join(timeout=400)
    ours, theirs = metric_history(result, "train/loss"), metric_history(reference, "train/loss")
    assert [ours[s] for s in range(13, 25)] == [theirs[s] for s in range(13, 25)]
    assert result.metrics["train_loss"] == reference.metrics["train_loss"]
    assert set(train_workers()).isdisjoint(victims)  # the killed worker is gone for good
