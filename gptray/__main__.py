"""`python -m gptray` is the `gptray` command."""

import sys

from gptray.cli.main import main

sys.exit(main())
