"""The tokenize job on Ray Data: corpora → plan → read, tokenize, write shards (Ray Data operators) → manifest.json.

The plan (plan.py) cuts the corpus into read tasks of about `data.shard_tokens` tokens. Ray Data
runs them: a Datasource whose read tasks are the plan's (plan_datasource.py), a tokenize operator
(map_batches) and a Datasink that writes each task's shards in the Ray task holding its tokens
(shard_sink.py). Read, tokenize and write fuse into one Ray task per read task, so no process
handles every token: the driver plans and orders the small records the writes return into the
manifest. Shards depend on the plan alone, never on the cluster's size, Ray Data's blocks or
timing, and the concatenated shards equal the tokenizer's encoding of the documents exactly.

A rerun of the same request keeps every task whose shards still verify and redoes the rest
(progress.py); a different request is refused unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from gptray.config import ExperimentConfig
from gptray.core.errors import DataError, GptrayError
from gptray.core.runtime import init_ray
from gptray.core.storage import Storage
from gptray.data.blocks import BlockSettings, SourceReader
from gptray.data.job_context import configure_job_context, ray_data_bars
from gptray.data.job_progress import ProgressLines
from gptray.data.manifest import MANIFEST_NAME, SPLITS, Manifest, ProblemCounts, SourceInfo, SplitInfo
from gptray.data.plan import plan_digest, plan_tasks
from gptray.data.plan_datasource import plan_datasource, tokenize_batch
from gptray.data.progress import PROGRESS_NAME, RECORDS_DIR, Progress, TaskRecord
from gptray.data.read_tasks import ReadTask
from gptray.data.shard_sink import shard_datasink
from gptray.data.shard_task import TaskInputs
from gptray.data.shards import OLD_PREFIXES, SHARD_PREFIX
from gptray.data.sources import ResolvedSource, resolve_sources
from gptray.data.split import MIXTURE_METHOD, SPLIT_METHOD
from gptray.data.tail_split import TAIL_METHOD, splits_at_tail
from gptray.data.tokenizer_loading import TOKENIZER_FILE, load_tokenizer

log = logging.getLogger(__name__)

# Shards named by read task (shards.py). Part of the request, so a dataset written by an earlier
# layout is a different dataset, not one to resume into.
SHARD_LAYOUT = "per-task"
LATER_KEYS = ("format",)  # source settings newer than datasets already made
VAL_SOURCES_METHOD = "data.val_sources: all their documents are val, all of data.sources' train"


@dataclass
class TokenizeResult:
    manifest: Manifest
    dataset_dir: str
    reused: bool  # an identical earlier job's output was kept as it was
    seconds: float
    resumed_from_task: int | None = None  # some tasks' shards were kept: the first read task that was redone
    tasks: int = 0  # read tasks in the plan
    kept_tasks: int = 0  # read tasks whose shards from an earlier run verified and were kept
    request: dict = dataclasses.field(default_factory=dict)  # tokenize_request's: what decided the content


def tokenize_request(config: ExperimentConfig, sources: list[ResolvedSource], tokenizer) -> dict:
    """Everything that decides a dataset's content; an equal request reuses the existing shards."""
    data = config.data
    return {
        "sources": [_source_request(s, data.split) for s in sources],
        "tokenizer": dict(tokenizer.describe(), digest=tokenizer.digest),
        "val_fraction": 0.0 if data.val_sources else data.val_fraction,  # unused beside val_sources
        "split_seed": data.split_seed,
        "shard_tokens": data.shard_tokens,
        "max_document_bytes": data.max_document_bytes,
        "layout": SHARD_LAYOUT,
    }


def _source_request(source: ResolvedSource, split: str) -> dict:
    """A source's part of the request. Settings added later count only when set, so that a dataset made
    before them is still the same request."""
    settings = {k: v for k, v in dataclasses.asdict(source.config).items() if v is not None or k not in LATER_KEYS}
    request = dict(settings, text_unit=source.text_unit, text_field=source.text_field, identity=source.identity)
    if source.split is not None:
        request["split"] = source.split
    if splits_at_tail(source, split):  # absent for hashed sources: their datasets keep their requests
        request["split"] = "tail"
    return request


def tokenize_corpus(config: ExperimentConfig, overwrite: bool = False, strict: bool | None = None) -> TokenizeResult:
    """Run the tokenize job for `config.data`; returns the manifest it wrote (or found).

    `strict` (default: data.strict) turns any bad input into a DataError that stops the job.
    """
    started = time.monotonic()
    data = config.data
    tokenizer = load_tokenizer(data.tokenizer)
    sources = resolve_sources(data.sources, tokenizer.vocab_size, data.val_sources)
    store = Storage(data.dataset_dir)
    request = tokenize_request(config, sources, tokenizer)
    digest = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()
    tasks = plan_tasks(sources, data.read_chunk_bytes, data.shard_tokens, data.split, data.val_fraction)
    existing = _claim(store, digest, plan_digest(tasks), len(tasks), overwrite)

    init_ray(config.ray.address, config.ray.num_cpus)
    with_prompts = any(source.prompt_field for source in sources)
    settings = BlockSettings(tokenizer, data.val_fraction, data.split_seed, data.max_document_bytes,
                             data.batch_documents, prompt_column=with_prompts)
    inputs = TaskInputs(source_readers(sources, tokenizer), settings, store, data.shard_tokens, digest,
                        strict if strict is not None else data.strict)
    records = _run(tasks, sources, inputs)
    kept = sum(r.kept for r in records)
    seconds = time.monotonic() - started
    if existing is not None and kept == len(records) and _same_shards(existing, records):
        log.info("%s already holds this exact dataset (%s tokens, shards verified); nothing to do",
                 store.uri(), f"{existing.tokens:,}")
        return TokenizeResult(existing, store.uri(), True, seconds, tasks=len(tasks), kept_tasks=kept, request=request)
    manifest = _write_manifest(store, records, sources, tokenizer, config, digest)
    resumed = next((r.task for r in records if not r.kept), None) if kept else None
    return TokenizeResult(manifest, store.uri(), False, time.monotonic() - started, resumed, len(tasks), kept,
                          request)


def _claim(store: Storage, digest: str, plan_id: str, task_count: int, overwrite: bool) -> Manifest | None:
    """Make the directory this request's before any shard is written; returns its manifest if it has one."""
    existing = _load_manifest(store)
    progress = Progress.load(store)
    other_manifest = existing is not None and existing.split.get("request_digest") != digest
    other_job = progress is not None and progress.request_digest != digest
    if other_manifest or other_job:
        if not overwrite:
            state = "a different token dataset" if other_manifest else "an unfinished different token job"
            raise DataError(
                f"{store.uri()} already holds {state} (other sources, files, tokenizer, settings or an earlier "
                "shard layout). Pass --overwrite to replace it, or choose another data.dataset_dir.")
        log.info("replacing the token dataset in %s (--overwrite)", store.uri())
        _remove_outputs(store)
        existing = None
    elif progress is None or progress.plan_digest != plan_id:
        if progress is not None:
            log.warning("the read plan changed since the earlier run (data.read_chunk_bytes or files): starting over")
        _remove_outputs(store)  # an unreadable or missing claim: nothing here can be trusted to be ours
        existing = None
    else:
        log.info("checking the shards an earlier run of this request left in %s", store.uri())
    Progress(digest, plan_id, task_count).save(store)
    return existing


def _load_manifest(store: Storage) -> Manifest | None:
    if not store.exists(MANIFEST_NAME):
        return None
    try:
        return Manifest.load(store)
    except DataError as exc:
        log.warning("ignoring unreadable %s: %s", store.uri(MANIFEST_NAME), exc)
        return None


def _remove_outputs(store: Storage) -> None:
    """Clear a previous dataset's files (only ours: manifest, progress, task records and shard files)."""
    store.delete(MANIFEST_NAME)
    store.delete(PROGRESS_NAME)
    for name in store.list(RECORDS_DIR):
        store.delete(f"{RECORDS_DIR}/{name}")
    for split in SPLITS:
        for name in store.list(split):
            if name.startswith((SHARD_PREFIX, *OLD_PREFIXES)):
                store.delete(f"{split}/{name}")


def source_readers(sources: list[ResolvedSource], tokenizer=None) -> list[SourceReader]:
    """What each read task needs to read its source (pickled to every task); token files need `tokenizer`."""
    return [SourceReader(s.kind, s.description, s.fs, s.text_field, s.weight, s.join_rows, stream=s.stream,
                         prompt_field=s.prompt_field, split=s.split, token_format=s.token_format,
                         token_layouts={f.path: layout for f, layout in zip(s.files, s.token_layouts)},
                         eot_token=tokenizer.eot_token if tokenizer else 0,
                         vocab_size=tokenizer.vocab_size if tokenizer else 0) for s in sources]


def _run(tasks: list[ReadTask], sources: list[ResolvedSource], inputs: TaskInputs) -> list[TaskRecord]:
    """The plan's read tasks on Ray Data (read → tokenize → write shards, fused into one Ray task per read task);
    the tasks' records in task order."""
    import ray

    shared = ray.put(inputs)
    # A table piece's rows go to the object store once; only its read task gets them.
    tables = {task.index: [ray.put(sources[task.source].table.slice(p.start, p.end - p.start))
                           for p in task.pieces if p.kind == "table"] for task in tasks}
    tables = {index: refs for index, refs in tables.items() if refs}
    slots = _task_slots(len(tasks))
    log.info("running %d read task(s) from %d source(s) on Ray Data, %d at a time", len(tasks), len(sources), slots)
    # Read, tokenize and write ask for the same resources, no batch size and no concurrency of their own, so Ray
    # Data fuses them into one Ray task per read task: token data never crosses the object store, and the sink gets
    # every task's rows whole. (A per-operator `concurrency` stops Ray 2.60 from fusing the read; the job's CPU
    # limit is set on the dataset's own context instead, so it never waits on CPUs it does not have.)
    dataset = ray.data.read_datasource(plan_datasource(tasks, shared, tables), override_num_blocks=len(tasks),
                                       num_cpus=1)
    dataset = dataset.map_batches(tokenize_batch, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
                                  fn_kwargs={"settings": inputs.settings}, num_cpus=1)
    bars = ray_data_bars()
    configure_job_context(dataset.context, slots, bars)
    sink = shard_datasink(tasks, shared)
    started = time.monotonic()
    try:
        with contextlib.nullcontext() if bars else ProgressLines(inputs.store, len(tasks)):
            dataset.write_datasink(sink, ray_remote_args={"num_cpus": 1})
    except KeyboardInterrupt:
        log.warning("interrupted: the read tasks that finished keep their shards, and running the same job again "
                    "does only the rest")
        raise
    except Exception as exc:
        cause = _gptray_cause(exc)
        if cause is None:
            raise
        raise cause from None
    records = sink.records
    failed = [r for r in records if r.strict_failure]
    if failed:
        first = min(failed, key=lambda r: r.task)
        raise DataError(f"bad input (data.strict / --strict) in read task {first.task + 1} "
                        f"({tasks[first.task].description}): {first.strict_failure}. Fix the input, or run without "
                        "--strict to skip and count it.")
    if len(records) != len(tasks):
        raise DataError(f"Ray Data returned the records of {len(records)} of {len(tasks)} read task(s)")
    _log_summary(records, time.monotonic() - started)
    return records


def _task_slots(task_count: int) -> int:
    """How many read tasks run at once: one per CPU of the cluster (each takes one), at most one per task."""
    import ray

    return max(1, min(task_count, int(ray.cluster_resources().get("CPU", 1))))


def _gptray_cause(exc: BaseException) -> GptrayError | None:
    """The gptray error a Ray Data task raised, found through Ray's and Ray Data's wrappers."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, GptrayError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def _log_summary(records: list[TaskRecord], seconds: float) -> None:
    """One line for the work done now (while it ran: Ray Data's progress bars on a terminal, else job_progress.py's
    lines)."""
    done = [r for r in records if not r.kept]
    documents = sum(r.stats.documents for r in done)
    tokens = sum(r.stats.tokens for r in done)
    nbytes = sum(r.stats.bytes for r in done)
    kept = f" ({len(records) - len(done)} kept from an earlier run)" if len(done) < len(records) else ""
    elapsed = max(seconds, 1e-9)
    log.info("read tasks %d/%d finished%s | tokenized %s documents, %s tokens | %.2f M tokens/s, %.1f MB/s",
             len(records), len(records), kept, f"{documents:,}", f"{tokens:,}", tokens / elapsed / 1e6,
             nbytes / elapsed / 1e6)


def _same_shards(existing: Manifest, records: list[TaskRecord]) -> bool:
    return all([s.sha256 for s in existing.split_info(split).shards]
               == [s.sha256 for r in records for s in r.shards.get(split, [])] for split in SPLITS)


def _write_manifest(store: Storage, records: list[TaskRecord], sources: list[ResolvedSource], tokenizer,
                    config: ExperimentConfig, digest: str) -> Manifest:
    splits = {}
    for split in SPLITS:
        shards = [dataclasses.replace(shard, source=record.source)
                  for record in records for shard in record.shards.get(split, [])]
        splits[split] = SplitInfo(sum(s.documents for s in shards), sum(s.tokens for s in shards), shards)
    source_infos = _source_infos(sources, records)
    total_tokens = sum(s.tokens for s in splits.values())
    problems = ProblemCounts()
    for info in source_infos:
        info.share = info.tokens / total_tokens if total_tokens else 0.0
        problems.merge(info.problems)
    data = config.data
    manifest = Manifest(
        tokenizer=tokenizer.describe(),
        split=_split_record(data, sources, digest),
        sources=source_infos,
        splits=splits,
        documents=sum(s.documents for s in splits.values()),
        tokens=total_tokens,
        problems=problems,
        mixture={"method": MIXTURE_METHOD, "weights": [s.weight for s in sources]},
        prompt_masked=any(source.prompt_field for source in sources),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if manifest.documents == 0:
        raise DataError(f"no documents to tokenize in {', '.join(s.description for s in sources)}; "
                        f"problems found: {problems.counts or 'none'}")
    manifest.fingerprint = manifest.compute_fingerprint()
    if tokenizer.kind == "huggingface":  # the dataset carries its tokenizer: training and sampling read it here
        store.write_bytes(TOKENIZER_FILE, tokenizer.to_json().encode("utf-8"))
    manifest.save(store)
    log.info("wrote %s: %s documents, %s tokens (train %s, val %s) in %d shard(s)", store.uri(MANIFEST_NAME),
             f"{manifest.documents:,}", f"{manifest.tokens:,}", f"{splits['train'].tokens:,}",
             f"{splits['val'].tokens:,}", sum(len(s.shards) for s in splits.values()))
    if len(source_infos) > 1:
        log.info("mixture: %s", ", ".join(f"{s.description} {s.share:.1%} (weight {s.weight:g})" for s in source_infos))
    if problems.total():
        log.warning("skipped or repaired input: %s (first locations are in the manifest)", problems.counts)
    return manifest


def _split_record(data, sources: list[ResolvedSource], digest: str) -> dict:
    """How the manifest's documents were split: by content hash, or by the source they came from."""
    if data.val_sources:
        return {"val_fraction": 0.0, "seed": data.split_seed, "method": VAL_SOURCES_METHOD,
                "val_sources": [s.description for s in sources if s.split == "val"], "request_digest": digest}
    tail = [s.description for s in sources if splits_at_tail(s, data.split)]
    method = SPLIT_METHOD if not tail else TAIL_METHOD if len(tail) == len(sources) else \
        f"{TAIL_METHOD} for {', '.join(tail)}; the other sources' by {SPLIT_METHOD}"
    return {"val_fraction": data.val_fraction, "seed": data.split_seed, "method": method,
            "request_digest": digest}


def _source_infos(sources: list[ResolvedSource], records: list[TaskRecord]) -> list[SourceInfo]:
    infos = [SourceInfo(s.description, s.kind, s.text_unit if s.kind == "files" else "row",
                        files=s.file_names, skipped_files=s.skipped_files, weight=s.weight, revision=s.revision)
             for s in sources]
    for record in records:  # in task order, so the first problem locations are the corpus's first
        info, stats = infos[record.source], record.stats
        info.documents_read += stats.documents_read
        info.tokens_read += stats.tokens_read
        info.bytes_read += stats.bytes
        info.documents += stats.documents
        info.tokens += stats.tokens
        info.problems.merge(stats.problems)
    return infos
