"""The tokenize job's Ray Data sink: writes each plan task's shards from the Ray task that holds its tokens.

A write gets the tokenized blocks of whole plan tasks (plan_datasource.py marks where each task
starts and ends); it feeds each task's documents to a TaskWriter, which names the task's shards by
the plan's task index (shards.py), saves its record last (progress.py) and returns only the record.
Shard names and bytes so depend on the plan alone, never on Ray Data's block sizes, fusion,
task indices or the cluster's size.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from gptray.core.errors import DataError
from gptray.data.plan_datasource import END, START
from gptray.data.progress import TaskRecord
from gptray.data.read_tasks import ReadTask
from gptray.data.shard_task import TaskInputs, TaskWriter


class _TaskRows:
    """What one write has of the plan task it is writing now."""

    def __init__(self, task: ReadTask, inputs: TaskInputs):
        self.index = task.index
        self.writer = TaskWriter(task, inputs)
        self.failed = False

    def add(self, rows: pa.Table) -> None:
        if not self.failed and rows.num_rows:
            self.failed = not self.writer.add(rows)

    def finish(self, inputs: TaskInputs, kept: bytes | None) -> TaskRecord:
        if kept is not None:  # intact from an earlier run: nothing was written now
            return pickle.loads(kept)
        if self.failed:
            return self.writer.failure  # data.strict stopped the task: no record is saved, the rerun redoes it
        record = self.writer.close()
        record.save(inputs.store)  # last: a record exists only once every shard it lists does
        return record


def write_task_blocks(blocks: Iterable[pa.Table], tasks: list[ReadTask], inputs: TaskInputs) -> list[TaskRecord]:
    """Write the shards of every plan task whose rows `blocks` hold; their records, in the order they ended."""
    records: list[TaskRecord] = []
    current: _TaskRows | None = None
    for block in blocks:
        task_ids = block.column("task").to_numpy()
        marks = block.column("mark").to_numpy()
        start = 0
        for row in [*np.nonzero(marks != 0)[0].tolist(), block.num_rows]:
            if row > start:
                if current is None or (task_ids[start:row] != current.index).any():
                    raise _split_error(int(task_ids[start]))
                current.add(block.slice(start, row - start))
            if row < block.num_rows:
                task = int(task_ids[row])
                if marks[row] == START:
                    if current is not None:
                        raise _split_error(current.index)
                    current = _TaskRows(tasks[task], inputs)
                elif marks[row] == END:
                    if current is None or current.index != task:
                        raise _split_error(task)
                    records.append(current.finish(inputs, block.column("record")[row].as_py()))
                    current = None
            start = row + 1
    if current is not None:
        raise _split_error(current.index)
    return records


def _split_error(task: int) -> DataError:
    return DataError(f"read task {task}'s rows reached the shard writer split between Ray tasks (Ray Data did not "
                     "fuse read, tokenize and write); its shards would depend on the split, so none are written")


def shard_datasink(tasks: list[ReadTask], inputs_ref):
    """A Ray Data Datasink writing the shards of `tasks` (`inputs_ref`: the job's TaskInputs in the object store);
    after the write, its `records` are every task's record in task order."""
    from ray.data.datasource import Datasink

    class _ShardDatasink(Datasink):
        def __init__(self):
            self.records: list[TaskRecord] = []

        def get_name(self) -> str:
            return "TokenShards"

        def write(self, blocks, ctx) -> list[TaskRecord]:
            import ray

            return write_task_blocks(blocks, tasks, ray.get(inputs_ref))

        def on_write_complete(self, write_result) -> None:
            found = {r.task: r for records in write_result.write_returns for r in records}
            self.records = [found[task.index] for task in tasks if task.index in found]

    return _ShardDatasink()
