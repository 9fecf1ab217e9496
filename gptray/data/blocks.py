"""Read pieces into tokenized Arrow blocks: reading, decoding, the split decision, mixture copies, tokenization.

A read task (shard_task.py) turns its pieces into blocks and writes them into its shards.
One block's columns (one row per document record, problems included):
  status (int8, index into readers.STATUSES), loc and error (strings, empty for clean
  documents), is_val (bool), copies (int32), bytes (int64), tokens (list of token ids,
  <|endoftext|> last; empty for skipped records).
Blocks of prompt/completion sources also carry prompt_tokens (int32): how many of a document's
first tokens are its prompt, which training computes no loss on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from gptray.data import readers, token_files
from gptray.data.read_tasks import ReadPiece
from gptray.data.readers import KEPT_STATUSES, STATUSES, Doc, problem
from gptray.data.split import copies, is_validation
from gptray.data.token_files import TokenLayout

STATUS_CODES = {status: code for code, status in enumerate(STATUSES)}
KEPT_CODES = np.array([STATUS_CODES[s] for s in KEPT_STATUSES], dtype=np.int8)
BLOCK_TEXT_BYTES = 8 << 20  # a block is sent on once it holds this much text (or batch_documents documents)
STREAM_BATCH_ROWS = 1024


@dataclass
class SourceReader:
    """What a Ray task needs to read one source's pieces (pickled to every task)."""

    kind: str
    description: str
    fs: pafs.FileSystem | None = None
    text_field: str = "text"
    weight: float = 1.0
    join_rows: str | None = None
    stream: Any = None  # stream: the datasets.IterableDataset
    prompt_field: str | None = None  # JSON prompt/completion sources: the prompt's field
    split: str | None = None  # every document to this split ("train", "val"); None: by content hash
    token_format: str | None = None  # token files: "nanogpt" or "llmc"
    token_layouts: dict[str, TokenLayout] | None = None  # token files: each file's checked layout, by path
    eot_token: int = 0  # token files: where documents end
    vocab_size: int = 0  # token files: larger ids are refused


@dataclass
class BlockSettings:
    tokenizer: Any  # gptray.data.tiktoken_tokenizer.load_tokenizer's: tiktoken or Hugging Face
    val_fraction: float
    split_seed: int
    max_document_bytes: int
    batch_documents: int
    prompt_column: bool = False  # the dataset has prompt/completion sources: every block carries prompt_tokens


def piece_documents(piece: ReadPiece, reader: SourceReader, max_bytes: int, table: pa.Table | None = None
                    ) -> Iterator[Doc]:
    """The document records of one read piece, in corpus order (`table`: a table piece's rows)."""
    if piece.kind == "range":
        yield from readers.range_documents(reader.fs, piece.path, piece.name, piece.fmt, piece.unit, piece.start,
                                           piece.end, max_bytes, reader.text_field, reader.prompt_field)
    elif piece.kind == "file":
        yield from readers.file_documents(reader.fs, piece.path, piece.name, piece.fmt, piece.unit, max_bytes,
                                          reader.text_field, reader.prompt_field)
    elif piece.kind == "parquet":
        yield from readers.parquet_documents(reader.fs, piece.path, piece.name, range(piece.start, piece.end),
                                             piece.first_row, reader.text_field, max_bytes)
    elif piece.kind == "table":
        if reader.join_rows:
            yield from readers.joined_row_documents(table, reader.text_field, piece.name, piece.start, max_bytes)
        else:
            yield from readers.table_documents(table, reader.text_field, piece.name, piece.start, max_bytes)
    elif piece.kind == "stream":
        yield from _stream_documents(piece, reader, max_bytes)
    elif piece.kind == "tokens":
        layout = reader.token_layouts[piece.path]
        for ids in token_files.token_documents(reader.fs, piece.path, piece.name, layout, piece.start, piece.end,
                                               reader.eot_token, reader.vocab_size):
            yield Doc("", None, "ok", "", "", len(ids) * layout.itemsize, tokens=ids)
    else:
        yield problem(piece.name, "unreadable", piece.error)


def _stream_documents(piece: ReadPiece, reader: SourceReader, max_bytes: int) -> Iterator[Doc]:
    name = f"{piece.name}:shard {piece.start}"
    shard = reader.stream.shard(num_shards=reader.stream.num_shards, index=piece.start, contiguous=True)
    row = 0
    try:
        for table in shard.with_format("arrow").iter(batch_size=STREAM_BATCH_ROWS):
            yield from readers.table_documents(table, reader.text_field, name, row, max_bytes)
            row += table.num_rows
    except Exception as exc:  # network, decompression or parsing errors of one shard: report, go on
        yield problem(f"{name}:row {row + 1}", "unreadable", f"{type(exc).__name__}: {exc}")


class BlockBuilder:
    """Collects document records of one source and turns them into a tokenized Arrow block."""

    def __init__(self, weight: float, settings: BlockSettings, reads_prompts: bool = False, split: str | None = None):
        self.weight, self.settings = weight, settings
        self.reads_prompts = reads_prompts
        self.split = split
        self._reset()

    def _reset(self) -> None:
        self.rows = 0
        self.text_bytes = 0
        self.codes: list[int] = []
        self.locs: list[str] = []
        self.errors: list[str] = []
        self.nbytes: list[int] = []
        self.is_val: list[bool] = []
        self.copies: list[int] = []
        self.texts: list[str] = []
        self.token_docs: list[np.ndarray] = []  # token files' documents (a source's are all text or all ids)
        self.prompts: list[str] = []

    def add(self, doc: Doc) -> None:
        self.rows += 1
        self.codes.append(STATUS_CODES[doc.status])
        self.locs.append(doc.loc)
        self.errors.append(doc.error)
        self.nbytes.append(doc.nbytes)
        if doc.tokens is not None:  # split and copies by the ids, whatever width the file stored them in
            ids = np.asarray(doc.tokens, dtype="<u4")
            self._keep(ids.tobytes())
            self.token_docs.append(ids)
            self.texts.append(None)
            self.prompts.append(None)
        elif doc.status in KEPT_STATUSES:
            text = doc.raw if doc.raw is not None else doc.text.encode("utf-8", "surrogatepass")
            data = text
            prompt = None
            if self.reads_prompts:  # the split and the copies follow the whole record
                prompt = (doc.prompt or "").encode("utf-8", "surrogatepass")
                data = prompt + b"\0" + text
            self._keep(data)
            self.texts.append(text)
            self.prompts.append(prompt)
            self.token_docs.append(None)
        else:
            self.is_val.append(False)
            self.copies.append(0)
            self.texts.append(None)
            self.prompts.append(None)
            self.token_docs.append(None)

    def _keep(self, data: bytes) -> None:
        """A kept document's split (fixed by its source, else by its content) and copies."""
        s = self.settings
        split = self.split or ("val" if is_validation(data, s.val_fraction, s.split_seed) else "train")
        self.is_val.append(split == "val")
        self.copies.append(copies(data, self.weight, s.split_seed))
        self.text_bytes += len(data)

    def full(self) -> bool:
        return self.rows >= self.settings.batch_documents or self.text_bytes >= BLOCK_TEXT_BYTES

    def collect(self) -> pa.Table:
        """The collected records as a documents block (DOCUMENT_COLUMNS; nothing tokenized yet), and start anew."""
        ids = [d for d in self.token_docs if d is not None]
        lengths = np.array([0 if d is None else len(d) for d in self.token_docs], dtype=np.int64)
        offsets = np.zeros(self.rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(ids) if ids else np.zeros(0, dtype="<u4")
        table = pa.table({
            "status": pa.array(np.array(self.codes, dtype=np.int8)),
            "loc": pa.array(self.locs, pa.string()),
            "error": pa.array(self.errors, pa.string()),
            "is_val": pa.array(self.is_val, pa.bool_()),
            "copies": pa.array(np.array(self.copies, dtype=np.int32)),
            "bytes": pa.array(np.array(self.nbytes, dtype=np.int64)),
            "text": pa.array(self.texts, pa.large_binary()),
            "prompt": pa.array(self.prompts, pa.large_binary()),
            "ids": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.uint32())),
        })
        self._reset()
        return table

    def build(self) -> pa.Table:
        """The collected records tokenized (see the module docstring), and start anew."""
        return tokenize_documents(self.collect(), self.settings)


def tokenize_documents(docs: pa.Table, settings: BlockSettings) -> pa.Table:
    """A documents block (BlockBuilder.collect's) as a tokenized block: `text`, `prompt` and `ids` become
    `tokens` (and `prompt_tokens` when settings.prompt_column). Other columns pass through unchanged."""
    tokenizer = settings.tokenizer
    rows = docs.num_rows
    kept = np.isin(docs.column("status").to_numpy(), KEPT_CODES)
    kept_rows = np.nonzero(kept)[0]
    texts = docs.column("text").to_pylist()
    prompts = docs.column("prompt").to_pylist()
    is_text = np.array([texts[r] is not None for r in kept_rows], dtype=bool)
    values, doc_offsets = tokenizer.encode_concatenated(
        [texts[r].decode("utf-8", "surrogatepass") for r in kept_rows[is_text]])
    if not is_text.all():  # token files' documents (Ray Data may put several read tasks' rows in one block)
        id_lists = docs.column("ids").combine_chunks()
        flat, bounds = id_lists.values.to_numpy(zero_copy_only=False), id_lists.offsets.to_numpy()
        ids, id_offsets = _concatenate_ids([flat[bounds[r]:bounds[r + 1]] for r in kept_rows[~is_text]], tokenizer)
        values, doc_offsets = _interleave(is_text, (values, doc_offsets), (ids, id_offsets))
    prompt_lengths = np.zeros(len(kept_rows), dtype=np.int32)
    with_prompt = np.array([prompts[r] is not None for r in kept_rows], dtype=bool)
    if with_prompt.any():  # only prompt/completion sources' rows carry a prompt
        values, doc_offsets, prompt_lengths = _prepend_prompts(
            tokenizer, [(prompts[r] or b"").decode("utf-8", "surrogatepass") for r in kept_rows], values,
            doc_offsets)
    lengths = np.zeros(rows, dtype=np.int64)
    lengths[kept] = np.diff(doc_offsets)
    offsets = np.zeros(rows + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    table = docs.drop_columns(["text", "prompt", "ids"])
    table = table.append_column("tokens", pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)))
    if settings.prompt_column:  # uniform blocks: a mixture's other sources have prompts of 0 tokens
        column = np.zeros(rows, dtype=np.int32)
        column[kept] = prompt_lengths
        table = table.append_column("prompt_tokens", pa.array(column))
    return table


def _interleave(first: np.ndarray, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Two concatenated token lists merged back into document order (`first`: the documents `a` holds)."""
    parts, ia, ib = [], 0, 0
    for from_a in first:
        values, offsets = a if from_a else b
        i = ia if from_a else ib
        parts.append(values[offsets[i]:offsets[i + 1]])
        ia, ib = (ia + 1, ib) if from_a else (ia, ib + 1)
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return (np.concatenate(parts) if parts else a[0][:0]), offsets


def _concatenate_ids(docs: list[np.ndarray], tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Token files' documents as `encode_concatenated` gives text's: each one's ids, then <|endoftext|>."""
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(d) + 1 for d in docs], out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=tokenizer.dtype)
    for doc, start in zip(docs, offsets[:-1]):
        values[start:start + len(doc)] = doc
    values[offsets[1:] - 1] = tokenizer.eot_token
    return values, offsets


def _prepend_prompts(tokenizer, prompts: list[str], values: np.ndarray, offsets: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each document's prompt tokens before its completion tokens (prompt and completion are encoded
    separately, so the boundary is exact); also returns each document's prompt length."""
    prompt_parts = [tokenizer.encode(p) for p in prompts]
    prompt_lengths = np.fromiter((len(p) for p in prompt_parts), dtype=np.int64, count=len(prompt_parts))
    pieces = []
    for i, prompt in enumerate(prompt_parts):
        pieces.append(np.asarray(prompt, dtype=values.dtype))
        pieces.append(values[offsets[i]:offsets[i + 1]])
    combined = np.concatenate(pieces) if pieces else values
    new_offsets = offsets + np.concatenate([[0], np.cumsum(prompt_lengths)])
    return combined, new_offsets, prompt_lengths.astype(np.int32)
