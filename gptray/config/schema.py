"""The experiment config: one typed dataclass per concern, validated as a whole.

A YAML file plus dotted overrides is the whole truth of a run; the resolved form
(presets filled in, paths absolute) is saved next to every run's checkpoints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from gptray.config.checks import no_credentials, require
from gptray.config.loader import apply_overrides, apply_settings, build, deep_merge, read_yaml, to_dict
from gptray.config.model import ModelConfig, finetune_model, padded_vocabulary
from gptray.config.recipes import RECIPES
from gptray.config.training import (
    CheckpointConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    resolve_training,
    upgrade_saved_config,
)
from gptray.core.errors import ConfigError
from gptray.core.paths import absolute_path, is_uri, join_path


@dataclass
class SourceConfig:
    """One corpus to tokenize: local or object-store files, a Hugging Face dataset, or a named corpus.

    Exactly one of `path`, `hf` and `corpus` is set.
    """

    # Local or object-store files: a file, a directory (read recursively in sorted order) or a glob;
    # s3://bucket/prefix/*.jsonl.gz and gs://… work too. Formats by suffix: .txt/.text/.md,
    # .jsonl/.ndjson/.json, .parquet, each text or JSON format also compressed (.gz, .zst, .bz2).
    path: str | None = None
    hf: str | None = None  # Hugging Face dataset for `datasets.load_dataset` ("Salesforce/wikitext", "json", …)
    corpus: str | None = None  # a name from gptray's corpus registry (`gptray data list`)
    # The dataset's config name ("wikitext-2-raw-v1"); for a named corpus, another of its configs
    # than the registry's (Wikipedia's language and dump date: "20231101.de").
    hf_config: str | None = None
    hf_split: str = "train"  # the split of the Hugging Face dataset to read
    # The Hub revision to read (hf sources and Hub corpora): a commit sha (40 hex digits) pins the dataset; a branch
    # or tag is resolved to its commit when the job plans. Either way the manifest records the commit read.
    hf_revision: str | None = None
    data_files: list[str] | None = None  # for hf: json/text/parquet builders reading local files
    # Stream the dataset (nothing downloaded up front; shards read in parallel) instead of
    # preparing it in the local cache. Null: a named corpus decides by its size; hf datasets do not stream.
    streaming: bool | None = None
    text_field: str = "text"  # the field holding a document in jsonl/parquet/HF rows
    # Prompt/completion data (fine-tuning): the JSON field holding the prompt. Each document is then
    # prompt + text_field (the completion) + <|endoftext|>, and training computes no loss on the
    # prompt's tokens. Only for .jsonl/.json files.
    prompt_field: str | None = None
    # How a .txt file divides into documents: the whole file, blank-line separated
    # paragraphs, or single lines; null means "file" (a named corpus picks its own).
    # Each document is followed by <|endoftext|>.
    text_unit: Literal["file", "paragraph", "line"] | None = None
    # Mixture weight: how many times each document is written. 1 writes every document once, 3 three
    # times, 0.25 a deterministic quarter of them (chosen by a seeded hash of the document).
    weight: float = 1.0
    # Token files instead of text (path sources): "nanogpt" (raw uint16 ids, uint32 when data.tokenizer's
    # vocabulary needs it: nanoGPT's train.bin/val.bin) or "llmc" (llm.c / modded-nanogpt shards: a
    # 256 × int32 header, then uint16 ids). Read as they are, split into documents at data.tokenizer's
    # <|endoftext|> id: data.tokenizer must be the one that made them.
    format: Literal["nanogpt", "llmc"] | None = None

    def kind(self) -> str:
        return "path" if self.path else "hf" if self.hf else "corpus"

    def describe(self) -> str:
        if self.path:
            return self.path
        if self.hf:
            return f"hf:{self.hf}" + (f"/{self.hf_config}" if self.hf_config else "") + f"[{self.hf_split}]"
        return f"corpus:{self.corpus}" + (f"/{self.hf_config}" if self.hf_config else "")

    def validate(self, i: int, key: str = "data.sources") -> None:
        """Check this source, the `i`-th of `key` (data.sources or data.val_sources); raise ConfigError naming it."""
        chosen = [k for k in ("path", "hf", "corpus") if getattr(self, k)]
        if len(chosen) != 1:
            raise ConfigError(f"{key}[{i}]", f"set exactly one of path, hf, corpus (got {chosen or 'none'})")
        if self.data_files is not None and not self.hf:
            raise ConfigError(f"{key}[{i}].data_files", "only applies to hf sources")
        if not self.text_field:
            raise ConfigError(f"{key}[{i}].text_field", "must not be empty")
        if self.prompt_field is not None:
            if not self.path:
                raise ConfigError(f"{key}[{i}].prompt_field",
                                  "only applies to path sources (.jsonl/.json files)")
            if self.prompt_field == self.text_field:
                raise ConfigError(f"{key}[{i}].prompt_field",
                                  f"must differ from text_field (both are {self.text_field!r})")
        if self.hf_config is not None and self.path:
            raise ConfigError(f"{key}[{i}].hf_config", "only applies to hf sources and named corpora")
        if self.hf_revision is not None:
            if self.path:
                raise ConfigError(f"{key}[{i}].hf_revision", "only applies to hf sources and named corpora")
            require(bool(self.hf_revision) and not any(c.isspace() for c in self.hf_revision),
                    f"{key}[{i}].hf_revision", "must be a commit sha, branch or tag", self.hf_revision)
        if self.streaming is not None and self.path:
            raise ConfigError(f"{key}[{i}].streaming", "only applies to hf sources and named corpora")
        require(math.isfinite(self.weight) and self.weight > 0, f"{key}[{i}].weight",
                 "must be a positive number", self.weight)
        no_credentials(f"{key}[{i}].path", self.path)
        for j, location in enumerate(self.data_files or []):  # the json/text/parquet builders read URLs too
            no_credentials(f"{key}[{i}].data_files[{j}]", location)
        if self.format is not None:
            if not self.path:
                raise ConfigError(f"{key}[{i}].format", f"token files are read from a path: set {key}[{i}].path")
            for name in ("prompt_field", "text_unit"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{key}[{i}].{name}", f"does not apply to token files (format: {self.format})")


# tiktoken's published encodings: (vocabulary size, <|endoftext|> id). A model trained on one of these
# gets its vocabulary from the config; any other tokenizer's comes from the dataset it was tokenized into.
TIKTOKEN_VOCABULARIES = {
    "gpt2": (50257, 50256), "r50k_base": (50257, 50256), "p50k_base": (50281, 50256),
    "cl100k_base": (100277, 100257), "o200k_base": (200019, 199999),
}


def tokenizer_kind(spec: str) -> Literal["tiktoken", "file", "hub", "bytes"]:
    """What `data.tokenizer` names: hf:NAME (hub), a path or URI of a tokenizer.json or its directory
    (file), `bytes` (UTF-8 bytes as ids), else a tiktoken encoding (whose names hold no "/" and end in no ".json")."""
    if spec == "bytes":
        return "bytes"
    if spec.startswith(HF_PREFIX):
        return "hub"
    if spec.endswith(".json") or "/" in spec or is_uri(spec):
        return "file"
    return "tiktoken"


@dataclass
class TokenizerConfig:
    """`gptray tokenizer train`: a byte-level BPE trained on data.sources with Hugging Face tokenizers."""

    vocab_size: int = 8192  # <|endoftext|> included
    min_frequency: int = 2  # a merge must occur this often in the sample
    # The sample it learns from: train-split documents of data.sources, read round-robin across the
    # sources' read tasks, until this many characters (nanochat trains on 2 billion).
    max_chars: int = 2_000_000_000
    max_document_chars: int = 10_000  # a longer document contributes only its start (nanochat's cap)

    def validate(self) -> None:
        require(256 + 1 <= self.vocab_size <= 2**32 - 1, "tokenizer.vocab_size",
                 "must hold the 256 bytes and <|endoftext|> (>= 257)", self.vocab_size)
        require(self.min_frequency >= 1, "tokenizer.min_frequency", "must be >= 1", self.min_frequency)
        require(self.max_chars > 0, "tokenizer.max_chars", "must be positive", self.max_chars)
        require(self.max_document_chars > 0, "tokenizer.max_document_chars", "must be positive",
                 self.max_document_chars)


@dataclass
class DataConfig:
    """What `gptray tokenize` reads and writes, and how training reads the token dataset."""

    # The corpora to tokenize, each a section (the data.sources[i] keys): their documents are mixed by weight
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(corpus="tinyshakespeare")])
    # A validation set of its own (any source kind, token files too). When given, every document of
    # data.sources goes to train and validation holds only these (data.val_fraction is not used).
    val_sources: list[SourceConfig] = field(default_factory=list)
    # where shards + manifest.json go: a local path or s3://, gs:// URI
    dataset_dir: str = "data/tinyshakespeare-tail-bpe8k"
    # A tiktoken encoding name (gpt2), a tokenizer.json by path or URI (or a directory holding one, as
    # `gptray tokenizer train` writes), or hf:NAME[@REVISION] for a Hugging Face Hub tokenizer. The
    # default is learned from data.sources (tokenizer.*: 8,192 tokens) the first time it is needed:
    # on tinyshakespeare it reaches a lower val bpb than gpt2 in the same time (BENCHMARKS.md).
    tokenizer: str = "data/tokenizers/tinyshakespeare-8k"
    val_fraction: float = 0.1  # share of each source held out for validation (data.split says which part)
    # Which part. hash: documents drawn by a seeded content hash (split_seed). tail: the last val_fraction
    # of each source's text, in order, as nanoGPT's shakespeare_char splits it (uncompressed line or
    # paragraph text, JSON lines; gptray/data/tail_split.py). auto: tail for a built-in corpus that is one
    # continuous text (tinyshakespeare), hash for every other source.
    split: Literal["auto", "hash", "tail"] = "auto"
    split_seed: int = 0  # seeds the content hash that splits train and validation (data.split: hash)
    shard_tokens: int = 50_000_000  # a shard closes once it holds at least this many tokens
    batch_documents: int = 4096  # at most this many documents per tokenized block a read task sends on
    # A larger document (line, paragraph, JSON line, file, row) is skipped and counted as "oversized";
    # input is read in blocks, so even a 100 GB line never has to fit in memory.
    max_document_bytes: int = 32 << 20
    # Uncompressed line-oriented files are read in parallel, in equal byte ranges of at most this size.
    read_chunk_bytes: int = 8 << 20
    strict: bool = False  # any bad input (see the manifest's problem kinds) stops the job with an error
    cache_dir: str | None = None  # node-local cache of decoded token arrays; default ~/.cache/gptray
    # The training order. global: windows drawn uniformly from the whole train split, which every node
    # decodes into its cache before the first step. block: each epoch permutes the shards, groups them
    # into blocks of shuffle_block_shards and shuffles windows within a block; a node decodes only the
    # blocks in use and the next one, within cache_limit (gptray/data/block_order.py). auto: global while
    # the decoded train split fits cache_limit, block above it.
    shuffle: Literal["auto", "global", "block"] = "auto"
    shuffle_block_shards: int = 16
    cache_limit: str = "64GB"  # the most decoded train tokens a node keeps on disk: 500MB, 20GB, 1.5TB, 2GiB…
    prefetch: bool = True  # block order: decode the next block in the background while training on this one

    def cache_limit_bytes(self) -> int:
        return parse_size(self.cache_limit, "data.cache_limit")

    def validate(self) -> None:
        """Check every data setting; raise ConfigError naming the key."""
        for i, source in enumerate(self.sources):
            source.validate(i)
        for i, source in enumerate(self.val_sources):
            source.validate(i, "data.val_sources")
        require(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)", self.val_fraction)
        require(self.split in ("auto", "hash", "tail"), "data.split", "must be auto, hash or tail", self.split)
        require(self.split != "tail" or not self.val_sources, "data.split",
                "tail cuts data.sources, but with data.val_sources every one of them trains", self.split)
        require(self.shard_tokens > 0, "data.shard_tokens", "must be positive", self.shard_tokens)
        require(self.batch_documents > 0, "data.batch_documents", "must be positive", self.batch_documents)
        require(self.max_document_bytes > 0, "data.max_document_bytes", "must be positive", self.max_document_bytes)
        require(self.read_chunk_bytes >= 4096, "data.read_chunk_bytes", "must be at least 4096", self.read_chunk_bytes)
        require(bool(self.dataset_dir), "data.dataset_dir", "must not be empty", self.dataset_dir)
        require(bool(self.tokenizer.strip()) and self.tokenizer != HF_PREFIX, "data.tokenizer",
                 "must name a tiktoken encoding, a tokenizer.json or hf:NAME", self.tokenizer)
        require(self.shuffle_block_shards > 0, "data.shuffle_block_shards", "must be positive",
                 self.shuffle_block_shards)
        require(self.cache_limit_bytes() > 0, "data.cache_limit", "must be positive", self.cache_limit)
        for key in ("dataset_dir", "tokenizer", "cache_dir"):
            no_credentials(f"data.{key}", getattr(self, key))


@dataclass
class RayConfig:
    """Where a run finds Ray and what its Ray Train workers ask for."""

    address: str | None = None  # null: join the cluster this process belongs to, else start a local one
    num_cpus: int | None = None  # start a fresh local Ray instance with this many CPUs (implies address=local)
    # Ray Train workers (DDP ranks). 0 is local mode: the training loop runs in the launching process, on one
    # device, without starting Ray, so a debugger's breakpoint in it stops there; checkpoints, resume,
    # tracking and samples work as with workers. [min, max]: an elastic run (Ray Train's elastic scaling):
    # it starts once `min` workers fit, grows toward `max` as nodes arrive and shrinks when they go, each
    # resize restarting the group from the latest checkpoint; every world size trains the same global batches.
    num_workers: int | list[int] = 2
    # An elastic run's check for more (or fewer) workers while it trains, in seconds (Ray Train's
    # elastic_resize_monitor_interval_s); each resize costs the steps since the last checkpoint.
    resize_interval_s: float = 60.0
    use_gpu: bool = False  # one GPU per worker, NCCL; else CPU workers with gloo
    # CPUs each worker asks for. auto: one each where that fits (and on a cluster that can grow), else an
    # equal share of a fixed cluster's CPUs beside a sweep's trial drivers (gptray/core/cluster.py).
    cpus_per_worker: float | Literal["auto"] = "auto"
    accelerator_type: str | None = None  # GPU workers only on nodes with this GPU (H100, A100, …): no mixed DDP group
    max_failures: int = 0  # worker-group restarts from the latest checkpoint before giving up
    autoscaling: bool | None = None  # whether an autoscaler can add nodes; null: ask the cluster
    # On a cluster that can grow, stop (exit 2) when the workers have waited this long for resources;
    # null: wait as long as it takes, saying every 30 s what is pending.
    wait_timeout_s: float | None = None

    @property
    def local_mode(self) -> bool:
        """Whether a run trains in the launching process (ray.num_workers=0), not on Ray Train workers."""
        return self.num_workers == 0

    @property
    def elastic(self) -> bool:
        """Whether the worker count may change while the run trains (ray.num_workers: [min, max])."""
        return isinstance(self.num_workers, list)

    @property
    def min_workers(self) -> int:
        """The fewest workers a run trains with: what must fit before it starts."""
        return self.num_workers[0] if self.elastic else self.num_workers

    @property
    def max_workers(self) -> int:
        """The most workers a run trains with."""
        return self.num_workers[-1] if self.elastic else self.num_workers

    def validate(self) -> None:
        """Check every ray setting; raise ConfigError naming the key."""
        no_credentials("ray.address", self.address)
        if self.elastic:
            require(len(self.num_workers) == 2 and 1 <= self.num_workers[0] <= self.num_workers[1],
                    "ray.num_workers", "must be a worker count or [min, max] with 1 <= min <= max", self.num_workers)
        else:
            require(self.num_workers >= 0, "ray.num_workers", "must be >= 0 (0: local mode, in this process)",
                    self.num_workers)
        require(self.resize_interval_s > 0, "ray.resize_interval_s", "must be positive", self.resize_interval_s)
        require(self.cpus_per_worker == "auto" or self.cpus_per_worker > 0, "ray.cpus_per_worker",
                 "must be positive or auto", self.cpus_per_worker)
        require(self.max_failures >= -1, "ray.max_failures", "must be >= -1 (-1: retry forever)", self.max_failures)
        require(self.accelerator_type is None or (bool(self.accelerator_type) and self.use_gpu),
                 "ray.accelerator_type", "needs ray.use_gpu=true and a GPU type such as H100", self.accelerator_type)
        require(self.wait_timeout_s is None or self.wait_timeout_s > 0, "ray.wait_timeout_s",
                 "must be positive or null", self.wait_timeout_s)
        if self.num_cpus is not None:
            require(self.num_cpus > 0, "ray.num_cpus", "must be positive", self.num_cpus)
            if self.address not in (None, "local"):
                raise ConfigError("ray.num_cpus",
                                  f"only applies to a local Ray instance, not ray.address={self.address!r}")


@dataclass
class TrackingConfig:
    """MLflow: where a run logs its parameters, metrics, samples and dataset."""

    enabled: bool = True  # false: no MLflow run (metrics still go to the run directory's history)
    uri: str | None = None  # MLflow tracking URI; default sqlite:///<out_dir>/mlflow.db (local out_dir)
    experiment: str = "gptray"  # the MLflow experiment runs are logged under
    retry_seconds: float = 30.0  # after the server fails, wait this long before trying it again

    def validate(self) -> None:
        """Check every tracking setting; raise ConfigError naming the key."""
        no_credentials("tracking.uri", self.uri)
        require(bool(self.experiment), "tracking.experiment", "must not be empty", self.experiment)
        require(self.retry_seconds >= 0, "tracking.retry_seconds", "must be >= 0", self.retry_seconds)


@dataclass
class GenerateConfig:
    """Decoding, for `gptray generate` and the samples a training run logs."""

    prompt: str = "\n"  # the text to continue when a command is given none
    max_new_tokens: int = 200  # tokens generated after the prompt
    temperature: float = 0.8  # 0 means greedy
    top_k: int | None = 200  # sample among the k most likely tokens; null: all
    top_p: float | None = None  # nucleus: among the most likely tokens holding this much probability; null: all
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the context less likely (CTRL); 1 is off
    num_beams: int = 1  # > 1: beam search (deterministic: temperature, top_k and top_p do not apply)
    length_penalty: float = 1.0  # beam search ranks ended beams by log-probability / length ** this
    stop_at_eot: bool = False  # end a sequence at <|endoftext|> (false: write through document ends)
    stop: list[str] = field(default_factory=list)  # end a sequence once its text holds one; the text is cut there
    # false: an end-of-text token reads as a visible document break in the text; true: as its raw token text
    raw_special_tokens: bool = False
    use_cache: bool = True  # KV cache; false recomputes the whole context for every token
    seed: int = 1337  # sequence i of a batch draws from its own generator, seeded seed + i

    def validate(self) -> None:
        """Check every generate setting; raise ConfigError naming the key."""
        require(self.max_new_tokens >= 0, "generate.max_new_tokens", "must be >= 0", self.max_new_tokens)
        require(self.temperature >= 0, "generate.temperature", "must be >= 0 (0 is greedy)", self.temperature)
        require(self.top_k is None or self.top_k > 0, "generate.top_k", "must be positive or null", self.top_k)
        require(self.top_p is None or 0 < self.top_p <= 1, "generate.top_p", "must be in (0, 1] or null", self.top_p)
        require(self.repetition_penalty > 0, "generate.repetition_penalty", "must be positive (1 is off)",
                 self.repetition_penalty)
        require(self.num_beams >= 1, "generate.num_beams", "must be >= 1", self.num_beams)
        for i, stop in enumerate(self.stop):
            require(bool(stop), f"generate.stop[{i}]", "must not be empty", stop)


# rowanz/hellaswag at a fixed commit (gptray/eval/hellaswag.py checks the file's digest)
HELLASWAG_VAL_URL = ("https://raw.githubusercontent.com/rowanz/hellaswag/a29ff8e9a04bba4bd6588223785ce105328adc57/"
                     "data/hellaswag_val.jsonl")


@dataclass
class EvalConfig:
    """`gptray eval` on a checkpoint, and the tasks evaluated during training."""

    # gptray's own (hellaswag, perplexity), or lm-evaluation-harness tasks by name (arc_easy, lambada_openai, …;
    # lm_eval/NAME for a harness task gptray has one of its own by the same name: lm_eval/hellaswag)
    tasks: list[str] = field(default_factory=lambda: ["perplexity"])
    hellaswag: str = HELLASWAG_VAL_URL  # hellaswag_val.jsonl: a local path, or a URL downloaded once to the cache
    text_files: list[str] = field(default_factory=list)  # perplexity over these files instead of the token dataset
    dataset_dir: str | None = None  # token dataset for perplexity; null: the checkpoint's run's data.dataset_dir
    split: str = "val"  # its split
    max_length: int | None = None  # perplexity window (input tokens); null: the model's block_size
    stride: int | None = None  # perplexity window step; null: max_length / 2
    limit: int | None = None  # at most this many examples (HellaSwag, harness tasks) or windows (perplexity) per task
    batch_size: int = 4  # examples (all their endings) or windows per forward pass
    distributed: bool = True  # a Ray Data actor pool; false: in this process
    num_actors: int | None = None  # null: one per GPU, else one per CPU but one (at least 1), at most the batches
    cpus_per_actor: float = 1.0  # also the torch threads of each CPU actor
    device: str = "auto"  # auto: a GPU where there is one; cpu; cuda
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of the forward passes
    num_fewshot: int | None = None  # harness tasks: examples shown before each question; null: each task's default
    harness_include: list[str] = field(default_factory=list)  # directories of local harness task YAMLs (offline)
    bootstrap_iters: int = 100000  # harness tasks: bootstrap resamples for stderrs of non-mean metrics; 0: none
    seed: int = 1234  # harness tasks: few-shot sampling and other randomness (the harness's default)
    # evaluated during training on the training model, logged to the run: names as in eval.tasks (gptray's own, or
    # harness tasks: every rank scores a share of their requests; num_fewshot, harness_include, seed as gptray eval)
    train_tasks: list[str] = field(default_factory=list)
    train_interval: int | None = None  # every N steps (and at the last); null: train.eval_interval
    train_limit: int | None = None  # examples or windows per task during training; null: eval.limit
    # harness tasks of train_tasks on the checkpoint written at each evaluation step, by Ray Train's asynchronous
    # validation (a Ray task beside the workers: eval.cpus_per_actor CPUs, a GPU only with eval.device=cuda), not in
    # the loop; needs Ray Train workers and train_interval a multiple of checkpoint.interval
    train_async: bool = False

    def in_training(self) -> EvalConfig:
        """These settings as evaluation during training uses them: eval.train_limit, if set, as the limit."""
        return replace(self, limit=self.train_limit or self.limit)

    def validate(self) -> None:
        """Check every eval setting; raise ConfigError naming the key."""
        for key in ("tasks", "train_tasks"):  # a harness name is checked against the harness's index before any work
            for i, task in enumerate(getattr(self, key)):
                require(task in EVAL_TASKS or bool(HARNESS_TASK.fullmatch(task)), f"eval.{key}[{i}]",
                        f"must be one of {', '.join(EVAL_TASKS)} or an lm-evaluation-harness task name", task)
        require(self.num_fewshot is None or self.num_fewshot >= 0, "eval.num_fewshot", "must be >= 0 or null",
                self.num_fewshot)
        require(self.bootstrap_iters >= 0, "eval.bootstrap_iters", "must be >= 0", self.bootstrap_iters)
        for i, path in enumerate(self.harness_include):
            require(bool(path), f"eval.harness_include[{i}]", "must be a directory", path)
        require(bool(self.tasks), "eval.tasks", "must name at least one task", self.tasks)
        require(bool(self.hellaswag), "eval.hellaswag", "must be a path or URL", self.hellaswag)
        for key in ("max_length", "stride", "limit", "num_actors", "train_interval", "train_limit"):
            value = getattr(self, key)
            require(value is None or value > 0, f"eval.{key}", "must be positive or null", value)
        if self.max_length is not None and self.stride is not None:
            require(self.stride <= self.max_length, "eval.stride", f"must be <= eval.max_length ({self.max_length})",
                     self.stride)
        require(self.batch_size > 0, "eval.batch_size", "must be positive", self.batch_size)
        require(self.cpus_per_actor > 0, "eval.cpus_per_actor", "must be positive", self.cpus_per_actor)
        require(bool(self.split), "eval.split", "must name a split", self.split)
        for key, value in [("hellaswag", self.hellaswag), ("dataset_dir", self.dataset_dir),
                           *((f"text_files[{i}]", path) for i, path in enumerate(self.text_files)),
                           *((f"harness_include[{i}]", path) for i, path in enumerate(self.harness_include))]:
            no_credentials(f"eval.{key}", value)


@dataclass
class ExperimentConfig:
    """A whole run's config: its name and output directory, then a section per concern."""

    name: str = "quickstart"  # the run's name: its directory under out_dir and its MLflow run name
    out_dir: str = "runs"  # checkpoints, resolved configs and the default MLflow database live here
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    @property
    def run_dir(self) -> str:
        return join_path(self.out_dir, self.name)

    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{join_path(self.out_dir, 'mlflow.db')}"

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        return build(cls, data)

    @classmethod
    def from_saved(cls, data: dict) -> ExperimentConfig:
        """A config as a run or checkpoint saved it, in this layout or an earlier one."""
        return build(cls, upgrade_saved_config(data))

    def resolved(self, read_base: BaseModelReader | None = None) -> ExperimentConfig:
        """Presets filled in, paths made absolute, everything validated.

        A fine-tuning config (train.init_from set) takes its model from the base, whose config
        `read_base` reads (gptray.train.finetune.base_model_reader): the config package does no I/O.
        """
        config = ExperimentConfig.from_dict(self.to_dict())
        config.out_dir = absolute_path(config.out_dir)  # before read_base, which compares the run dir with the base
        if config.train.init_from:
            no_credentials("train.init_from", config.train.init_from)  # before read_base reaches it
            if not config.train.init_from.startswith(HF_PREFIX):
                config.train.init_from = absolute_path(config.train.init_from)
            if read_base is None:
                raise ConfigError("train.init_from", "a fine-tuning config resolves with its base model's config; "
                                                     "load it through the gptray CLI, a pipeline, or "
                                                     "gptray.train.finetune.load_run_config")
            config.model = finetune_model(config.model, read_base(config), RECIPES[config.train.recipe].dropout)
        else:
            _vocabulary_from_tokenizer(config.model, config.data.tokenizer)
            config.model = config.model.resolved(vocab_from_dataset=config.model.vocab_size is None)
        resolve_training(config.train, config.optimizer, config.schedule, config.model)
        if config.checkpoint.resume_from is not None:
            config.checkpoint.resume_from = absolute_path(config.checkpoint.resume_from)
        config.data.dataset_dir = absolute_path(config.data.dataset_dir)
        if config.data.cache_dir is not None:
            config.data.cache_dir = absolute_path(config.data.cache_dir)
        if config.eval.dataset_dir is not None:
            config.eval.dataset_dir = absolute_path(config.eval.dataset_dir)
        config.eval.text_files = [absolute_path(p) for p in config.eval.text_files]
        config.eval.harness_include = [absolute_path(p) for p in config.eval.harness_include]  # workers' cwd differs
        if tokenizer_kind(config.data.tokenizer) == "file" and not is_uri(config.data.tokenizer):
            config.data.tokenizer = absolute_path(config.data.tokenizer)
        if not is_uri(config.eval.hellaswag):
            config.eval.hellaswag = absolute_path(config.eval.hellaswag)
        for source in config.data.sources + config.data.val_sources:
            if source.path is not None:
                source.path = absolute_path(source.path)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every section and the relations between them; raise ConfigError naming the key."""
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError("name", f"must be a plain directory name (got {self.name!r})")
        self._validate_out_dir()
        self.data.validate()
        self.ray.validate()  # before train: the batch must be shared by every worker count the run may have
        self.train.validate(self.model, self.ray.max_workers)
        self.optimizer.validate()
        self.schedule.validate(self.optimizer.lr)
        self.checkpoint.validate(self.train.init_from)
        self.tracking.validate()
        self.generate.validate()
        self.eval.validate()
        self.tokenizer.validate()
        self._validate_async_evaluation()

    def train_tasks_interval(self) -> int:
        """Steps between evaluations of eval.train_tasks in training: eval.train_interval, else train.eval_interval."""
        return self.eval.train_interval or self.train.eval_interval

    def _validate_async_evaluation(self) -> None:
        """eval.train_async evaluates checkpoints that Ray Train's workers report at the evaluation steps."""
        if not self.eval.train_async:
            return
        require(any(t not in EVAL_TASKS for t in self.eval.train_tasks), "eval.train_async",
                "evaluates the harness tasks of eval.train_tasks, which names none", self.eval.train_tasks)
        require(not self.ray.local_mode, "eval.train_async", "needs Ray Train workers (ray.num_workers > 0): local "
                "mode has no Ray Train controller to run validations; set it to false", True)
        interval = self.train_tasks_interval()
        require(interval % self.checkpoint.interval == 0, "eval.train_async", f"evaluates the checkpoint written at "
                f"each evaluation step: eval.train_interval ({interval}) must be a multiple of checkpoint.interval "
                f"({self.checkpoint.interval})", True)

    def _validate_out_dir(self) -> None:
        no_credentials("out_dir", self.out_dir)
        if not is_uri(self.out_dir):
            return
        if not urlsplit(self.out_dir).netloc:
            raise ConfigError("out_dir", "an object-store URI must name a bucket: s3://bucket/prefix "
                                         f"(got {self.out_dir!r})")
        if self.tracking.enabled and self.tracking.uri is None:
            # The default tracking database is SQLite under out_dir, and SQLite needs a local file.
            raise ConfigError("tracking.uri", f"must be set when out_dir is on an object store ({self.out_dir}): an "
                                              "MLflow server (http://host:5000) or a local sqlite:////path/mlflow.db; "
                                              "or set tracking.enabled=false")


def _vocabulary_from_tokenizer(model: ModelConfig, tokenizer: str) -> None:
    """A model whose vocabulary is not set takes a tiktoken encoding's (padded to model.vocab_multiple),
    and its <|endoftext|> id; for other tokenizers both stay null until the dataset says (for_dataset)."""
    if model.vocab_size is None and tokenizer in TIKTOKEN_VOCABULARIES:
        vocab, eot = TIKTOKEN_VOCABULARIES[tokenizer]
        model.vocab_size = padded_vocabulary(vocab, model.vocab_multiple or 1)
        if model.eot_token is None:
            model.eot_token = eot


# Reads the model config of a fine-tuning run's base (train.init_from, made absolute) for `resolved`.
BaseModelReader = Callable[[ExperimentConfig], ModelConfig]
HF_PREFIX = "hf:"  # train.init_from=hf:NAME: a model on the Hugging Face Hub


EVAL_TASKS = ("hellaswag", "perplexity")  # gptray's own; any other name in eval.tasks is a harness task
HARNESS_PREFIX = "lm_eval/"  # eval.tasks=[lm_eval/hellaswag]: the harness's task, not gptray's own
HARNESS_TASK = re.compile(rf"({re.escape(HARNESS_PREFIX)})?[A-Za-z0-9][A-Za-z0-9_.\-]*")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                read_base: BaseModelReader | None = None, settings: dict | None = None) -> ExperimentConfig:
    """Read a YAML config (or the defaults), apply `settings` (dotted keys with parsed values, e.g. a
    command's options) and then the `key=value` overrides, resolve and validate it (`read_base`: see
    ExperimentConfig.resolved)."""
    data = read_yaml(path) if path is not None else {}
    # Overrides act on the defaults too (`data.sources.0.text_unit=line` with no sources in the file).
    data = apply_settings(deep_merge(ExperimentConfig().to_dict(), data), dict(settings or {}))
    data = apply_overrides(data, list(overrides or []))
    return ExperimentConfig.from_dict(data).resolved(read_base)


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, key: str) -> int:
    """Bytes from "20GB", "500 MB", "1.5TB", "2GiB" or a plain number of bytes; ConfigError naming `key` otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ConfigError(key, f"must be a size such as 500MB, 20GB or 2GiB (got {text!r})")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])
