"""The `gptray` command line: every command takes --config FILE.yaml and trailing key=value overrides."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import time

import yaml

from gptray.errors import ConfigError, GptrayError

EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected error (a bug, or something we did not anticipate)
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    unexpected error
  2    invalid config or command line (nothing was run)
  3    data error: corpus or token dataset missing, unreadable or inconsistent
  4    checkpoint error: missing, incomplete, or not matching this run
  5    training failed on the Ray cluster
  130  interrupted
"""

OVERRIDES_HELP = "config overrides as dotted key=value, e.g. train.max_steps=50 model.preset=nano"

log = logging.getLogger("gptray.cli")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="experiment config (default: the built-in quickstart config)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptray",
        description="Distributed GPT pretraining on Ray: tokenize corpora with Ray Data, train with Ray Train "
                    "(DDP), track in MLflow.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=textwrap.dedent(description),
                                  epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_config_args(sub)
        return sub

    sub = command("tokenize", "tokenize corpora into Parquet token shards (Ray Data)", """\
        Read data.sources (local txt/jsonl/json/parquet files, directories, globs, Hugging Face datasets,
        named corpora), tokenize them with tiktoken, append <|endoftext|> after every document, split
        documents into train/val by a seeded content hash, and write Parquet token shards plus
        manifest.json to data.dataset_dir. An identical earlier run is reused.""")
    sub.add_argument("--overwrite", action="store_true",
                     help="replace a different token dataset already in data.dataset_dir")
    sub.set_defaults(handler=cmd_tokenize)

    sub = command("pretrain", "train a GPT on token shards with Ray Train (DDP)", """\
        Train the configured model on data.dataset_dir with ray.num_workers Ray Train workers under DDP
        (gloo on CPU, NCCL on GPU), logging to MLflow from rank 0. Checkpoints go to out_dir/name;
        launching the same run again resumes from its latest checkpoint.""")
    sub.add_argument("--no-sample", action="store_true", help="do not generate a sample after training")
    sub.set_defaults(handler=cmd_pretrain)

    sub = command("generate", "generate text from a checkpoint", """\
        Load a checkpoint (a checkpoint directory, a run directory, or by default the latest checkpoint
        of out_dir/name) and continue a prompt. generate.temperature=0 is greedy decoding.""")
    sub.add_argument("--checkpoint", metavar="PATH", help="checkpoint or run directory")
    sub.add_argument("--prompt", help="text to continue (default: generate.prompt)")
    sub.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples to draw (seeds seed, seed+1, …)")
    sub.set_defaults(handler=cmd_generate)

    sub = command("quickstart", "tokenize, train, track and sample end to end on local defaults", """\
        The whole pipeline on one machine: tokenize tinyshakespeare, train the nano GPT for
        train.max_steps steps on a local Ray cluster with 2 CPU workers under DDP, log to MLflow
        (SQLite under out_dir), and print where the run is and a generated sample.""")
    sub.set_defaults(handler=cmd_quickstart)

    sub = command("config", "print the resolved config (validates it; runs nothing)", """\
        Print the config a command would run with, after defaults, presets, overrides and path
        resolution, as YAML.""")
    sub.set_defaults(handler=cmd_config)
    return parser


def load(args):
    from gptray.config import load_config

    if args.config is None:
        log.info("no --config given: using the built-in defaults (the quickstart config)")
    return load_config(args.config, args.overrides)


def cmd_config(args) -> int:
    print(yaml.safe_dump(load(args).to_dict(), sort_keys=False), end="")
    return EXIT_OK


def cmd_tokenize(args) -> int:
    from gptray.data.tokenize_job import tokenize_corpus

    config = load(args)
    result = tokenize_corpus(config, overwrite=args.overwrite)
    _print_dataset(result)
    return EXIT_OK


def cmd_pretrain(args) -> int:
    from gptray.train.pretrain import pretrain

    config = load(args)
    result = pretrain(config, sample=not args.no_sample)
    _print_run(config, result)
    return EXIT_OK


def cmd_generate(args) -> int:
    import dataclasses

    from gptray.data.tokenizer import Tokenizer
    from gptray.generation import generate_text, load_model

    config = load(args)
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
    config = load(args)
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
    state = "reused" if result.reused else f"written in {result.seconds:.0f} s"
    print(f"dataset    {result.dataset_dir} ({state})")
    print(f"           {m.documents:,} documents, {m.tokens:,} tokens: train {train.tokens:,} in "
          f"{len(train.shards)} shard(s), val {val.tokens:,} in {len(val.shards)} shard(s)")
    if m.problems.total():
        print(f"           skipped or repaired input: {m.problems.counts} (see manifest.json)")


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


def main(argv: list[str] | None = None) -> int:
    from gptray.runtime import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        return args.handler(args)
    except GptrayError as exc:
        print(f"gptray {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"gptray {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
