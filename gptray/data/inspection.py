"""Looking into a token dataset: document-length histograms, decoded samples, and the trainer's first batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from gptray.config import ExperimentConfig
from gptray.core.errors import DataError
from gptray.core.storage import Storage
from gptray.data.manifest import SPLITS, Manifest
from gptray.data.shards import read_shard
from gptray.data.tokenizer_loading import dataset_tokenizer
from gptray.data.train_windows import DataOrder, open_train_windows


@dataclass
class LengthHistogram:
    """Documents per power-of-two bin of length in tokens (<|endoftext|> included)."""

    edges: list[int]  # bin i holds lengths in [edges[i], edges[i+1])
    counts: list[int]
    documents: int
    shards_read: int
    shards_total: int
    min: int = 0
    median: float = 0.0
    mean: float = 0.0
    max: int = 0


def length_histogram(dataset_dir: str, manifest: Manifest, max_shards: int = 8) -> LengthHistogram:
    """Histogram of document lengths over the first `max_shards` shards of each split (checksums verified)."""
    store = Storage(dataset_dir)
    lengths, read, total = [], 0, 0
    for split in SPLITS:
        shards = manifest.split_info(split).shards
        total += len(shards)
        for shard in shards[:max_shards]:
            table = read_shard(store, shard)
            lengths.append(pc.list_value_length(table.column("tokens")).to_numpy())
            read += 1
    values = np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int64)
    if not len(values):
        return LengthHistogram([], [], 0, read, total)
    top = int(np.ceil(np.log2(max(int(values.max()), 1) + 1)))
    edges = [0] + [2**i for i in range(top + 1)]
    counts, _ = np.histogram(values, bins=edges)
    return LengthHistogram(edges, counts.tolist(), len(values), read, total, int(values.min()),
                           float(np.median(values)), float(values.mean()), int(values.max()))


@dataclass
class Sample:
    split: str
    doc: int  # global document id
    tokens: int
    text: str


def sample_documents(dataset_dir: str, manifest: Manifest, count: int = 3) -> list[Sample]:
    """`count` documents spread over the first shard of each split, decoded."""
    store = Storage(dataset_dir)
    tokenizer = dataset_tokenizer(store, manifest)
    samples = []
    for split in SPLITS:
        shards = manifest.split_info(split).shards
        if not shards or count <= 0:
            continue
        table = read_shard(store, shards[0])
        for row in np.unique(np.linspace(0, table.num_rows - 1, num=min(count, table.num_rows)).astype(int)):
            tokens = table.column("tokens")[int(row)].values.to_numpy()
            samples.append(Sample(split, int(table.column("doc")[int(row)].as_py()), len(tokens),
                                  tokenizer.decode(tokens)))
    return samples


@dataclass
class PreviewRow:
    step: int
    rank: int
    micro_batch: int
    row: int
    start: int  # token offset of the window: in the train split (global order), in its shard (block order)
    inputs: np.ndarray  # (seq_len,) the model's input ids
    text: str  # the inputs decoded
    shard: str | None = None  # the shard it is in (block order)


def preview_batches(config: ExperimentConfig, steps: int = 1, world_size: int | None = None,
                    ranks: list[int] | None = None) -> list[PreviewRow]:
    """The first `steps` optimizer steps' micro-batches, exactly as the trainer reads them: the run's
    order (data.shuffle, resolved as the driver does), its rank_micro_batches and gather calls, on the
    node-local cache."""
    train = config.train
    world_size = world_size or config.ray.max_workers
    if world_size > train.batch_size:
        raise DataError(f"train.batch_size {train.batch_size} cannot be shared by world size {world_size}: "
                        "every rank needs at least one window a step")
    manifest = Manifest.load(config.data.dataset_dir)
    windows = open_train_windows(config, Storage(config.data.dataset_dir), manifest,
                                 DataOrder.for_run(config, manifest))
    shards = manifest.split_info("train").shards
    tokenizer = dataset_tokenizer(Storage(config.data.dataset_dir), manifest)
    rows = []
    try:
        for step in range(steps):
            windows.begin_step(step)
            for rank in ranks if ranks is not None else range(world_size):
                for i, batch in enumerate(windows.rank_micro_batches(step, rank, world_size, train.micro_batch_size)):
                    x, _ = windows.gather(batch)
                    for j, (shard, start) in enumerate(windows.locations(batch)):
                        rows.append(PreviewRow(step, rank, i, j, start, x[j], tokenizer.decode(x[j]),
                                               shards[shard].path if shard is not None else None))
    finally:
        windows.close()
    return rows
