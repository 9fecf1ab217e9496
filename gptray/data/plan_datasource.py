"""The tokenize job's Ray Data source and tokenize operator: the plan's read tasks as Ray Data read tasks.

Each Ray Data read task is one of the plan's (plan.py stays the one place that cuts the corpus):
it yields documents blocks (blocks.BlockBuilder.collect) of that task alone, each row carrying
the plan's task index, between a start and an end marker row. The markers let the shard sink
(shard_sink.py) write a task's shards from exactly its rows whatever Ray Data does to blocks
(split, merge, fuse), and refuse to write if a task's rows ever arrive split between write tasks.
A task whose shards from an earlier run are intact yields only its markers, the end one carrying
the kept record.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from gptray.data.blocks import BlockBuilder, BlockSettings, piece_documents, tokenize_documents
from gptray.data.read_tasks import ReadTask
from gptray.data.readers import problem
from gptray.data.shard_task import TaskInputs, intact_record

# Row kinds in the `mark` column.
DOCUMENT, START, END = 0, 1, 2


def read_task_blocks(task: ReadTask, inputs: TaskInputs, tables: list[pa.Table]) -> Iterator[pa.Table]:
    """One plan task's documents blocks between its markers (`tables`: the rows of its table pieces, in order)."""
    reader = inputs.readers_by_source[task.source]
    settings = inputs.settings
    # a tail-split source's task is all train or all val; otherwise the reader's split, or the hash's
    block = BlockBuilder(reader.weight, settings, reads_prompts=reader.prompt_field is not None,
                         split=task.split or reader.split)
    yield _marker(block, task.index, START)
    earlier = intact_record(task, inputs)
    if earlier is not None:
        yield _marker(block, task.index, END, pickle.dumps(earlier))
        return
    table_rows = iter(tables)
    for piece in task.pieces:
        table = next(table_rows) if piece.kind == "table" else None
        for doc in piece_documents(piece, reader, settings.max_document_bytes, table):
            block.add(doc)
            if block.full():
                yield _tagged(block.collect(), task.index, DOCUMENT)
    if block.rows:
        yield _tagged(block.collect(), task.index, DOCUMENT)
    yield _marker(block, task.index, END)


def _marker(block: BlockBuilder, task: int, mark: int, record: bytes | None = None) -> pa.Table:
    """A one-row block that is no document (skipped status, no text) with the documents blocks' columns."""
    block.add(problem("", "empty", ""))
    return _tagged(block.collect(), task, mark, record)


def _tagged(docs: pa.Table, task: int, mark: int, record: bytes | None = None) -> pa.Table:
    rows = docs.num_rows
    return (docs.append_column("task", pa.array(np.full(rows, task, dtype=np.int32)))
            .append_column("mark", pa.array(np.full(rows, mark, dtype=np.int8)))
            .append_column("record", pa.array([record] * rows, pa.large_binary())))


def tokenize_batch(batch: pa.Table, settings: BlockSettings) -> pa.Table:
    """The tokenize operator (map_batches): a documents block as a tokenized block, its tags kept."""
    return tokenize_documents(batch, settings)


def plan_datasource(tasks: list[ReadTask], inputs_ref, table_refs: dict[int, list]):
    """A Ray Data Datasource whose read tasks are `tasks` (`inputs_ref`: the job's TaskInputs in the object store;
    `table_refs`: each task's table-piece rows in the object store, by task index)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource
    from ray.data.datasource import ReadTask as RayReadTask

    class _PlanDatasource(Datasource):
        def get_name(self) -> str:
            return "TokenizePlan"

        def estimate_inmemory_data_size(self) -> int | None:
            return None  # documents blocks are never held together: each Ray task writes its own

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            return [RayReadTask(_reader(task, inputs_ref, table_refs.get(task.index, [])),
                                BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None))
                    for task in tasks]

    return _PlanDatasource()


def _reader(task: ReadTask, inputs_ref, table_refs: list):
    def read() -> Iterator[pa.Table]:
        import ray

        inputs = ray.get(inputs_ref)
        yield from read_task_blocks(task, inputs, ray.get(table_refs) if table_refs else [])

    return read
