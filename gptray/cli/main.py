"""The `gptray` command line: every command takes --config FILE.yaml and trailing key=value overrides."""

from __future__ import annotations

import argparse
import sys

from gptray.base.errors import GptrayError, Interrupted
from gptray.cli import (
    checkpoint_commands,
    data_commands,
    eval_commands,
    model_commands,
    run_commands,
    sweep_commands,
)
from gptray.cli.common import EXIT_CODES_HELP, EXIT_INTERRUPTED

# Each module adds its subcommands with `register(commands)`.
COMMAND_GROUPS = [run_commands, data_commands, model_commands, checkpoint_commands, sweep_commands, eval_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptray",
        description="Distributed GPT pretraining on Ray: tokenize corpora with Ray Data, train with Ray Train "
                    "(DDP), track in MLflow.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gptray.base.runtime import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
