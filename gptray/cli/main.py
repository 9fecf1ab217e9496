"""The `gptray` command line: the commands that read a run's config take --config FILE.yaml and trailing
key=value overrides (docs/reference/cli.md lists every command and option)."""

from __future__ import annotations

import argparse
import os
import sys

from gptray.cli import (
    checkpoint_commands,
    data_commands,
    eval_commands,
    model_commands,
    run_commands,
    sweep_commands,
    tokenizer_commands,
)
from gptray.cli.common import EXIT_CODES_HELP, EXIT_INTERRUPTED, add_verbose
from gptray.core.errors import GptrayError, Interrupted

# Each module adds its subcommands with `register(commands)`.
COMMAND_GROUPS = [run_commands, data_commands, tokenizer_commands, model_commands, checkpoint_commands, sweep_commands,
                  eval_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptray",
        description="Distributed GPT pretraining on Ray: tokenize corpora with Ray Data, train with Ray Train "
                    "(DDP), track in MLflow.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_verbose(parser, False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gptray.core.runtime import VERBOSE_ENV, configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:  # in the environment, so that the workers of a local Ray cluster see it too
        os.environ[VERBOSE_ENV] = "1"
    configure_logging()
    try:
        return args.handler(args)
    except Interrupted as exc:
        print(f"gptray {args.command}: interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except GptrayError as exc:
        print(f"gptray {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"gptray {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(argv: list[str] | None = None) -> None:
    """The `gptray` command itself: main(), then the process's end with main's exit code.

    After Ctrl-C, trainer.fit() is still blocked in its own thread (pretrain._fit_interruptibly). An
    ordinary interpreter exit shuts Ray down under that thread, and Ray's core worker then ends the
    process with status 1 from it ("The core worker has already been shutdown"), losing the 130 (seen
    in CI). By then the run is safe (its checkpoints written, its MLflow run closed), so the process ends
    at once: a local Ray started by this process dies with it (Ray's fate sharing), and on a cluster
    the job's actors end with their driver."""
    code = main(argv)
    if code == EXIT_INTERRUPTED and "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
