"""The tokenize job: corpora → Ray Data (read, tokenize, split, weight) → Parquet token shards + manifest.json.

Read tasks (see plan.py) run in parallel Ray tasks that read, tokenize and decide each
document's split and copies. One ordered Ray Data pipeline carries every source, so the driver
receives blocks in corpus order and writes them into shards: the concatenated shards equal
tiktoken's encoding of the documents exactly, whatever the cluster size. The driver's work per
block is a few vectorized Arrow operations, so the tasks, not the driver, set the pace.

A rerun of the same request reuses verified shards; an interrupted or damaged one resumes
(progress.py); a different request is refused unless `overwrite`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gptray.base.errors import DataError
from gptray.base.runtime import init_ray
from gptray.base.storage import Storage
from gptray.config import ExperimentConfig
from gptray.data.blocks import KEPT_CODES, STATUS_CODES, BlockSettings, SourceReader, TaskInputs, tokenize_tasks
from gptray.data.manifest import MANIFEST_NAME, SPLITS, Manifest, ProblemCounts, SourceInfo, SplitInfo
from gptray.data.plan import plan_digest, plan_tasks
from gptray.data.progress import PROGRESS_NAME, Progress, ResumePoint, TaskStats, resume_point
from gptray.data.readers import STATUSES
from gptray.data.scheduling import quick_scheduling
from gptray.data.shards import SEGMENT_PREFIX, SHARD_PREFIX, TokenShardWriter, shard_is_intact
from gptray.data.sources import ResolvedSource, resolve_sources
from gptray.data.split import MIXTURE_METHOD, SPLIT_METHOD
from gptray.data.tasks import ReadTask
from gptray.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 5.0
OK_CODE = STATUS_CODES["ok"]
STRICT_EXAMPLES = 5


@dataclass
class TokenizeResult:
    manifest: Manifest
    dataset_dir: str
    reused: bool  # an identical earlier job's output was kept as it was
    seconds: float
    resumed_from_task: int | None = None  # the read task an interrupted or damaged job continued at
    tasks: int = 0  # read tasks in the plan


def tokenize_request(config: ExperimentConfig, sources: list[ResolvedSource], tokenizer: Tokenizer) -> dict:
    """Everything that decides a dataset's content; an equal request reuses the existing shards."""
    data = config.data
    return {
        "sources": [dict(dataclasses.asdict(s.config), text_unit=s.text_unit, text_field=s.text_field,
                         identity=s.identity) for s in sources],
        "tokenizer": dict(tokenizer.describe(), digest=tokenizer.digest),
        "val_fraction": data.val_fraction,
        "split_seed": data.split_seed,
        "shard_tokens": data.shard_tokens,
        "max_document_bytes": data.max_document_bytes,
    }


def tokenize_corpus(config: ExperimentConfig, overwrite: bool = False, strict: bool | None = None) -> TokenizeResult:
    """Run the tokenize job for `config.data`; returns the manifest it wrote (or found).

    `strict` (default: data.strict) turns any bad input into a DataError that stops the job.
    """
    started = time.monotonic()
    data = config.data
    tokenizer = Tokenizer(data.tokenizer)
    sources = resolve_sources(data.sources)
    store = Storage(data.dataset_dir)
    request = tokenize_request(config, sources, tokenizer)
    digest = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()
    tasks = plan_tasks(sources, data.read_chunk_bytes)
    plan_id = plan_digest(tasks)

    point = _starting_point(store, digest, plan_id, overwrite)
    if isinstance(point, Manifest):
        return TokenizeResult(point, store.uri(), True, time.monotonic() - started, tasks=len(tasks))
    resumed_from = None if point is None else point.task
    if point is None:
        _remove_outputs(store)
        point = ResumePoint.start()
    else:
        store.delete(MANIFEST_NAME)  # the old manifest describes shards that are about to be rewritten
        log.info("resuming at read task %d of %d (document %s); keeping %s", point.task + 1, len(tasks),
                 f"{point.next_doc:,}", ", ".join(f"{len(v)} {k} shard(s)" for k, v in point.shards.items()))
    job = _Job(store, sources, tokenizer, config, strict if strict is not None else data.strict, point,
               Progress(digest, plan_id, shards=point.shards, segments=point.segments, next_doc=point.next_doc,
                        tasks=point.tasks))
    job.run(tasks)
    manifest = job.finish(digest)
    return TokenizeResult(manifest, store.uri(), False, time.monotonic() - started, resumed_from, len(tasks))


def _starting_point(store: Storage, digest: str, plan_id: str, overwrite: bool) -> Manifest | ResumePoint | None:
    """The existing manifest to reuse, a point to resume from, or None to start from scratch."""
    existing = _load_manifest(store)
    progress = Progress.load(store)
    same_progress = progress is not None and progress.request_digest == digest
    if existing is not None and existing.split.get("request_digest") == digest:
        intact = _intact_shards({s: existing.split_info(s).shards for s in SPLITS}, store)
        if all(intact[s] == len(existing.split_info(s).shards) for s in SPLITS):
            log.info("%s already holds this exact dataset (%s tokens, shards verified); nothing to do",
                     store.uri(), f"{existing.tokens:,}")
            return existing
        damaged = sum(len(existing.split_info(s).shards) - intact[s] for s in SPLITS)
        log.warning("%d shard(s) of %s are missing or do not match their checksums: rebuilding them",
                    damaged, store.uri())
    elif existing is not None or (progress is not None and not same_progress):
        if not overwrite:
            state = "a different token dataset" if existing is not None else "an unfinished different token job"
            raise DataError(
                f"{store.uri()} already holds {state} (other sources, files, tokenizer or settings). "
                "Pass --overwrite to replace it, or choose another data.dataset_dir."
            )
        log.info("replacing the token dataset in %s (--overwrite)", store.uri())
        return None
    if not same_progress:
        return None
    if progress.plan_digest != plan_id:
        log.warning("the read plan changed since the interrupted run (data.read_chunk_bytes or files): starting over")
        return None
    intact = _intact_shards(progress.shards, store)
    intact_segments = _intact_shards(progress.segments, store)
    return resume_point(progress, intact, intact_segments)


def _load_manifest(store: Storage) -> Manifest | None:
    if not store.exists(MANIFEST_NAME):
        return None
    try:
        return Manifest.load(store)
    except DataError as exc:
        log.warning("ignoring unreadable %s: %s", store.uri(MANIFEST_NAME), exc)
        return None


def _intact_shards(shards: dict[str, list], store: Storage) -> dict[str, int]:
    """Per split, how many leading shards exist with their recorded checksum."""
    total = sum(len(v) for v in shards.values())
    if total:
        log.info("verifying %d existing file(s) in %s", total, store.uri())
    intact = {}
    for split in SPLITS:
        listed = shards.get(split, [])
        intact[split] = next((i for i, shard in enumerate(listed) if not shard_is_intact(store, shard)), len(listed))
    return intact


def _remove_outputs(store: Storage) -> None:
    """Clear a previous dataset's files (only ours: manifest, progress and shard files)."""
    store.delete(MANIFEST_NAME)
    store.delete(PROGRESS_NAME)
    for split in SPLITS:
        for name in store.list(split):
            if name.startswith((SHARD_PREFIX, SEGMENT_PREFIX)):
                store.delete(f"{split}/{name}")


class _Job:
    """One run of the pipeline: routes tokenized blocks to the split writers and keeps progress."""

    def __init__(self, store: Storage, sources: list[ResolvedSource], tokenizer: Tokenizer,
                 config: ExperimentConfig, strict: bool, point: ResumePoint, progress: Progress):
        data = config.data
        self.store, self.sources, self.tokenizer, self.config, self.strict = store, sources, tokenizer, config, strict
        self.progress = progress
        self.with_prompts = any(source.prompt_field for source in sources)
        self.writers = {split: TokenShardWriter(store, split, tokenizer.dtype, data.shard_tokens,
                                                shards=point.shards[split], segments=point.segments[split],
                                                with_prompts=self.with_prompts)
                        for split in SPLITS}
        self.covered = dict(point.covered)  # per split: documents up to this id are already written
        self.next_doc = point.next_doc
        self.first_task = point.task
        self.task_sources: list[int] = []
        self.stats: dict[int, TaskStats] = {t.task: t for t in point.tasks}
        self.meter = _Meter()

    def run(self, tasks: list[ReadTask]) -> None:
        import ray

        todo = list(enumerate(tasks))[self.first_task:]
        self.task_sources = [task.source for task in tasks]
        self.meter.total_tasks = len(tasks)
        self.progress.save(self.store)  # claims the directory for this request before any shard is written
        if not todo:
            return
        init_ray(self.config.ray.address, self.config.ray.num_cpus)
        readers = self._readers(todo)
        data = self.config.data
        settings = BlockSettings(self.tokenizer, data.val_fraction, data.split_seed, data.max_document_bytes,
                                 data.batch_documents, prompt_column=self.with_prompts)
        context = ray.data.DataContext.get_current()
        saved = (context.execution_options.preserve_order, context.enable_progress_bars)
        context.execution_options.preserve_order = True  # shards must follow corpus order exactly
        context.enable_progress_bars = False  # the job logs its own progress (documents, tokens, MB/s)
        log.info("tokenizing %d read task(s) from %d source(s) with Ray Data", len(todo), len(self.sources))
        try:
            rows = [dict(task.to_row(), index=index) for index, task in todo]
            dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                tokenize_tasks, batch_size=1, batch_format="pyarrow",
                fn_kwargs={"inputs": TaskInputs(readers, settings)},
            )
            self.meter.restart()  # rates count from here: Ray start-up is not tokenizing
            with quick_scheduling():  # read tasks are ~1 s each: Ray Data's 0.1 s polling idled 10-15% of CPUs
                for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    self._route(batch)
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved

    def _readers(self, todo: list[tuple[int, ReadTask]]) -> list[SourceReader]:
        import ray

        readers = []
        for source in self.sources:
            reader = SourceReader(source.kind, source.description, source.fs, source.text_field, source.weight,
                                  source.join_rows, stream=source.stream, prompt_field=source.prompt_field)
            if source.kind == "hf_table":
                # Each table task's rows go to the object store once; its Ray task fetches only them.
                reader.table_slices = {task.start: ray.put(source.table.slice(task.start, task.end - task.start))
                                       for _, task in todo if task.source == source.index}
            readers.append(reader)
        return readers

    def _route(self, batch: pa.Table) -> None:
        """Give each written copy of a document its global id and send it to its split's writer."""
        codes = batch.column("status").to_numpy()
        problems = np.nonzero(codes != OK_CODE)[0]
        if len(problems) and self.strict:
            self._fail_strict(batch, problems)
        task_ids = batch.column("task").to_numpy()
        kept = np.isin(codes, KEPT_CODES)
        copies = np.where(kept, batch.column("copies").to_numpy(), 0)
        tokens = batch.column("tokens").combine_chunks()
        lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
        nbytes = batch.column("bytes").to_numpy()
        first_ids = self.next_doc + np.concatenate([[0], np.cumsum(copies)[:-1]]) if len(copies) else copies

        for task in np.unique(task_ids):
            rows = task_ids == task
            first = int(np.argmax(rows))
            stats = self.stats.get(int(task))
            if stats is None:
                stats = TaskStats(int(task), self.task_sources[task], int(first_ids[first]))
                self.stats[int(task)] = stats
            stats.documents_read += int(kept[rows].sum())
            stats.tokens_read += int(lengths[rows & kept].sum())
            stats.documents += int(copies[rows].sum())
            stats.tokens += int((copies[rows] * lengths[rows]).sum())
            stats.bytes += int(nbytes[rows].sum())
            for row in problems[rows[problems]]:
                stats.problems.add(STATUSES[codes[row]], batch.column("loc")[row].as_py(),
                                   batch.column("error")[row].as_py())

        written = np.repeat(np.arange(len(codes)), copies)  # one entry per copy, in order
        doc_ids = self.next_doc + np.arange(len(written), dtype=np.int64)
        is_val = batch.column("is_val").to_numpy(zero_copy_only=False)[written]
        once = bool((copies == 1).all())
        prompts = None
        if "prompt_tokens" in batch.column_names:
            prompts = batch.column("prompt_tokens").to_numpy()[written]
        new_shards = 0
        for split, in_split in (("train", ~is_val), ("val", is_val)):
            mask = in_split & (doc_ids > self.covered[split])  # a resumed run skips what is written
            if once and mask.all():  # every record, once, all in this split: no copy of the tokens needed
                new_shards += self.writers[split].add(doc_ids, tokens, prompts)
            elif mask.any():
                new_shards += self.writers[split].add(doc_ids[mask], _select(tokens, written[mask]),
                                                      None if prompts is None else prompts[mask])
        self.next_doc += len(written)
        self.meter.update(int(kept.sum()), int(lengths[kept].sum()), int(nbytes.sum()), int(task_ids[-1]),
                          self.sources[self.stats[int(task_ids[-1])].source].description)
        if new_shards:
            self._save_progress()

    def _save_progress(self, complete: bool = False) -> None:
        """Save the documents waiting for their split's next shard, then the progress that lists them."""
        for writer in self.writers.values():
            writer.save_pending()
        self.progress.shards = {split: list(w.shards) for split, w in self.writers.items()}
        self.progress.segments = {split: list(w.segments) for split, w in self.writers.items()}
        self.progress.next_doc = self.next_doc
        self.progress.tasks = [self.stats[t] for t in sorted(self.stats)]
        self.progress.complete = complete
        self.progress.save(self.store)
        for writer in self.writers.values():  # only now that no saved progress refers to them
            writer.delete_obsolete_segments()

    def _fail_strict(self, batch: pa.Table, problems: np.ndarray) -> None:
        codes = batch.column("status").to_numpy()
        shown = [f"{STATUSES[codes[r]]} at {batch.column('loc')[r].as_py()}"
                 + (f" ({batch.column('error')[r].as_py()})" if batch.column("error")[r].as_py() else "")
                 for r in problems[:STRICT_EXAMPLES]]
        raise DataError(f"bad input (data.strict / --strict): {len(problems)} problem record(s) in this block; "
                        f"first: {'; '.join(shown)}. Fix the input, or run without --strict to skip and count them.")

    def finish(self, digest: str) -> Manifest:
        """Close the writers, write the manifest, and mark the progress complete."""
        for writer in self.writers.values():
            writer.close()
        self._save_progress(complete=True)
        for split in SPLITS:  # segments a crash left behind after they were no longer listed
            for name in self.store.list(split):
                if name.startswith(SEGMENT_PREFIX):
                    self.store.delete(f"{split}/{name}")
        splits = {}
        for split, writer in self.writers.items():
            shards = writer.shards
            splits[split] = SplitInfo(sum(s.documents for s in shards), sum(s.tokens for s in shards), shards)
        source_infos = self._source_infos()
        total_tokens = sum(s.tokens for s in splits.values())
        problems = ProblemCounts()
        for info in source_infos:
            info.share = info.tokens / total_tokens if total_tokens else 0.0
            problems.merge(info.problems)
        data = self.config.data
        manifest = Manifest(
            tokenizer=self.tokenizer.describe(),
            split={"val_fraction": data.val_fraction, "seed": data.split_seed, "method": SPLIT_METHOD,
                   "request_digest": digest},
            sources=source_infos,
            splits=splits,
            documents=sum(s.documents for s in splits.values()),
            tokens=total_tokens,
            problems=problems,
            mixture={"method": MIXTURE_METHOD, "weights": [s.weight for s in self.sources]},
            prompt_masked=self.with_prompts,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if manifest.documents == 0:
            raise DataError(f"no documents to tokenize in {', '.join(s.description for s in self.sources)}; "
                            f"problems found: {problems.counts or 'none'}")
        manifest.fingerprint = manifest.compute_fingerprint()
        manifest.save(self.store)
        self.meter.finish()
        log.info("wrote %s: %s documents, %s tokens (train %s, val %s) in %d shard(s)", self.store.uri(MANIFEST_NAME),
                 f"{manifest.documents:,}", f"{manifest.tokens:,}", f"{splits['train'].tokens:,}",
                 f"{splits['val'].tokens:,}", sum(len(s.shards) for s in splits.values()))
        if len(source_infos) > 1:
            log.info("mixture: %s", ", ".join(f"{s.description} {s.share:.1%} (weight {s.weight:g})"
                                              for s in source_infos))
        if problems.total():
            log.warning("skipped or repaired input: %s (first locations are in the manifest)", problems.counts)
        return manifest

    def _source_infos(self) -> list[SourceInfo]:
        infos = [SourceInfo(s.description, s.kind, s.text_unit if s.kind == "files" else "row",
                            files=s.file_names, skipped_files=s.skipped_files, weight=s.weight) for s in self.sources]
        for stats in sorted(self.stats.values(), key=lambda t: t.task):
            info = infos[stats.source]
            info.documents_read += stats.documents_read
            info.tokens_read += stats.tokens_read
            info.bytes_read += stats.bytes
            info.documents += stats.documents
            info.tokens += stats.tokens
            info.problems.merge(stats.problems)
        return infos


def _select(array: pa.Array, rows: np.ndarray) -> pa.Array | pa.ChunkedArray:
    """`array.take(rows)`, but as zero-copy slices when the rows are most of the array in a few runs: the
    usual case, a batch's training documents are the batch minus a few validation documents. A few rows
    are copied instead, so that a writer that keeps them for long (validation) holds no whole batch."""
    breaks = np.nonzero(np.diff(rows) != 1)[0] + 1
    if 2 * len(rows) < len(array) or len(breaks) >= max(8, len(rows) // 16):  # few, scattered, or mixture copies
        return array.take(pa.array(rows))
    firsts, lasts = np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]]) - 1
    return pa.chunked_array([array.slice(int(rows[a]), int(rows[b] - rows[a]) + 1) for a, b in zip(firsts, lasts)],
                            type=array.type)


class _Meter:
    """Logs documents, tokens and throughput every few seconds while the job runs."""

    def __init__(self):
        self.start = self.last = time.monotonic()
        self.documents = self.tokens = self.bytes = 0
        self.total_tasks = 0

    def restart(self) -> None:
        self.start = self.last = time.monotonic()

    def update(self, documents: int, tokens: int, nbytes: int, task: int, description: str) -> None:
        self.documents += documents
        self.tokens += tokens
        self.bytes += nbytes
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            self._log(f"read task {task + 1}/{self.total_tasks} | {description}")

    def finish(self) -> None:
        if self.documents:
            self._log("done")

    def _log(self, where: str) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        log.info("tokenized %s documents, %s tokens | %.2f M tokens/s, %.1f MB/s | %s", f"{self.documents:,}",
                 f"{self.tokens:,}", self.tokens / elapsed / 1e6, self.bytes / elapsed / 1e6, where)
