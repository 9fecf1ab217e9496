"""progress.json: what a tokenize job has written so far, so an interrupted or damaged job resumes where it was.

Saved atomically every time a shard is written (and kept when the job completes):
- per split, the shards written so far and the "segments": files holding the documents that wait
  for the split's next shard (saved at the same moment), all with checksums;
- `next_doc`: every document with a smaller global id is in a shard or a segment;
- per read task: its first global document id and what it contributed (documents, tokens, problems).

A rerun verifies the listed files and restarts at the last read task that began at or before
the first document not safely written; documents of that task already written are skipped, so
the shards come out byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from gptray.base.errors import ConfigError, DataError
from gptray.base.storage import Storage
from gptray.config.loader import build
from gptray.data.manifest import SPLITS, ProblemCounts, ShardInfo

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
    segments: dict[str, list[ShardInfo]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    next_doc: int = 0  # documents with smaller ids are all in shards or segments
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
    segments: dict[str, list[ShardInfo]]  # intact pending-document segments kept, per split
    covered: dict[str, int]  # per split: its documents with ids up to here are in the kept files
    tasks: list[TaskStats]  # stats of every task before `task`

    @classmethod
    def start(cls) -> ResumePoint:
        return cls(0, 0, {s: [] for s in SPLITS}, {s: [] for s in SPLITS}, {s: -1 for s in SPLITS}, [])


def resume_point(progress: Progress, intact: dict[str, int], intact_segments: dict[str, int]) -> ResumePoint:
    """Continue after the intact files: `intact[split]` leading shards and `intact_segments[split]` leading
    segments passed verification (segments count only when every shard did)."""
    shards, segments, covered = {}, {}, {}
    for split in SPLITS:
        listed, listed_segments = progress.shards.get(split, []), progress.segments.get(split, [])
        shards[split] = listed[: intact.get(split, 0)]
        segments[split] = listed_segments[: intact_segments.get(split, 0)] if len(shards[split]) == len(listed) else []
        if len(shards[split]) == len(listed) and len(segments[split]) == len(listed_segments):
            covered[split] = progress.next_doc - 1  # everything routed to this split so far is safe
        else:
            kept = shards[split] + segments[split]
            covered[split] = kept[-1].last_document if kept else -1
    first_unwritten = min(covered[split] + 1 for split in SPLITS)
    seen = sorted(progress.tasks, key=lambda t: t.task)
    restart = [t for t in seen if t.first_doc <= first_unwritten]
    if not restart:
        return ResumePoint(0, 0, shards, segments, covered, [])
    start = restart[-1]
    return ResumePoint(start.task, start.first_doc, shards, segments, covered,
                       [t for t in seen if t.task < start.task])
