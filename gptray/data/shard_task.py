"""One read task, run as its own Ray task: read its pieces, tokenize, split, write its own shards, return their record.

Token data never leaves the task: the driver gets back only a TaskRecord (paths, counts,
checksums, bad-input counts and examples). A task whose record from an earlier run still matches
its shards returns that record instead of doing the work again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gptray.core.errors import DataError
from gptray.core.storage import Storage
from gptray.data.blocks import KEPT_CODES, STATUS_CODES, BlockBuilder, BlockSettings, SourceReader, piece_documents
from gptray.data.manifest import SPLITS
from gptray.data.progress import TaskRecord, TaskStats
from gptray.data.read_tasks import ReadTask
from gptray.data.readers import STATUSES
from gptray.data.shards import DOC_ID_STRIDE, TokenShardWriter, shard_is_intact

OK_CODE = STATUS_CODES["ok"]
STRICT_EXAMPLES = 5


class TaskInputs:
    """What every read task gets besides its ReadTask: the sources' readers, settings, where shards go.

    A plain object, put in the object store once and shared by all tasks.
    """

    def __init__(self, readers_by_source: list[SourceReader], settings: BlockSettings, store: Storage,
                 shard_tokens: int, request_digest: str, strict: bool):
        self.readers_by_source = readers_by_source
        self.settings = settings
        self.store = store
        self.shard_tokens = shard_tokens
        self.request_digest = request_digest
        self.strict = strict


def run_read_task(task: ReadTask, inputs: TaskInputs, *tables: pa.Table) -> TaskRecord:
    """Do one read task (or keep its intact earlier output). `tables`: the rows of its table pieces, in order."""
    earlier = intact_record(task, inputs)
    if earlier is not None:
        return earlier
    reader = inputs.readers_by_source[task.source]
    settings = inputs.settings
    writer = _TaskWriter(task, inputs)
    block = BlockBuilder(reader.weight, settings, reads_prompts=reader.prompt_field is not None,
                         split=task.split or reader.split)
    table_rows = iter(tables)
    for piece in task.pieces:
        table = next(table_rows) if piece.kind == "table" else None
        for doc in piece_documents(piece, reader, settings.max_document_bytes, table):
            block.add(doc)
            if block.full() and not writer.add(block.build()):
                return writer.failure
    if block.rows and not writer.add(block.build()):
        return writer.failure
    record = writer.close()
    record.save(inputs.store)  # last: a record exists only once every shard it lists does
    return record


def intact_record(task: ReadTask, inputs: TaskInputs) -> TaskRecord | None:
    """The task's record from an earlier run of the same request, if every shard it lists is intact."""
    record = TaskRecord.load(inputs.store, task.index)
    if record is None or (record.task_digest, record.request_digest) != (task.digest, inputs.request_digest):
        return None
    if not all(shard_is_intact(inputs.store, shard) for split in SPLITS for shard in record.shards.get(split, [])):
        return None
    record.kept = True
    return record


class _TaskWriter:
    """Gives each written copy of a document its id and sends it to its split's shard writer."""

    def __init__(self, task: ReadTask, inputs: TaskInputs):
        self.task, self.strict = task, inputs.strict
        with_prompts = inputs.settings.prompt_column
        dtype = inputs.settings.tokenizer.dtype
        self.writers = {split: TokenShardWriter(inputs.store, split, dtype, inputs.shard_tokens, task.index,
                                                with_prompts) for split in SPLITS}
        self.stats = TaskStats()
        self.next_doc = task.index * DOC_ID_STRIDE
        self.failure = TaskRecord(task.index, task.source, task.digest, inputs.request_digest)

    def add(self, block: pa.Table) -> bool:
        """Write a block's documents; False when data.strict stops the task at bad input."""
        codes = block.column("status").to_numpy()
        problems = np.nonzero(codes != OK_CODE)[0]
        if len(problems) and self.strict:
            self.failure.strict_failure = _strict_message(block, problems)
            return False
        kept = np.isin(codes, KEPT_CODES)
        copies = np.where(kept, block.column("copies").to_numpy(), 0)
        tokens = block.column("tokens").combine_chunks()
        lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
        self._count(block, codes, kept, copies, lengths, problems)

        written = np.repeat(np.arange(len(codes)), copies)  # one entry per copy, in order
        doc_ids = self.next_doc + np.arange(len(written), dtype=np.int64)
        self.next_doc += len(written)
        if self.next_doc - self.task.index * DOC_ID_STRIDE >= DOC_ID_STRIDE:
            raise DataError(f"read task {self.task.index} ({self.task.description}) writes more than "
                            f"{DOC_ID_STRIDE:,} documents; lower data.shard_tokens")
        is_val = block.column("is_val").to_numpy(zero_copy_only=False)[written]
        prompts = block.column("prompt_tokens").to_numpy()[written] if "prompt_tokens" in block.column_names else None
        once = bool((copies == 1).all())
        for split, in_split in (("train", ~is_val), ("val", is_val)):
            if once and in_split.all():  # every record, once, all in this split: no copy of the tokens needed
                self.writers[split].add(doc_ids, tokens, prompts)
            elif in_split.any():
                self.writers[split].add(doc_ids[in_split], _select(tokens, written[in_split]),
                                        None if prompts is None else prompts[in_split])
        return True

    def _count(self, block: pa.Table, codes: np.ndarray, kept: np.ndarray, copies: np.ndarray,
               lengths: np.ndarray, problems: np.ndarray) -> None:
        stats = self.stats
        stats.documents_read += int(kept.sum())
        stats.tokens_read += int(lengths[kept].sum())
        stats.documents += int(copies.sum())
        stats.tokens += int((copies * lengths).sum())
        stats.bytes += int(block.column("bytes").to_numpy().sum())
        locs, errors = block.column("loc"), block.column("error")
        for row in problems:
            stats.problems.add(STATUSES[codes[row]], locs[row].as_py(), errors[row].as_py())

    def close(self) -> TaskRecord:
        record = self.failure
        record.shards = {split: writer.close() for split, writer in self.writers.items()}
        record.stats = self.stats
        return record


def _strict_message(block: pa.Table, problems: np.ndarray) -> str:
    codes, locs, errors = block.column("status").to_numpy(), block.column("loc"), block.column("error")
    shown = [f"{STATUSES[codes[r]]} at {locs[r].as_py()}" + (f" ({errors[r].as_py()})" if errors[r].as_py() else "")
             for r in problems[:STRICT_EXAMPLES]]
    return f"{len(problems)} problem record(s), first: {'; '.join(shown)}"


def _select(array: pa.Array, rows: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """`array.take(rows)`, but as zero-copy slices when the rows are most of the array in a few runs: the
    usual case, a block's training documents are the block minus a few validation documents."""
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    if 2 * len(rows) < len(array) or len(breaks) >= max(8, len(rows) // 16):  # few, scattered, or mixture copies
        return array.take(pa.array(rows))
    firsts, lasts = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]]) - 1
    return pa.chunked_array([array.slice(int(rows[a]), int(rows[b] - rows[a]) + 1) for a, b in zip(firsts, lasts)],
                            type=array.type)
