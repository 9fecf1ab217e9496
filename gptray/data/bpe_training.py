"""`gptray tokenizer train`: a byte-level BPE learned from data.sources with Hugging Face `tokenizers`.

Documents come through the tokenize job's own planning and readers (plan.py, blocks.piece_documents),
so what the job would skip (unreadable, undecodable, oversized, empty input) is skipped and counted
the same way here. Only train-split documents are read (the same content hash as the job's split),
so validation text is never seen by the tokenizer its bits per byte are measured with. The sample is
bounded (tokenizer.max_chars), read round-robin across the read tasks of every source so a mixture's
sources all contribute; BPE training itself is one Rust process, as in nanochat and GPT-2.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gptray.config import ExperimentConfig
from gptray.config.schema import tokenizer_kind
from gptray.core.errors import ConfigError, DataError
from gptray.core.paths import is_uri
from gptray.data.blocks import piece_documents
from gptray.data.hf_tokenizer import END_OF_TEXT, HuggingFaceTokenizer
from gptray.data.manifest import ProblemCounts
from gptray.data.plan import plan_tasks
from gptray.data.readers import KEPT_STATUSES
from gptray.data.sources import resolve_sources
from gptray.data.split import is_validation
from gptray.data.tokenize_job import source_readers
from gptray.data.tokenizer_loading import TOKENIZER_FILE, tokenizer_file

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 10.0


@dataclass
class TrainedTokenizer:
    path: Path  # the tokenizer.json written
    vocab_size: int
    documents: int  # documents it learned from
    chars: int
    seconds: float
    problems: ProblemCounts = field(default_factory=ProblemCounts)
    truncated: bool = False  # the sample stopped at tokenizer.max_chars before the sources ended


def train_tokenizer(config: ExperimentConfig, out: str | Path, overwrite: bool = False) -> TrainedTokenizer:
    """Learn a byte-level BPE of tokenizer.vocab_size tokens (<|endoftext|> special) and write
    `out`/tokenizer.json, which data.tokenizer=`out` then names."""
    started = time.monotonic()
    out = Path(out)
    target = out / TOKENIZER_FILE
    if target.exists() and not overwrite:
        raise ConfigError("--out", f"{target} already exists (pass --overwrite to replace it)")
    settings = config.tokenizer
    sample = _Sample(config)
    tokenizer = Tokenizer(models.BPE())
    # GPT-2's scheme: split on its regex, map bytes to printable characters, so any text encodes
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=settings.vocab_size, min_frequency=settings.min_frequency,
                                  special_tokens=[END_OF_TEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=sys.stderr.isatty())  # its bar, where it can redraw
    log.info("learning a byte-level BPE of %s tokens from %s (up to %s characters)", f"{settings.vocab_size:,}",
             ", ".join(s.describe() for s in config.data.sources), f"{settings.max_chars:,}")
    tokenizer.train_from_iterator(sample.texts(), trainer)
    if sample.documents == 0:
        raise DataError(f"no train-split documents to learn a tokenizer from in "
                        f"{', '.join(s.describe() for s in config.data.sources)}; problems: "
                        f"{sample.problems.counts or 'none'}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".json.tmp")
    tokenizer.save(str(tmp))
    tmp.replace(target)
    trained = HuggingFaceTokenizer.from_file(str(target))  # what data.tokenizer will load, checked now
    if trained.vocab_size < settings.vocab_size:
        log.warning("the sample held merges for only %s tokens, fewer than tokenizer.vocab_size %s: a larger "
                    "corpus (or a lower tokenizer.min_frequency) gives more", f"{trained.vocab_size:,}",
                    f"{settings.vocab_size:,}")
    return TrainedTokenizer(target, trained.vocab_size, sample.documents, sample.chars, time.monotonic() - started,
                            sample.problems, sample.truncated)


def learn_missing_tokenizer(config: ExperimentConfig) -> TrainedTokenizer | None:
    """Learn the tokenizer data.tokenizer names when that is a local tokenizer.json (or its directory) that
    does not exist yet, from data.sources with the `tokenizer` settings, as `gptray tokenizer train` would;
    None when there is nothing to learn: a tiktoken or Hub name, a file that exists, or an object-store
    URI (read, never learned here: loading it names one that is missing). A fine-tune's missing tokenizer is
    a ConfigError: it must be its base's."""
    spec = config.data.tokenizer
    if tokenizer_kind(spec) != "file" or is_uri(spec):
        return None
    target = Path(tokenizer_file(spec))
    if target.is_file():
        return None
    if config.train.init_from:  # a fine-tune's ids are its base's: learning from its data would give others
        raise ConfigError("data.tokenizer", f"{spec} does not exist, and a fine-tune (train.init_from="
                                            f"{config.train.init_from}) takes its base's tokenizer, never one "
                                            "learned from its own data: set data.tokenizer to the base run's "
                                            "tokenizer.json (e.g. runs/quickstart/tokenizer.json), or gpt2 for "
                                            "a GPT-2 base")
    if target.name != TOKENIZER_FILE:
        raise ConfigError("data.tokenizer", f"{spec} does not exist; a tokenizer gptray learns is named "
                                            f"{TOKENIZER_FILE} (or give its directory)")
    log.info("data.tokenizer %s does not exist yet: learning it from the corpus", spec)
    return train_tokenizer(config, target.parent)


class _Sample:
    """The documents the tokenizer learns from, as an iterator of texts, with counts and progress."""

    def __init__(self, config: ExperimentConfig):
        self.config = config
        self.documents = self.chars = 0
        self.problems = ProblemCounts()
        self.truncated = False

    def texts(self) -> Iterator[str]:
        data, settings = self.config.data, self.config.tokenizer
        for i, source in enumerate(data.sources):
            if source.format:
                raise ConfigError(f"data.sources[{i}].format", "a tokenizer learns from text, and token files are "
                                  "tokenized already: set data.tokenizer to the one that made them")
        sources = resolve_sources(data.sources)
        readers = source_readers(sources)
        tasks = plan_tasks(sources, data.read_chunk_bytes, data.shard_tokens, data.split, data.val_fraction)
        last_report = time.monotonic()
        for task in _round_robin([t for t in tasks if t.split != "val"]):  # a held-out tail teaches nothing
            reader, table = readers[task.source], sources[task.source].table
            for piece in task.pieces:
                rows = table.slice(piece.start, piece.end - piece.start) if piece.kind == "table" else None
                for doc in piece_documents(piece, reader, data.max_document_bytes, rows):
                    if doc.status != "ok":  # skipped, or kept repaired (undecodable bytes): counted as the job does
                        self.problems.add(doc.status, doc.loc, doc.error)
                    if doc.status not in KEPT_STATUSES:
                        continue
                    raw = doc.raw if doc.raw is not None else doc.text.encode("utf-8", "surrogatepass")
                    text = doc.text
                    if reader.prompt_field is not None:  # split by the whole record, as the tokenize job does
                        raw = (doc.prompt or "").encode("utf-8") + b"\0" + raw
                        text = (doc.prompt or "") + text
                    if not task.split and is_validation(raw, data.val_fraction, data.split_seed):
                        continue
                    text = text[:settings.max_document_chars]
                    self.documents += 1
                    self.chars += len(text)
                    yield text
                    if self.chars >= settings.max_chars:
                        self.truncated = True
                        log.info("read %s documents, %s characters: tokenizer.max_chars reached",
                                 f"{self.documents:,}", f"{self.chars:,}")
                        return
                    if time.monotonic() - last_report > PROGRESS_SECONDS:
                        last_report = time.monotonic()
                        log.info("read %s documents, %s characters (%.0f%% of tokenizer.max_chars)",
                                 f"{self.documents:,}", f"{self.chars:,}", 100 * self.chars / settings.max_chars)
        log.info("read %s documents, %s characters: every source", f"{self.documents:,}", f"{self.chars:,}")


def _round_robin(tasks: list) -> Iterator:
    """The read tasks taking turns between sources: each source's first task, then each one's second…"""
    by_source: dict[int, list] = {}
    for task in tasks:
        by_source.setdefault(task.source, []).append(task)
    queues = list(by_source.values())
    for turn in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if turn < len(queue):
                yield queue[turn]
