"""A run's metric history, kept in its run directory: what the run's own plots are drawn from.

Rank 0 adds every logged row and writes the rows since its last write as one part,
`metrics/<first step>-<last step>.jsonl`, just before each checkpoint. A part therefore never
outlives the checkpoint it precedes unless that checkpoint completes: a relaunch resuming from
step s discards the parts that begin after s, and writes them again as it redoes those steps.
Nothing is appended in place, so the same code serves a local directory and an object store.
"""

from __future__ import annotations

import json
import re

from gptray.core.storage import Storage

HISTORY_DIR = "metrics"
PART = re.compile(r"^(\d{8})-(\d{8})\.jsonl$")


class MetricHistory:
    """The rows rank 0 logged since its last write, and where they go."""

    def __init__(self, run: Storage):
        self.run = run
        self.rows: list[dict] = []

    def add(self, step: int, metrics: dict[str, float]) -> None:
        self.rows.append({"step": step, **metrics})

    def write(self) -> None:
        """Store the pending rows as one part (nothing when there are none)."""
        if not self.rows:
            return
        name = f"{self.rows[0]['step']:08d}-{self.rows[-1]['step']:08d}.jsonl"
        text = "".join(json.dumps(row) + "\n" for row in self.rows)
        self.run.make_dirs(HISTORY_DIR)
        self.run.write_bytes(f"{HISTORY_DIR}/{name}", text.encode())
        self.rows = []

    def discard_after(self, step: int) -> None:
        """Remove the parts of steps after `step`: a relaunch resuming there logs them again."""
        for name, first, _ in _parts(self.run):
            if first > step:
                self.run.delete(f"{HISTORY_DIR}/{name}")


def read_history(run: Storage) -> dict[str, dict[int, float]]:
    """metric → {step: value} over every stored part, in step order."""
    histories: dict[str, dict[int, float]] = {}
    for name, _, _ in _parts(run):
        for line in run.read_bytes(f"{HISTORY_DIR}/{name}").decode().splitlines():
            row = json.loads(line)
            step = row.pop("step")
            for key, value in row.items():
                histories.setdefault(key, {})[step] = value
    return histories


def _parts(run: Storage) -> list[tuple[str, int, int]]:
    found = [(name, int(m.group(1)), int(m.group(2))) for name in run.list(HISTORY_DIR) if (m := PART.match(name))]
    return sorted(found, key=lambda part: part[1])
