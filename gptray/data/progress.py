"""progress.json: what a tokenize job has written so far, so an interrupted or damaged job resumes where it was.

Saved atomically right after every shard is written (and kept when the job completes):
- the shards of each split written so far, with checksums;
- `resume_doc`: every document with a smaller global id is in a written shard;
- per read task: its first global document id and what it contributed (documents, tokens, problems).

A rerun verifies the listed shards, keeps each split's intact prefix, and restarts at the last
read task that began at or before the first document not known to be written; documents of
that task already written to a split are skipped, so the shards come out byte-identical to an
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from gptray.config.loader import build
from gptray.data.manifest import SPLITS, ProblemCounts, ShardInfo
from gptray.data.storage import Storage
from gptray.errors import ConfigError, DataError

PROGRESS_NAME = "progress.json"
FORMAT = "gptray.tokenize-progress"
VERSION = 1


@dataclass
class TaskStats:
    """What one read task contributed."""

    task: int
    source: int
    first_doc: int  # global id its first written document got
    documents_read: int = 0
    tokens_read: int = 0
    documents: int = 0  # written, after mixture copies
    tokens: int = 0
    bytes: int = 0
    problems: ProblemCounts = field(default_factory=ProblemCounts)


@dataclass
class Progress:
    request_digest: str
    plan_digest: str
    shards: dict[str, list[ShardInfo]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    resume_doc: int = 0
    next_doc: int = 0
    tasks: list[TaskStats] = field(default_factory=list)
    complete: bool = False
    format: str = FORMAT
    version: int = VERSION

    def save(self, store: Storage) -> None:
        data = json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()
        store.write_bytes(PROGRESS_NAME, data)

    @classmethod
    def load(cls, store: Storage) -> Progress | None:
        """The saved progress, or None when there is none (or it is unreadable: then the job starts over)."""
        if not store.exists(PROGRESS_NAME):
            return None
        try:
            data = json.loads(store.read_bytes(PROGRESS_NAME))
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                return None
            return build(cls, data)
        except (json.JSONDecodeError, UnicodeDecodeError, ConfigError, DataError, AttributeError):
            return None


@dataclass
class ResumePoint:
    """Where a job continues: the first read task to run and the state before it."""

    task: int  # index of the first read task to run
    next_doc: int  # global id of that task's first document
    shards: dict[str, list[ShardInfo]]  # intact shards kept, per split
    covered: dict[str, int]  # per split: documents with ids up to here are in its kept shards
    tasks: list[TaskStats]  # stats of every task before `task`


def resume_point(progress: Progress, intact: dict[str, int]) -> ResumePoint:
    """Continue after the intact shards (`intact[split]` = how many leading shards passed verification)."""
    shards = {split: progress.shards.get(split, [])[: intact.get(split, 0)] for split in SPLITS}
    covered = {split: (kept[-1].last_document if kept else -1) for split, kept in shards.items()}
    first_unwritten = progress.resume_doc
    for split in SPLITS:
        if intact.get(split, 0) < len(progress.shards.get(split, [])):  # damaged or missing shards
            first_unwritten = min(first_unwritten, covered[split] + 1)
    seen = sorted(progress.tasks, key=lambda t: t.task)
    restart = [t for t in seen if t.first_doc <= first_unwritten]
    if not restart:
        return ResumePoint(0, 0, shards, covered, [])
    start = restart[-1]
    return ResumePoint(start.task, start.first_doc, shards, covered, [t for t in seen if t.task < start.task])
