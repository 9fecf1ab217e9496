"""What a tokenize job has finished, so an interrupted or damaged job redoes only the rest.

- progress.json claims the directory for one request and read plan (written before any shard);
- progress/task-NNNNN.json is written by read task NNNNN itself, after its shards: their
  checksums and what the task read. A task whose record exists and whose shards still match it
  is not done again, so an interrupted job loses at most the tasks that were running.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from gptray.config.loader import build
from gptray.core.errors import ConfigError, DataError
from gptray.core.storage import Storage
from gptray.data.manifest import SPLITS, ProblemCounts, ShardInfo

PROGRESS_NAME = "progress.json"
RECORDS_DIR = "progress"
FORMAT = "gptray.tokenize-progress"
RECORD_FORMAT = "gptray.tokenize-task"
VERSION = 2


def record_path(task: int) -> str:
    return f"{RECORDS_DIR}/task-{task:05d}.json"


def record_task(name: str) -> int | None:
    """The read task whose record a file of RECORDS_DIR is, or None for another file."""
    match = re.fullmatch(r"task-(\d{5,})\.json", name)
    return int(match.group(1)) if match else None


@dataclass
class TaskStats:
    """What one read task contributed."""

    documents_read: int = 0
    tokens_read: int = 0
    documents: int = 0  # written, after mixture copies
    tokens: int = 0
    bytes: int = 0
    problems: ProblemCounts = field(default_factory=ProblemCounts)


@dataclass
class TaskRecord:
    """A finished read task: its shards per split and its stats (what a task returns to the driver)."""

    task: int
    source: int
    task_digest: str  # ReadTask.digest: the record counts only for exactly this task
    request_digest: str
    shards: dict[str, list[ShardInfo]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    stats: TaskStats = field(default_factory=TaskStats)
    strict_failure: str = ""  # data.strict: the bad input that stopped the task (nothing was written)
    kept: bool = False  # found intact from an earlier run, not redone (not saved)
    format: str = RECORD_FORMAT
    version: int = VERSION

    def save(self, store: Storage) -> None:
        data = dataclasses.asdict(self)
        data.pop("kept")
        store.write_bytes(record_path(self.task), json.dumps(data, separators=(",", ":")).encode())

    @classmethod
    def load(cls, store: Storage, task: int) -> TaskRecord | None:
        """The task's saved record, or None when there is none (or it is unreadable: then it is redone)."""
        return _load(store, record_path(task), cls, RECORD_FORMAT)


@dataclass
class Progress:
    request_digest: str
    plan_digest: str
    tasks: int = 0
    format: str = FORMAT
    version: int = VERSION

    def save(self, store: Storage) -> None:
        store.write_bytes(PROGRESS_NAME, json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode())

    @classmethod
    def load(cls, store: Storage) -> Progress | None:
        """The saved claim, or None when there is none (or it is unreadable: then the job starts over)."""
        return _load(store, PROGRESS_NAME, cls, FORMAT)


def _load(store: Storage, relative: str, cls: type, expected_format: str):
    try:
        if not store.exists(relative):
            return None
        data = json.loads(store.read_bytes(relative))
        if data.get("format") != expected_format or data.get("version") != VERSION:
            return None
        return build(cls, data)
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError, DataError, AttributeError):
        return None
