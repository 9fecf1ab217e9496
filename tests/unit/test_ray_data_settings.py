"""gptray's Ray Data settings reach Ray Data: its executor learns at once that a read task ended."""

from __future__ import annotations

import os
import subprocess
import sys

from gptray.core import runtime

FETCHER = """
from gptray.core.runtime import use_ray_data_settings
use_ray_data_settings()
from ray.data._internal.execution.metadata_fetcher import make_metadata_fetcher
print(type(make_metadata_fetcher()).__name__)
"""


def _fetcher(env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", FETCHER], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_ray_data_fetches_task_output_metadata_inline_unless_a_user_says_otherwise():
    """Ray Data reads the variable when first imported (a fresh process); with its default, the background fetcher,
    a CPU idled ~0.15 s between two tokenize read tasks. A user's own value still wins."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_DATA_METADATA_PREFETCH_ON_THREAD"}
    assert not runtime.RAY_DATA_METADATA_ON_THREAD
    assert _fetcher(env) == "InlineMetadataFetcher"
    assert _fetcher(dict(env, RAY_DATA_METADATA_PREFETCH_ON_THREAD="1")) == "ThreadedMetadataFetcher"
