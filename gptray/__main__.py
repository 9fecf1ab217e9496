"""`python -m gptray` is the `gptray` command."""

from gptray.cli.main import run

run()
