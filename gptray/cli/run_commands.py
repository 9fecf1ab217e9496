"""The pipeline commands: tokenize, pretrain, generate, quickstart, config."""

from __future__ import annotations

import dataclasses
import textwrap
import time

import yaml

from gptray.cli.common import EXIT_OK, add_command, load_experiment, log
from gptray.errors import ConfigError


def register(commands) -> None:
    sub = add_command(commands, "tokenize", "tokenize corpora into Parquet token shards (Ray Data)", """\
        Read data.sources (local or s3:// / gs:// txt/jsonl/json/parquet files, also .gz/.zst compressed,
        directories, globs, Hugging Face datasets, named corpora from `gptray data list`), tokenize them
        with tiktoken in parallel Ray tasks, append <|endoftext|> after every document, split documents
        into train/val by a seeded content hash, write each source's documents as often as its weight
        says, and write Parquet token shards plus manifest.json to data.dataset_dir (a local path or a
        URI). Bad input is skipped and counted in the manifest (--strict stops at the first).
        Rerunning reuses a finished identical dataset after verifying its shards, and resumes an
        interrupted one after its last intact shard.""")
    sub.add_argument("--overwrite", action="store_true",
                     help="replace a different token dataset (or unfinished job) already in data.dataset_dir")
    sub.add_argument("--strict", action="store_true",
                     help="stop with an error (exit 3) at the first bad input instead of skipping and counting it "
                          "(same as data.strict=true)")
    sub.set_defaults(handler=cmd_tokenize)

    sub = add_command(commands, "pretrain", "train a GPT on token shards with Ray Train (DDP)", """\
        Train the configured model on data.dataset_dir with ray.num_workers Ray Train workers under DDP
        (gloo on CPU, NCCL on GPU), logging to MLflow from rank 0. Checkpoints go to out_dir/name;
        launching the same run again resumes from its latest checkpoint.""")
    sub.add_argument("--no-sample", action="store_true", help="do not generate a sample after training")
    sub.set_defaults(handler=cmd_pretrain)

    sub = add_command(commands, "generate", "generate text from a checkpoint", """\
        Load a checkpoint (a checkpoint directory, a run directory, or by default the latest checkpoint
        of out_dir/name) and continue a prompt. generate.temperature=0 is greedy decoding.""")
    sub.add_argument("--checkpoint", metavar="PATH", help="checkpoint or run directory")
    sub.add_argument("--prompt", help="text to continue (default: generate.prompt)")
    sub.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to draw (seeds seed, seed+1, …)")
    sub.set_defaults(handler=cmd_generate)

    sub = add_command(commands, "quickstart", "tokenize, train, track and sample end to end on local defaults", """\
        The whole pipeline on one machine: tokenize tinyshakespeare, train the nano GPT for
        train.max_steps steps on a local Ray cluster with 2 CPU workers under DDP, log to MLflow
        (SQLite under out_dir), and print where the run is and a generated sample.""")
    sub.set_defaults(handler=cmd_quickstart)

    sub = add_command(commands, "config", "print the resolved config (validates it; runs nothing)", """\
        Print the config a command would run with, after defaults, presets, overrides and path
        resolution, as YAML.""")
    sub.set_defaults(handler=cmd_config)


def cmd_config(args) -> int:
    print(yaml.safe_dump(load_experiment(args).to_dict(), sort_keys=False), end="")
    return EXIT_OK


def cmd_tokenize(args) -> int:
    from gptray.data.tokenize_job import tokenize_corpus

    config = load_experiment(args)
    result = tokenize_corpus(config, overwrite=args.overwrite, strict=True if args.strict else None)
    _print_dataset(result)
    return EXIT_OK


def cmd_pretrain(args) -> int:
    from gptray.train.pretrain import pretrain

    config = load_experiment(args)
    result = pretrain(config, sample=not args.no_sample)
    _print_run(config, result)
    return EXIT_OK


def cmd_generate(args) -> int:
    from gptray.data.tokenizer import Tokenizer
    from gptray.generation import generate_text, load_model

    config = load_experiment(args)
    if args.num_samples < 1:
        raise ConfigError("--num-samples", f"must be at least 1 (got {args.num_samples})")
    model, checkpoint = load_model(args.checkpoint or config.run_dir)
    tokenizer = Tokenizer(config.data.tokenizer)
    log.info("generating from %s", checkpoint)
    prompt = config.generate.prompt if args.prompt is None else args.prompt
    for i in range(args.num_samples):
        settings = dataclasses.replace(config.generate, seed=config.generate.seed + i)
        if args.num_samples > 1:
            print(f"--- sample {i + 1} (seed {settings.seed}) ---")
        print(prompt + generate_text(model, tokenizer, settings, prompt))
    return EXIT_OK


def cmd_quickstart(args) -> int:
    from gptray.data.tokenize_job import tokenize_corpus
    from gptray.train.pretrain import pretrain

    started = time.monotonic()
    config = load_experiment(args)
    log.info("quickstart 1/2: tokenize %s", ", ".join(s.describe() for s in config.data.sources))
    dataset = tokenize_corpus(config)
    log.info("quickstart 2/2: pretrain %s on %d Ray Train worker(s)", config.model.preset or "custom model",
             config.ray.num_workers)
    result = pretrain(config)
    print()
    _print_dataset(dataset)
    _print_run(config, result)
    print(f"quickstart finished in {time.monotonic() - started:.0f} s")
    return EXIT_OK


def _print_dataset(result) -> None:
    m = result.manifest
    train, val = m.split_info("train"), m.split_info("val")
    if result.reused:
        state = "reused: shards verified"
    elif result.resumed_from_task is not None:
        state = (f"resumed at read task {result.resumed_from_task + 1} of {result.tasks}, "
                 f"finished in {result.seconds:.0f} s")
    else:
        state = f"written in {result.seconds:.0f} s"
    print(f"dataset    {result.dataset_dir} ({state})")
    print(f"           {m.documents:,} documents, {m.tokens:,} tokens: train {train.tokens:,} in "
          f"{len(train.shards)} shard(s), val {val.tokens:,} in {len(val.shards)} shard(s)")
    if len(m.sources) > 1:
        shares = ", ".join(f"{s.description} {s.share:.1%}" for s in m.sources)
        print(f"           sources: {shares}")
    if m.problems.total():
        print(f"           skipped or repaired input: {m.problems.counts} (gptray data inspect shows where)")


def _print_run(config, result) -> None:
    metrics = result.metrics
    print(f"run        {result.run_dir}")
    if result.final_step == result.start_step and result.start_step > 0:
        print(f"           already at step {result.final_step}; nothing trained (raise train.max_steps to continue)")
    else:
        print(f"           steps {result.start_step} → {result.final_step} in {result.seconds:.0f} s")
    print(f"checkpoint {result.checkpoint}")
    if "train_loss" in metrics:
        line = f"loss       train {metrics['train_loss']:.4f}"
        if "val_loss" in metrics:
            line += f", val {metrics['val_loss']:.4f}"
        print(line)
    if result.mlflow_run_id:
        experiment = config.tracking.experiment
        print(f"MLflow     run {result.mlflow_run_id} (experiment {experiment!r}) at {result.tracking_uri}")
        if result.tracking_uri.startswith("sqlite:"):
            print(f"           browse: mlflow ui --backend-store-uri {result.tracking_uri}")
    if result.sample is not None:
        print(f"sample     (prompt {config.generate.prompt!r}, temperature {config.generate.temperature}):")
        print(textwrap.indent(config.generate.prompt + result.sample, "    ").rstrip())
    print(f"generate   gptray generate --checkpoint {result.run_dir} --prompt \"ROMEO:\"")
