"""The data commands: `gptray data list | inspect | preview`."""

from __future__ import annotations

import argparse
import textwrap

from gptray.cli.common import EXIT_CODES_HELP, EXIT_OK, add_command, load_experiment
from gptray.core.errors import ConfigError
from gptray.core.tables import text_table

BAR_WIDTH = 40


def register(commands) -> None:
    data = commands.add_parser(
        "data", help="list corpora, inspect token datasets, preview training batches",
        description="Corpora and token datasets: `gptray data list`, `gptray data inspect DIR`, "
                    "`gptray data preview`.",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    parser = add_command(sub, "list", "list the named corpora (size, source, whether a local copy exists)", """\
        The corpora `data.sources: [{corpus: NAME}]` accepts, with their size and where they come from,
        and the other kinds of source (local files, object stores, Hugging Face datasets).""", config=False)
    parser.set_defaults(handler=cmd_list)

    parser = add_command(sub, "inspect", "summarize a token dataset: manifest, length histogram, samples", """\
        Print a token dataset's manifest summary (tokenizer, documents and tokens per split and source,
        mixture shares, skipped or repaired input with its first locations), a histogram of document
        lengths in tokens, and a few decoded documents. DIR is a local directory or an s3:// / gs:// URI;
        shards read are verified against their checksums.""", config=False)
    parser.add_argument("dataset_dir", metavar="DIR", help="token dataset directory or URI (holds manifest.json)")
    parser.add_argument("--samples", type=int, default=3, metavar="N", help="decoded documents per split (default 3)")
    parser.add_argument("--max-chars", type=int, default=300, metavar="N",
                        help="characters of each sample shown (default 300)")
    parser.add_argument("--histogram-shards", type=int, default=8, metavar="N",
                        help="shards per split read for the length histogram (default 8)")
    parser.set_defaults(handler=cmd_inspect)

    parser = add_command(sub, "preview", "show the first training batches exactly as the trainer reads them", """\
        Decode the windows the trainer reads at its first optimizer steps, from data.dataset_dir with
        the run config's order (data.shuffle: global or block, auto resolved as training does),
        train.seed, train.batch_size, train.micro_batch_size, sequence length and ray.num_workers ranks:
        the same calls as the training loop, on the same node-local cache. Under the block order each
        window is shown with the shard it comes from.""")
    parser.add_argument("--steps", type=int, default=1, metavar="N", help="optimizer steps to show (default 1)")
    parser.add_argument("--rank", type=int, action="append", metavar="R",
                        help="show only this rank (repeatable; default: every rank)")
    parser.add_argument("--world-size", type=int, metavar="W",
                        help="ranks (default ray.num_workers; an elastic run's maximum)")
    parser.add_argument("--max-chars", type=int, default=200, metavar="N",
                        help="characters of each window shown (default 200; 0 shows all)")
    parser.add_argument("--tokens", action="store_true", help="print the token ids too")
    parser.set_defaults(handler=cmd_preview)


def cmd_list(args) -> int:
    from gptray.data.corpora import CORPORA_PATH_ENV, REGISTRY, local_copy

    rows = []
    for corpus in REGISTRY.values():
        copy = local_copy(corpus)
        loading = "download" if corpus.kind == "file" else "stream" if corpus.streaming else "prepare"
        rows.append((corpus.name, corpus.size, corpus.source, corpus.pin, loading, str(copy) if copy else "-"))
    print(text_table(("name", "size", "source", "pinned", "loading", "on this machine"), rows))
    print()
    for corpus in REGISTRY.values():
        print(f"{corpus.name}: {corpus.description}")
    print(textwrap.dedent(f"""
        Use one as `data.sources: [{{corpus: NAME}}]`. "stream" reads the Hub dataset as it goes; "prepare"
        downloads it into the Hugging Face cache first. A local copy of a Hub repository in ${CORPORA_PATH_ENV}
        (<dir>/<owner>/<name>) is used instead of the Hub. "pinned": a file corpus is checked against its
        sha256; a Hub corpus not pinned to a commit is read at the commit its branch points to when you
        tokenize, which the dataset's manifest and its tokenize run record (sources[i].revision); pin one
        with `{{corpus: NAME, hf_revision: COMMIT}}`.

        Other sources:
          local         {{path: FILE | DIR | 'GLOB'}}  .txt/.text/.md, .jsonl/.ndjson/.json, .parquet;
                        text and JSON also compressed (.gz, .zst, .bz2); directories read recursively
          object store  {{path: 's3://bucket/prefix/*.jsonl.zst'}}, gs://…  (pyarrow/fsspec; S3 settings from
                        AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, … or URI query parameters)
          Hugging Face  {{hf: NAME, hf_config: …, hf_split: train, hf_revision: COMMIT, streaming: true}}"""))
    return EXIT_OK


def cmd_inspect(args) -> int:
    from gptray.data.inspection import length_histogram, sample_documents
    from gptray.data.manifest import SPLITS, Manifest

    manifest = Manifest.load(args.dataset_dir)
    tok = manifest.tokenizer
    print(f"dataset    {args.dataset_dir}  (created {manifest.created_at or 'unknown'})")
    print(f"tokenizer  {tok['name']}: vocabulary {tok['vocab_size']:,}, <|endoftext|> = {tok['eot_token']}, "
          f"stored as {tok['dtype']}")
    print(f"content    {manifest.documents:,} documents, {manifest.tokens:,} tokens; fingerprint "
          f"{manifest.fingerprint[:16]}")
    for split in SPLITS:
        info = manifest.split_info(split)
        size = sum(s.bytes for s in info.shards)
        print(f"  {split:<8} {info.documents:>12,} documents {info.tokens:>15,} tokens in "
              f"{len(info.shards)} shard(s), {size / 1e6:,.1f} MB")
    if manifest.prompt_masked:
        print("loss       prompt/completion documents: training counts only completion tokens (shards' prompt_tokens)")
    split = manifest.split
    print(f"split      val_fraction {split.get('val_fraction')}, seed {split.get('seed')}: {split.get('method', '')}")
    print("sources")
    for source in manifest.sources:
        print(f"  {source.description}")
        print(f"    {source.kind}, weight {source.weight:g}: read {source.documents_read:,} documents / "
              f"{source.tokens_read:,} tokens ({source.bytes_read / 1e6:,.1f} MB), wrote {source.documents:,} / "
              f"{source.tokens:,} tokens = {source.share:.1%} of the dataset")
        if source.skipped_files:
            print(f"    skipped {len(source.skipped_files)} file(s) of unsupported type, "
                  f"e.g. {source.skipped_files[0]}")
    if manifest.problems.total():
        print("bad input (skipped, or repaired and kept)")
        for kind, count in sorted(manifest.problems.counts.items()):
            print(f"  {kind:<15} {count:>10,}")
            for example in manifest.problems.examples.get(kind, []):
                print(f"      {example}")
    else:
        print("bad input  none")
    histogram = length_histogram(args.dataset_dir, manifest, args.histogram_shards)
    if histogram.documents:
        print(f"lengths    tokens per document ({histogram.documents:,} documents from {histogram.shards_read} of "
              f"{histogram.shards_total} shard(s)): min {histogram.min:,}, median {histogram.median:,.0f}, "
              f"mean {histogram.mean:,.1f}, max {histogram.max:,}")
        peak = max(histogram.counts) or 1
        for low, high, count in zip(histogram.edges, histogram.edges[1:], histogram.counts):
            if count:
                bar = "#" * max(1, round(BAR_WIDTH * count / peak))
                print(f"  {low:>9,} – {high - 1:<9,} {count:>10,}  {bar}")
    for sample in sample_documents(args.dataset_dir, manifest, args.samples):
        print(f"sample     {sample.split} document {sample.doc:,} ({sample.tokens:,} tokens):")
        print(textwrap.indent(_clip(sample.text, args.max_chars), "    | ", lambda _: True))
    return EXIT_OK


def cmd_preview(args) -> int:
    from gptray.data.inspection import preview_batches
    from gptray.data.manifest import Manifest
    from gptray.data.train_windows import DataOrder

    config = load_experiment(args)
    world_size = args.world_size or config.ray.max_workers
    if args.steps < 1:
        raise ConfigError("--steps", f"must be at least 1 (got {args.steps})")
    if world_size < 1:
        raise ConfigError("--world-size", f"must be at least 1 (got {world_size})")
    for rank in args.rank or []:
        if not 0 <= rank < world_size:
            raise ConfigError("--rank", f"must be in [0, {world_size}) (got {rank})")
    train = config.train
    seq_len = train.effective_seq_len(config.model)
    print(f"dataset    {config.data.dataset_dir}")
    order = DataOrder.for_run(config, Manifest.load(config.data.dataset_dir)).kind
    print(f"batches    global batch {train.batch_size} × {seq_len} tokens; {world_size} rank(s) × "
          f"{train.grad_accum_steps(world_size)} micro-batch(es) of {train.micro_batch_size}; seed {train.seed}; "
          f"{order} order (data.shuffle {config.data.shuffle})")
    for row in preview_batches(config, args.steps, world_size, args.rank):
        where = f"{row.shard} tokens" if row.shard else "train tokens"
        print(f"step {row.step} rank {row.rank} micro-batch {row.micro_batch} row {row.row} "
              f"({where} {row.start:,}–{row.start + seq_len:,}):")
        if args.tokens:
            print(textwrap.indent(textwrap.fill(" ".join(map(str, row.inputs.tolist())), 100), "    # "))
        print(textwrap.indent(_clip(row.text, args.max_chars), "    | ", lambda _: True))
    return EXIT_OK


def _clip(text: str, limit: int) -> str:
    if limit and len(text) > limit:
        return text[:limit] + f"… [{len(text) - limit:,} more characters]"
    return text
