"""Shared pieces of the command line: exit codes, --config/overrides arguments, command registration."""

from __future__ import annotations

import argparse
import logging
import textwrap

EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected error (a bug, or something we did not anticipate)
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    unexpected error
  2    invalid config or command line (nothing was run)
  3    data error: corpus or token dataset missing, unreadable or inconsistent, or
       storage (a directory or object store) unreachable, unreadable or unwritable
  4    checkpoint error: missing, incomplete, or not matching this run
  5    training failed on the Ray cluster
  6    the run directory is in use by another live launch (its lease says which)
  130  interrupted
"""

OVERRIDES_HELP = "config overrides as dotted key=value, e.g. train.max_steps=50 model.preset=nano"

log = logging.getLogger("gptray.cli")


def add_verbose(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--verbose", action="store_true", default=default,
                        help="also show Ray's own per-report output (Ray Train's TrainingReport lines) on the console; "
                             "on a cluster, give the job GPTRAY_VERBOSE=1 in its runtime env for its workers")


def add_command(commands, name: str, help: str, description: str, config: bool = True) -> argparse.ArgumentParser:
    """A subcommand with the shared epilog; with `config`, it takes --config FILE.yaml and key=value overrides."""
    parser = commands.add_parser(name, help=help, description=textwrap.dedent(description), epilog=EXIT_CODES_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbose(parser, argparse.SUPPRESS)  # `gptray COMMAND --verbose` as well as `gptray --verbose COMMAND`
    if config:
        parser.add_argument("--config", metavar="FILE.yaml",
                            help="experiment config (default: the built-in quickstart config)")
        parser.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    return parser


def load_experiment(args, hub: bool = True, settings: dict | None = None):
    """The resolved, validated config named by --config plus the overrides (`settings`: the command's
    options as dotted keys, which the overrides beat; `hub`: whether a fine-tuning base named hf:NAME
    may have its config.json read from the Hugging Face Hub)."""
    from gptray.train.finetune import load_run_config  # imports torch: only once a command runs

    if args.config is None:
        log.info("no --config given: using the built-in defaults (the quickstart config)")
    return load_run_config(args.config, args.overrides, hub=hub, settings=settings)


def print_mlflow_address(tracking_uri: str, run_id: str, experiment_id: str | None = None) -> None:
    """The line under an "MLflow …" line: the run's page in the UI's model-training view (and how to serve it)."""
    from gptray.tracking.links import run_ui_url, ui_command

    url = run_ui_url(tracking_uri, run_id, experiment_id)
    if url is None:
        return
    command = ui_command(tracking_uri)
    print(f"           open {url}" + (f" after `{command}`" if command else ""))
