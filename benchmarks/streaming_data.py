"""Streaming training data: time to first step against dataset size, data wait with and without prefetch,
and how evenly a mixture is spread over global batches, global order vs block order.

    python benchmarks/streaming_data.py [--shard-tokens N] [--sizes 4,40,400] [--rounds 3] [--steps N] [--smoke]

1. Time to first step. Datasets of 1×, 10× and 100× a base size are made of copies of one Parquet shard
   of `--shard-tokens` Zipf-distributed token ids (its copies count as distinct shards, as the trainer
   sees them). For each size and order, in one plain process with a cold node cache, what a rank does
   before its first optimizer step: open the training windows and read step 0's (CPU seconds, prefetch
   off: immune to other load on the host), then the same in wall seconds with prefetch on, building
   the engine (nano) and running step 0. The global order decodes every shard first; the block order
   (blocks of data.shuffle_block_shards) only the shards step 0 reads. Median and range over `--rounds`.
2. Data wait. `--steps` steps of the nano engine under the block order, blocks of one small shard, a
   batch that crosses into a new block every 12.5 steps, with data.prefetch on and off:
   train/data_wait_fraction as the training loop computes it (seconds getting windows / step seconds).
3. Mixture spread. For a three-source mixture (70/25/5% of the windows), the share of each source in
   each of 2,000 global batches of 64 and 512 sequences under each order: mean, standard deviation and
   range, against its share of the dataset.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from gptray.config import load_config  # noqa: E402
from gptray.core.storage import Storage  # noqa: E402
from gptray.data.block_order import BlockOrder  # noqa: E402
from gptray.data.global_order import WindowSampler  # noqa: E402
from gptray.data.manifest import Manifest, ShardInfo, SplitInfo  # noqa: E402
from gptray.data.shards import TokenShardWriter  # noqa: E402

SEQ = 64


def base_shard(root: Path, tokens: int) -> ShardInfo:
    """One shard of `tokens` tokens in documents of ~500 tokens (Zipf ids: compresses about as text tokens do)."""
    import pyarrow as pa

    rng = np.random.default_rng(0)
    stream = (rng.zipf(1.3, tokens) % 50257).astype(np.uint16)
    cuts = np.arange(0, tokens, 500)
    docs = pa.array([stream[a:a + 500].tolist() for a in cuts], type=pa.list_(pa.uint16()))
    writer = TokenShardWriter(root, "train", np.dtype(np.uint16), tokens, task=0)
    writer.add(np.arange(len(cuts)), docs)
    return writer.close()[0]


def dataset_of(root: Path, shard: ShardInfo, copies: int) -> Path:
    """A dataset of `copies` copies of the base shard (and a small val split: the base shard again)."""
    out = root / f"x{copies}"
    (out / "train").mkdir(parents=True, exist_ok=True)
    source = root / "base" / shard.path
    shards = []
    for i in range(copies):
        name = f"train/shard-{i:05d}-000.parquet"
        if not (out / name).exists():
            shutil.copyfile(source, out / name)
        shards.append(ShardInfo(name, shard.documents, shard.tokens, i * 10**9, shard.sha256, shard.bytes,
                                source=0))
    manifest = Manifest(tokenizer={"name": "gpt2", "dtype": "uint16", "vocab_size": 50257, "eot": 50256},
                        split={}, sources=[], splits={"train": SplitInfo(copies, copies * shard.tokens, shards),
                                                      "val": SplitInfo(1, shard.tokens, shards[:1])})
    manifest.fingerprint = manifest.compute_fingerprint()
    manifest.save(out)
    return out


SMOKE_MODEL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32"]  # --smoke: steps cost next to nothing


def config_for(dataset: Path, cache: Path, shuffle: str, *extra: str):
    return load_config(None, ["model.preset=nano", f"model.block_size={SEQ}", f"data.dataset_dir={dataset}",
                              f"data.cache_dir={cache}", f"data.shuffle={shuffle}", "data.cache_limit=1TB",
                              "train.batch_size=8", "train.micro_batch_size=8", "train.eval_windows=0",
                              "ray.num_workers=1", *extra])


def time_to_first_step(dataset: Path, cache: Path, shuffle: str, *extra: str) -> tuple[float, float, float, int]:
    """(CPU seconds this process spent until step 0's windows were in memory, with prefetch off so that
    nothing else is counted; wall seconds until step 0 was done, prefetch on; the same until its windows
    were in memory; shards decoded by then)."""
    import torch

    from gptray.data.train_windows import DataOrder, open_train_windows
    from gptray.train.engine import TrainingEngine

    manifest = Manifest.load(dataset)
    shutil.rmtree(cache, ignore_errors=True)
    config = config_for(dataset, cache, shuffle, *extra, "data.prefetch=false")
    cpu = time.process_time()
    windows = open_train_windows(config, Storage(str(dataset)), manifest, DataOrder.of(shuffle, config))
    windows.begin_step(0)
    for batch in windows.rank_micro_batches(0, 0, 1, config.train.micro_batch_size):
        windows.gather(batch)
    cpu = time.process_time() - cpu
    windows.close()

    shutil.rmtree(cache, ignore_errors=True)
    config = config_for(dataset, cache, shuffle, *extra)
    start = time.perf_counter()
    windows = open_train_windows(config, Storage(str(dataset)), manifest, DataOrder.of(shuffle, config))
    opened = time.perf_counter() - start
    engine = TrainingEngine(config, torch.device("cpu"), 0, 1, windows, np.zeros(0, np.uint16))
    data_seconds = engine.train_step(0).data_seconds
    seconds = time.perf_counter() - start
    windows.close()
    decoded = len(list(cache.glob(f"{manifest.fingerprint}/train-shards/*.tokens"))) if shuffle == "block" \
        else len(manifest.split_info("train").shards)
    return cpu, opened + data_seconds, seconds, decoded


def data_wait(dataset: Path, cache: Path, prefetch: bool, steps: int, *extra: str) -> tuple[float, float]:
    """(data wait fraction, seconds per step) of `steps` steps under the block order with blocks of one shard."""
    import torch

    from gptray.data.train_windows import DataOrder, open_train_windows
    from gptray.train.engine import TrainingEngine

    shutil.rmtree(cache, ignore_errors=True)
    config = config_for(dataset, cache, "block", "data.shuffle_block_shards=1", f"data.prefetch={prefetch}",
                        "train.batch_size=16", "train.micro_batch_size=16", *extra)
    windows = open_train_windows(config, Storage(str(dataset)), Manifest.load(dataset),
                                 DataOrder.of("block", config))
    engine = TrainingEngine(config, torch.device("cpu"), 0, 1, windows, np.zeros(0, np.uint16))
    engine.train_step(0)  # the first block is waited for either way
    waited, start = 0.0, time.perf_counter()
    for step in range(1, steps + 1):
        waited += engine.train_step(step).data_seconds
    elapsed = time.perf_counter() - start
    windows.close()
    return waited / elapsed, elapsed / steps


def mixture_spread(global_batch: int, batches: int = 2000) -> list[tuple]:
    """Per source: (dataset share, block mean, block std, block min, block max, global mean, global std)."""
    shard_windows = [700] * 10 + [250] * 10 + [50] * 10  # 70%, 25%, 5% of the windows
    sources = [0] * 10 + [1] * 10 + [2] * 10
    tokens = [w * SEQ + 1 for w in shard_windows]
    block = BlockOrder(tokens, sources, SEQ, 0, 4, global_batch)
    source_of_shard = np.array(sources)
    # the global order over the same stream: window i of the concatenation belongs to its shard's source
    window_source = np.repeat(source_of_shard, shard_windows)
    sampler = WindowSampler(sum(tokens), SEQ, 0)
    rows = []
    block_counts, global_counts = np.zeros((batches, 3)), np.zeros((batches, 3))
    for b in range(batches):
        samples = np.arange(b * global_batch, (b + 1) * global_batch)
        block_counts[b] = np.bincount(source_of_shard[block.locate(samples)[0]], minlength=3)
        starts = sampler.starts(samples) // SEQ
        global_counts[b] = np.bincount(window_source[np.minimum(starts, len(window_source) - 1)], minlength=3)
    shares = np.bincount(window_source, minlength=3) / len(window_source)
    for s in range(3):
        bs, gs = block_counts[:, s] / global_batch, global_counts[:, s] / global_batch
        rows.append((s, shares[s], bs.mean(), bs.std(), bs.min(), bs.max(), gs.mean(), gs.std(), gs.min(), gs.max()))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-tokens", type=int, default=1_000_000)
    parser.add_argument("--sizes", default="4,40,400", help="shard copies of each dataset size (default 4,40,400)")
    parser.add_argument("--block-shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=36, help="steps of the data-wait runs (default 36)")
    parser.add_argument("--smoke", action="store_true",
                        help="check that it runs: shards of 20,000 tokens, datasets of 1 and 2, one round, 2 steps "
                             "of a one-layer model, 100 batches")
    args = parser.parse_args(argv)
    batches, model = 2000, []  # global batches of the mixture spread; overrides of the nano model
    if args.smoke:
        args.shard_tokens, args.sizes, args.rounds, args.steps, batches = 20_000, "1,2", 1, 2, 100
        model = SMOKE_MODEL
    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    root = Path(tempfile.mkdtemp(prefix="gptray-streaming-"))
    try:
        shard = base_shard(root / "base", args.shard_tokens)
        print(f"base shard: {shard.tokens:,} tokens, {shard.bytes:,} bytes of Parquet, "
              f"{2 * shard.tokens:,} bytes decoded\n")
        time_to_first_step(dataset_of(root, shard, 1), root / "cache", "block")  # imports and first-use costs
        print("## time to first step, cold node cache (nano, batch 8 × 64): median [min–max] of CPU seconds until "
              "step 0's windows are in memory (prefetch off), wall seconds until then and until step 0 is done "
              "(prefetch on)")
        print("| dataset | shards | tokens | global: CPU s to data | global: wall s to data | global: wall s to "
              "step 0 | block: CPU s to data | block: wall s to data | block: wall s to step 0 | block: shards "
              "decoded by step 0 |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        first = int(args.sizes.split(",")[0])
        for copies in map(int, args.sizes.split(",")):
            dataset = dataset_of(root, shard, copies)
            cells, decoded = [], 0
            for shuffle in ("global", "block"):
                extra = [f"data.shuffle_block_shards={args.block_shards}", *model]
                runs = [time_to_first_step(dataset, root / "cache", shuffle, *extra) for _ in range(args.rounds)]
                for column in (0, 1, 2):
                    values = [run[column] for run in runs]
                    cells.append(f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]")
                decoded = runs[0][3]
            print(f"| {copies // first}× | {copies} | {copies * shard.tokens:,} | {' | '.join(cells)} | {decoded} |",
                  flush=True)
        small = base_shard(root / "small" / "base", 12_800)
        dataset = dataset_of(root / "small", small, 20)
        print(f"\n## data wait, block order, blocks of one shard of {small.tokens:,} tokens, batch 16 × {SEQ} "
              f"(a new block every {small.tokens // SEQ / 16:.1f} steps), {args.steps} steps after the first")
        print("| prefetch | data wait fraction | s/step |")
        print("|---|---|---|")
        for prefetch in (True, False):
            results = [data_wait(dataset, root / "cache", prefetch, args.steps, *model) for _ in range(args.rounds)]
            fractions = [f for f, _ in results]
            print(f"| {'on' if prefetch else 'off'} | {statistics.median(fractions):.3f} "
                  f"[{min(fractions):.3f}–{max(fractions):.3f}] | {statistics.median([s for _, s in results]):.3f} |",
                  flush=True)
        for global_batch in (64, 512):
            print(f"\n## mixture share per global batch of {global_batch} ({batches:,} batches)")
            print("| source | dataset share | block: mean ± std [min–max] | global: mean ± std [min–max] |")
            print("|---|---|---|---|")
            for s, share, bm, bsd, bmin, bmax, gm, gsd, gmin, gmax in mixture_spread(global_batch, batches):
                print(f"| {s} | {share:.4f} | {bm:.4f} ± {bsd:.4f} [{bmin:.4f}–{bmax:.4f}] | "
                      f"{gm:.4f} ± {gsd:.4f} [{gmin:.4f}–{gmax:.4f}] |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
