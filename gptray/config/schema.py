"""The experiment config: one typed dataclass per concern, validated as a whole.

A YAML file plus dotted overrides is the whole truth of a run; the resolved form
(presets filled in, paths absolute) is saved next to every run's checkpoints.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from gptray.base.errors import ConfigError
from gptray.base.paths import absolute_path, is_uri, join_path
from gptray.config.loader import apply_overrides, apply_settings, build, deep_merge, read_yaml, to_dict
from gptray.config.model import ModelConfig, finetune_model, padded_vocabulary
from gptray.config.optimizer import OptimizerSettings
from gptray.config.presets import training_recipe
from gptray.config.recipes import RECIPES


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
    hf_split: str = "train"
    hf_revision: str | None = None  # pin a dataset version (git revision on the Hub)
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

    def kind(self) -> str:
        return "path" if self.path else "hf" if self.hf else "corpus"

    def describe(self) -> str:
        if self.path:
            return self.path
        if self.hf:
            return f"hf:{self.hf}" + (f"/{self.hf_config}" if self.hf_config else "") + f"[{self.hf_split}]"
        return f"corpus:{self.corpus}" + (f"/{self.hf_config}" if self.hf_config else "")

    def validate(self, i: int) -> None:
        """Check this source, the `i`-th of data.sources; raise ConfigError naming the key."""
        chosen = [k for k in ("path", "hf", "corpus") if getattr(self, k)]
        if len(chosen) != 1:
            raise ConfigError(f"data.sources[{i}]", f"set exactly one of path, hf, corpus (got {chosen or 'none'})")
        if self.data_files is not None and not self.hf:
            raise ConfigError(f"data.sources[{i}].data_files", "only applies to hf sources")
        if not self.text_field:
            raise ConfigError(f"data.sources[{i}].text_field", "must not be empty")
        if self.prompt_field is not None:
            if not self.path:
                raise ConfigError(f"data.sources[{i}].prompt_field",
                                  "only applies to path sources (.jsonl/.json files)")
            if self.prompt_field == self.text_field:
                raise ConfigError(f"data.sources[{i}].prompt_field",
                                  f"must differ from text_field (both are {self.text_field!r})")
        if self.hf_config is not None and self.path:
            raise ConfigError(f"data.sources[{i}].hf_config", "only applies to hf sources and named corpora")
        if self.hf_revision is not None and not self.hf:
            raise ConfigError(f"data.sources[{i}].hf_revision", "only applies to hf sources")
        if self.streaming is not None and self.path:
            raise ConfigError(f"data.sources[{i}].streaming", "only applies to hf sources and named corpora")
        _require(math.isfinite(self.weight) and self.weight > 0, f"data.sources[{i}].weight",
                 "must be a positive number", self.weight)


# tiktoken's published encodings: (vocabulary size, <|endoftext|> id). A model trained on one of these
# gets its vocabulary from the config; any other tokenizer's comes from the dataset it was tokenized into.
TIKTOKEN_VOCABULARIES = {
    "gpt2": (50257, 50256), "r50k_base": (50257, 50256), "p50k_base": (50281, 50256),
    "cl100k_base": (100277, 100257), "o200k_base": (200019, 199999),
}


def tokenizer_kind(spec: str) -> Literal["tiktoken", "file", "hub"]:
    """What `data.tokenizer` names: hf:NAME (hub), a path or URI of a tokenizer.json or its directory
    (file), else a tiktoken encoding (whose names hold no "/" and end in no ".json")."""
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
        _require(256 + 1 <= self.vocab_size <= 2**32 - 1, "tokenizer.vocab_size",
                 "must hold the 256 bytes and <|endoftext|> (>= 257)", self.vocab_size)
        _require(self.min_frequency >= 1, "tokenizer.min_frequency", "must be >= 1", self.min_frequency)
        _require(self.max_chars > 0, "tokenizer.max_chars", "must be positive", self.max_chars)
        _require(self.max_document_chars > 0, "tokenizer.max_document_chars", "must be positive",
                 self.max_document_chars)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(corpus="tinyshakespeare")])
    dataset_dir: str = "data/tinyshakespeare-bpe8k"  # where shards + manifest.json go: a local path or s3://, gs:// URI
    # A tiktoken encoding name (gpt2), a tokenizer.json by path or URI (or a directory holding one, as
    # `gptray tokenizer train` writes), or hf:NAME[@REVISION] for a Hugging Face Hub tokenizer. The
    # default is learned from data.sources (tokenizer.*: 8,192 tokens) the first time it is needed:
    # on tinyshakespeare it reaches a lower val bpb than gpt2 in the same time (BENCHMARKS.md).
    tokenizer: str = "data/tokenizers/tinyshakespeare-8k"
    val_fraction: float = 0.1  # share of documents (by a seeded content hash) that go to validation
    split_seed: int = 0
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
        _require(0.0 <= self.val_fraction < 1.0, "data.val_fraction", "must be in [0, 1)", self.val_fraction)
        _require(self.shard_tokens > 0, "data.shard_tokens", "must be positive", self.shard_tokens)
        _require(self.batch_documents > 0, "data.batch_documents", "must be positive", self.batch_documents)
        _require(self.max_document_bytes > 0, "data.max_document_bytes", "must be positive", self.max_document_bytes)
        _require(self.read_chunk_bytes >= 4096, "data.read_chunk_bytes", "must be at least 4096", self.read_chunk_bytes)
        _require(bool(self.dataset_dir), "data.dataset_dir", "must not be empty", self.dataset_dir)
        _require(bool(self.tokenizer.strip()) and self.tokenizer != HF_PREFIX, "data.tokenizer",
                 "must name a tiktoken encoding, a tokenizer.json or hf:NAME", self.tokenizer)
        _require(self.shuffle_block_shards > 0, "data.shuffle_block_shards", "must be positive",
                 self.shuffle_block_shards)
        _require(self.cache_limit_bytes() > 0, "data.cache_limit", "must be positive", self.cache_limit)


@dataclass
class TrainConfig(OptimizerSettings):
    # Settings left null are filled when the config resolves: lr, batch size and warmup from the
    # model preset's training settings (gptray/config/presets.py: the GPT-3 paper's for GPT-3
    # sizes, gptray's CPU settings for nano/tiny), optimizer settings from `recipe`
    # (gptray/config/recipes.py). Explicit values always win.
    max_steps: int = 1800
    batch_size: int | None = None  # global batch in sequences per optimizer step (all workers together)
    tokens_per_step: int | None = None  # when set, batch_size = tokens_per_step / seq_len (e.g. 524288)
    micro_batch_size: int = 4  # sequences per forward/backward on one worker
    seq_len: int | None = None  # tokens per sequence; default model.block_size
    # Optimizer hyper-parameters of the GPT-3 or GPT-1/2 papers, or the usual GPT-2 fine-tuning
    # settings (small lr, short warmup, dropout on).
    recipe: Literal["gpt3", "gpt2", "finetune"] = "gpt3"
    # Fine-tune: start from these weights (a gptray checkpoint or run directory, a Hugging Face
    # GPT-2 directory, or hf:NAME) instead of a random init. The model keeps the base's architecture.
    init_from: str | None = None
    lr: float | None = None  # peak learning rate
    min_lr: float | None = None  # end of the cosine decay; null: lr × the recipe's ratio
    warmup_steps: int | None = None  # null: the preset's, else the recipe's (GPT-3 375M tokens, GPT-2 2000 steps)
    lr_decay_steps: int | None = None  # the schedule reaches min_lr here; default max_steps
    # After the linear warmup: cosine (GPT-3) or linear decay to min_lr at lr_decay_steps; or wsd
    # (warmup-stable-decay): lr held at its peak, then decayed to min_lr over the last
    # wsd_decay_fraction of lr_decay_steps. A WSD checkpoint from before its decay began continues
    # into any WSD run whose decay begins at or after its step (train.resume_from; see the README).
    schedule: Literal["cosine", "wsd", "linear"] = "cosine"
    # 0.2 and 1-sqrt (lr × (1 − √progress)): Hägele et al. 2024 ("Scaling Laws and Compute-Optimal
    # Training Beyond Fixed Training Durations") found a 20% cooldown of this shape matches cosine.
    # 0 never decays: a stable phase only, to be continued with a decay later.
    wsd_decay_fraction: float = 0.2
    wsd_decay_shape: Literal["1-sqrt", "linear", "cosine"] = "1-sqrt"
    # adamw: AdamW for every parameter. muon: Muon (momentum orthogonalized by Newton–Schulz) for the
    # hidden matrices (each 2-D weight inside the transformer blocks), AdamW with the settings here
    # (lr, betas, eps, weight_decay) for the rest: embeddings, the head, norm gains, biases.
    optimizer: Literal["adamw", "muon"] = "adamw"
    # Muon's settings: the defaults modded-nanogpt and its Muon reference (KellerJordan/Muon's README)
    # publish: lr 0.02 (scaled by √max(1, rows/cols) per matrix), momentum 0.95 with Nesterov, 5
    # Newton–Schulz steps, weight decay 0.01 (the README's). The schedule
    # scales muon_lr as it scales lr (warmup, decay, min_lr in proportion). Muon's decay per step is
    # muon_lr × muon_weight_decay: 2e-4 at these values, the same as nano's AdamW (2e-3 × 0.1).
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.01
    # z-loss (PaLM; OLMo, Levanter): the objective adds z_loss × mean(log² Z), Z the softmax normalizer of
    # each predicted token, which keeps the logits from drifting. train/loss stays the cross-entropy alone;
    # train/z_loss is the added term. 1e-4 is PaLM's value; 0 is off.
    z_loss: float = 0.0
    # Start this run from another run's checkpoint (a checkpoint or run directory, local or on an object
    # store): weights, optimizer state, step and tokens seen, as if this run had written it. Used on the
    # run's first launch only (later launches resume from the run's own checkpoints). For continuing a
    # WSD stable phase with a decay to a new max_steps under a new name.
    resume_from: str | None = None
    # weight_decay, beta1, beta2, eps and grad_clip: see OptimizerSettings (null: the recipe's)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16/fp16: autocast; fp16 adds a GradScaler
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # fsdp: PyTorch FSDP2 (fully_shard), for models DDP cannot fit
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory
    seed: int = 1337  # model init and data order
    log_interval: int = 10
    eval_interval: int = 300
    eval_windows: int = 64  # validation sequences per evaluation (spread over the val split)
    sample_interval: int = 0  # log a generated sample to MLflow every N steps (0: only at the end)
    checkpoint_interval: int = 600
    keep_checkpoints: int = 2  # the newest complete checkpoints kept; older ones (orphans too) are deleted
    # whole: rank 0 writes model.pt and optimizer.pt (loadable with torch.load); sharded: every rank
    # writes its own part with torch.distributed.checkpoint. auto: sharded under FSDP (no rank may
    # hold the whole state), whole under DDP (every rank holds it anyway; see BENCHMARKS.md).
    checkpoint_format: Literal["auto", "whole", "sharded"] = "auto"
    # async: training goes on once the checkpoint is on the worker's local disk, while Ray uploads it
    checkpoint_upload: Literal["async", "sync"] = "async"
    peak_tflops: float | None = None  # per-device peak for MFU; null: known GPUs by name, none on CPU

    def validate(self, model: ModelConfig, ray: RayConfig) -> None:
        """Check resolved train settings against the model and the worker count; raise ConfigError naming the key."""
        for key in ("max_steps", "batch_size", "micro_batch_size", "log_interval", "eval_interval",
                    "checkpoint_interval", "keep_checkpoints"):
            _require(getattr(self, key) > 0, f"train.{key}", "must be positive", getattr(self, key))
        _require(self.lr > 0, "train.lr", "must be positive", self.lr)
        min_lr = self.effective_min_lr()
        _require(0 <= min_lr <= self.lr, "train.min_lr", "must be in [0, train.lr]", min_lr)
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0", self.warmup_steps)
        if self.lr_decay_steps is not None:
            _require(self.lr_decay_steps > 0, "train.lr_decay_steps", "must be positive", self.lr_decay_steps)
        self.validate_optimizer("train")
        model.validate_for_training()
        _require(0 <= self.wsd_decay_fraction <= 1, "train.wsd_decay_fraction",
                 "must be in [0, 1] (0: no decay, a stable phase only)", self.wsd_decay_fraction)
        _require(self.muon_lr > 0, "train.muon_lr", "must be positive", self.muon_lr)
        _require(0 <= self.muon_momentum < 1, "train.muon_momentum", "must be in [0, 1)", self.muon_momentum)
        _require(self.muon_weight_decay >= 0, "train.muon_weight_decay", "must be >= 0", self.muon_weight_decay)
        _require(math.isfinite(self.z_loss) and self.z_loss >= 0, "train.z_loss", "must be >= 0 (0 is off)",
                 self.z_loss)
        if self.resume_from is not None and self.init_from is not None:
            raise ConfigError("train.resume_from", "set train.resume_from (a whole training state) or "
                                                   "train.init_from (weights only), not both")
        _require(self.eval_windows >= 0, "train.eval_windows", "must be >= 0", self.eval_windows)
        _require(self.sample_interval >= 0, "train.sample_interval", "must be >= 0 (0: only at the end)",
                 self.sample_interval)
        if self.peak_tflops is not None:
            _require(self.peak_tflops > 0, "train.peak_tflops", "must be positive or null", self.peak_tflops)
        if self.seq_len is not None:
            _require(self.seq_len > 0, "train.seq_len", "must be positive", self.seq_len)
            if model.block_size is not None and self.seq_len > model.block_size:
                raise ConfigError("train.seq_len", f"must be <= model.block_size ({self.seq_len} > {model.block_size})")
        per_step = self.micro_batch_size * max(ray.num_workers, 1)
        if self.batch_size % per_step != 0:
            raise ConfigError(
                "train.batch_size",
                f"must be a multiple of train.micro_batch_size × ray.num_workers = {per_step} (got {self.batch_size})",
            )

    def effective_checkpoint_format(self) -> str:
        if self.checkpoint_format != "auto":
            return self.checkpoint_format
        return "sharded" if self.parallelism == "fsdp" else "whole"

    def effective_seq_len(self, model: ModelConfig) -> int:
        return self.seq_len if self.seq_len is not None else model.block_size

    def effective_min_lr(self) -> float:
        return self.min_lr if self.min_lr is not None else self.lr / 10

    def grad_accum_steps(self, num_workers: int) -> int:
        return self.batch_size // (self.micro_batch_size * num_workers)

    def resolve(self, model: ModelConfig) -> None:
        """Fill null settings from the model preset and the recipe (in place; model already resolved)."""
        recipe = RECIPES[self.recipe]
        preset = training_recipe(model.preset)
        seq_len = self.effective_seq_len(model)
        if seq_len <= 0:
            raise ConfigError("train.seq_len", f"must be positive (got {seq_len})")
        if self.tokens_per_step is not None:
            if self.tokens_per_step <= 0 or self.tokens_per_step % seq_len:
                raise ConfigError("train.tokens_per_step",
                                  f"must be a positive multiple of the sequence length {seq_len} "
                                  f"(got {self.tokens_per_step})")
            self.batch_size = self.tokens_per_step // seq_len
        preset_values = preset.train_values(seq_len) if preset else {}
        preset_values.update(recipe.train_values())  # a fine-tuning recipe's lr and batch beat the pretraining preset's
        where = f"model preset {model.preset!r}" if model.preset else "a model without a preset"
        for name, example in (("batch_size", "train.batch_size=8 or train.tokens_per_step=524288"),
                              ("lr", "train.lr=6e-4")):
            if getattr(self, name) is None:
                if name not in preset_values:
                    raise ConfigError(f"train.{name}", f"must be set: {where} carries no default ({example})")
                setattr(self, name, preset_values[name])
        self.fill_from(recipe.optimizer)
        if self.min_lr is None:
            self.min_lr = self.lr * recipe.min_lr_ratio
        if self.warmup_steps is None:
            tokens = max(self.batch_size * seq_len, 1)  # a bad batch_size is reported by validation
            if recipe.warmup_fraction is not None:
                self.warmup_steps = min(math.ceil(recipe.warmup_fraction * self.max_steps), self.max_steps - 1)
                source = f"the {self.recipe} recipe's"
            elif preset is not None and preset.warmup_fraction is not None:
                self.warmup_steps = min(math.ceil(preset.warmup_fraction * self.max_steps), self.max_steps - 1)
                source = f"the {model.preset} preset's"
            elif preset is not None and preset.warmup_tokens is not None:
                self.warmup_steps, source = -(-preset.warmup_tokens // tokens), f"the {model.preset} preset's"
            elif recipe.warmup_steps is not None:
                self.warmup_steps, source = recipe.warmup_steps, f"the {self.recipe} recipe's"
            else:
                self.warmup_steps, source = -(-recipe.warmup_tokens // tokens), f"the {self.recipe} recipe's"
            if self.warmup_steps >= self.max_steps:
                raise ConfigError(
                    "train.warmup_steps",
                    f"{source} warmup is {self.warmup_steps:,} steps at "
                    f"{self.batch_size * seq_len:,} tokens/step, not shorter than train.max_steps={self.max_steps:,}; "
                    "set train.warmup_steps",
                )


@dataclass
class RayConfig:
    address: str | None = None  # null: join the cluster this process belongs to, else start a local one
    num_cpus: int | None = None  # start a fresh local Ray instance with this many CPUs (implies address=local)
    num_workers: int = 2  # Ray Train workers (DDP ranks)
    use_gpu: bool = False  # one GPU per worker, NCCL; else CPU workers with gloo
    # CPUs each worker asks for. auto: one each where that fits (and on a cluster that can grow), else an
    # equal share of a fixed cluster's CPUs beside a sweep's trial drivers (gptray/base/cluster.py).
    cpus_per_worker: float | Literal["auto"] = "auto"
    accelerator_type: str | None = None  # GPU workers only on nodes with this GPU (H100, A100, …): no mixed DDP group
    max_failures: int = 0  # worker-group restarts from the latest checkpoint before giving up
    autoscaling: bool | None = None  # whether an autoscaler can add nodes; null: ask the cluster
    # On a cluster that can grow, stop (exit 2) when the workers have waited this long for resources;
    # null: wait as long as it takes, saying every 30 s what is pending.
    wait_timeout_s: float | None = None

    def validate(self) -> None:
        """Check every ray setting; raise ConfigError naming the key."""
        _require(self.num_workers >= 1, "ray.num_workers", "must be >= 1", self.num_workers)
        _require(self.cpus_per_worker == "auto" or self.cpus_per_worker > 0, "ray.cpus_per_worker",
                 "must be positive or auto", self.cpus_per_worker)
        _require(self.max_failures >= -1, "ray.max_failures", "must be >= -1 (-1: retry forever)", self.max_failures)
        _require(self.accelerator_type is None or (bool(self.accelerator_type) and self.use_gpu),
                 "ray.accelerator_type", "needs ray.use_gpu=true and a GPU type such as H100", self.accelerator_type)
        _require(self.wait_timeout_s is None or self.wait_timeout_s > 0, "ray.wait_timeout_s",
                 "must be positive or null", self.wait_timeout_s)
        if self.num_cpus is not None:
            _require(self.num_cpus > 0, "ray.num_cpus", "must be positive", self.num_cpus)
            if self.address not in (None, "local"):
                raise ConfigError("ray.num_cpus",
                                  f"only applies to a local Ray instance, not ray.address={self.address!r}")


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # MLflow tracking URI; default sqlite:///<out_dir>/mlflow.db (local out_dir)
    experiment: str = "gptray"
    retry_seconds: float = 30.0  # after the server fails, wait this long before trying it again

    def validate(self) -> None:
        """Check every tracking setting; raise ConfigError naming the key."""
        _require(bool(self.experiment), "tracking.experiment", "must not be empty", self.experiment)
        _require(self.retry_seconds >= 0, "tracking.retry_seconds", "must be >= 0", self.retry_seconds)


@dataclass
class GenerateConfig:
    prompt: str = "\n"
    max_new_tokens: int = 200
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
        _require(self.max_new_tokens >= 0, "generate.max_new_tokens", "must be >= 0", self.max_new_tokens)
        _require(self.temperature >= 0, "generate.temperature", "must be >= 0 (0 is greedy)", self.temperature)
        _require(self.top_k is None or self.top_k > 0, "generate.top_k", "must be positive or null", self.top_k)
        _require(self.top_p is None or 0 < self.top_p <= 1, "generate.top_p", "must be in (0, 1] or null", self.top_p)
        _require(self.repetition_penalty > 0, "generate.repetition_penalty", "must be positive (1 is off)",
                 self.repetition_penalty)
        _require(self.num_beams >= 1, "generate.num_beams", "must be >= 1", self.num_beams)
        for i, stop in enumerate(self.stop):
            _require(bool(stop), f"generate.stop[{i}]", "must not be empty", stop)


HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"


@dataclass
class EvalConfig:
    """`gptray eval` on a checkpoint, and the tasks evaluated during training."""

    tasks: list[str] = field(default_factory=lambda: ["perplexity"])  # hellaswag, perplexity
    hellaswag: str = HELLASWAG_VAL_URL  # hellaswag_val.jsonl: a local path, or a URL downloaded once to the cache
    text_files: list[str] = field(default_factory=list)  # perplexity over these files instead of the token dataset
    dataset_dir: str | None = None  # token dataset for perplexity; null: the checkpoint's run's data.dataset_dir
    split: str = "val"  # its split
    max_length: int | None = None  # perplexity window (input tokens); null: the model's block_size
    stride: int | None = None  # perplexity window step; null: max_length / 2
    limit: int | None = None  # at most this many examples (HellaSwag) or windows (perplexity) per task
    batch_size: int = 4  # examples (all their endings) or windows per forward pass
    distributed: bool = True  # a Ray Data actor pool; false: in this process
    num_actors: int | None = None  # null: one per GPU, else one per CPU but one (at least 1), at most the batches
    cpus_per_actor: float = 1.0  # also the torch threads of each CPU actor
    device: str = "auto"  # auto: a GPU where there is one; cpu; cuda
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype of the forward passes
    train_tasks: list[str] = field(default_factory=list)  # evaluated during training, logged to the run
    train_interval: int | None = None  # every N steps (and at the last); null: train.eval_interval
    train_limit: int | None = None  # examples or windows per task during training; null: eval.limit

    def validate(self) -> None:
        """Check every eval setting; raise ConfigError naming the key."""
        for key in ("tasks", "train_tasks"):
            for i, task in enumerate(getattr(self, key)):
                _require(task in EVAL_TASKS, f"eval.{key}[{i}]", f"must be one of {', '.join(EVAL_TASKS)}", task)
        _require(bool(self.tasks), "eval.tasks", "must name at least one task", self.tasks)
        _require(bool(self.hellaswag), "eval.hellaswag", "must be a path or URL", self.hellaswag)
        for key in ("max_length", "stride", "limit", "num_actors", "train_interval", "train_limit"):
            value = getattr(self, key)
            _require(value is None or value > 0, f"eval.{key}", "must be positive or null", value)
        if self.max_length is not None and self.stride is not None:
            _require(self.stride <= self.max_length, "eval.stride", f"must be <= eval.max_length ({self.max_length})",
                     self.stride)
        _require(self.batch_size > 0, "eval.batch_size", "must be positive", self.batch_size)
        _require(self.cpus_per_actor > 0, "eval.cpus_per_actor", "must be positive", self.cpus_per_actor)
        _require(bool(self.split), "eval.split", "must name a split", self.split)


@dataclass
class ExperimentConfig:
    name: str = "quickstart"  # the run's name: its directory under out_dir and its MLflow run name
    out_dir: str = "runs"  # checkpoints, resolved configs and the default MLflow database live here
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
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

    def resolved(self, read_base: BaseModelReader | None = None) -> ExperimentConfig:
        """Presets filled in, paths made absolute, everything validated.

        A fine-tuning config (train.init_from set) takes its model from the base, whose config
        `read_base` reads (gptray.train.finetune.base_model_reader): the config package does no I/O.
        """
        config = ExperimentConfig.from_dict(self.to_dict())
        config.out_dir = absolute_path(config.out_dir)  # before read_base, which compares the run dir with the base
        if config.train.init_from:
            if not config.train.init_from.startswith(HF_PREFIX):
                config.train.init_from = absolute_path(config.train.init_from)
            if read_base is None:
                raise ConfigError("train.init_from", "a fine-tuning config resolves with its base model's config; "
                                                     "load it through the gptray CLI, a pipeline, or "
                                                     "gptray.train.finetune.load_finetune_config")
            config.model = finetune_model(config.model, read_base(config), RECIPES[config.train.recipe].dropout)
        else:
            _vocabulary_from_tokenizer(config.model, config.data.tokenizer)
            config.model = config.model.resolved(vocab_from_dataset=config.model.vocab_size is None)
        config.train.resolve(config.model)
        if config.train.resume_from is not None:
            config.train.resume_from = absolute_path(config.train.resume_from)
        config.data.dataset_dir = absolute_path(config.data.dataset_dir)
        if config.data.cache_dir is not None:
            config.data.cache_dir = absolute_path(config.data.cache_dir)
        if config.eval.dataset_dir is not None:
            config.eval.dataset_dir = absolute_path(config.eval.dataset_dir)
        config.eval.text_files = [absolute_path(p) for p in config.eval.text_files]
        if tokenizer_kind(config.data.tokenizer) == "file" and not is_uri(config.data.tokenizer):
            config.data.tokenizer = absolute_path(config.data.tokenizer)
        if not is_uri(config.eval.hellaswag):
            config.eval.hellaswag = absolute_path(config.eval.hellaswag)
        for source in config.data.sources:
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
        self.train.validate(self.model, self.ray)
        self.ray.validate()
        self.tracking.validate()
        self.generate.validate()
        self.eval.validate()
        self.tokenizer.validate()

    def _validate_out_dir(self) -> None:
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


def _require(ok: bool, key: str, message: str, value) -> None:
    if not ok:
        raise ConfigError(key, f"{message} (got {value!r})")


EVAL_TASKS = ("hellaswag", "perplexity")


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
