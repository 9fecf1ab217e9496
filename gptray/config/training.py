"""The training sections of a run's config: what and how long it trains (`train`), the optimizer, the learning
rate schedule, and checkpoints; each validates its own fields, and `resolve_training` fills what they leave null.

Settings left null are filled when the config resolves: the learning rate, batch size and warmup from
the model preset's recipe (presets.py: the GPT-3 paper's for GPT-3 sizes, gptray's CPU settings for
nano and tiny), the optimizer's other settings from `train.recipe` (recipes.py). Explicit values win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from gptray.config.checks import no_credentials, require
from gptray.config.model import ModelConfig
from gptray.config.optimizer import OptimizerSettings
from gptray.config.presets import training_recipe
from gptray.config.recipes import RECIPES
from gptray.core.errors import ConfigError
from gptray.core.shares import lockstep_batches

DEFAULT_MAX_STEPS = 1800  # train.max_steps when neither it nor train.epochs is set


@dataclass
class SpikeConfig:
    """Loss spikes (train.spike): a step whose loss is more than `sigmas` standard deviations above the mean
    of the last `window` steps' losses is not applied (OLMo-core's rule), once `min_history` are known."""

    enabled: bool = False  # skip (or rewind past) spiking steps
    window: int = 128  # the recent steps whose losses make the mean and deviation
    sigmas: float = 6.0  # how many standard deviations above the mean a spike is
    min_history: int | None = None  # null: window // 2 (OLMo-core's)
    # On a spike, rewind instead of skipping the one step (PaLM's remedy): reload the latest checkpoint before
    # it and skip every step from there through the spike and `rewind_after` steps after it (added to the
    # run's skip ranges, recorded in state.json). A run stops after max_rewinds rewinds.
    rewind: bool = False
    rewind_after: int = 0
    max_rewinds: int = 3

    def effective_min_history(self) -> int:
        return self.min_history if self.min_history is not None else self.window // 2

    def validate(self) -> None:
        require(self.window >= 2, "train.spike.window", "must be >= 2", self.window)
        require(math.isfinite(self.sigmas) and self.sigmas > 0, "train.spike.sigmas", "must be positive", self.sigmas)
        if self.min_history is not None:
            require(2 <= self.min_history <= self.window, "train.spike.min_history",
                    f"must be in [2, train.spike.window = {self.window}]", self.min_history)
        require(self.rewind_after >= 0, "train.spike.rewind_after", "must be >= 0", self.rewind_after)
        require(self.max_rewinds > 0, "train.spike.max_rewinds", "must be positive", self.max_rewinds)
        require(self.enabled or not self.rewind, "train.spike.rewind", "needs train.spike.enabled=true", self.rewind)


@dataclass
class TrainConfig:
    """What a run trains and for how long: steps, batches, the recipe and base it starts from, the numbers
    it computes in, and how often it logs, evaluates and samples."""

    # How long it trains: optimizer steps, or passes over the train split (epochs, fractions too: 0.5),
    # resolved to steps from the dataset's manifest when the run launches (gptray/train/epochs.py). Set
    # one of the two; with neither, max_steps is DEFAULT_MAX_STEPS.
    max_steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None  # global batch in sequences per optimizer step (all workers together)
    tokens_per_step: int | None = None  # when set, batch_size = tokens_per_step / seq_len (e.g. 524288)
    micro_batch_size: int = 4  # sequences per forward/backward on one worker
    seq_len: int | None = None  # tokens per sequence; default model.block_size
    # The optimizer settings of the GPT-3 or GPT-1/2 papers, or the usual GPT-2 fine-tuning settings
    # (small lr, short warmup, dropout on): what the optimizer and schedule sections leave null.
    recipe: Literal["gpt3", "gpt2", "finetune"] = "gpt3"
    # Fine-tune: start from these weights (a gptray checkpoint or run directory, a Hugging Face
    # GPT-2 directory, or hf:NAME) instead of a random init. The model keeps the base's architecture.
    init_from: str | None = None
    # z-loss (PaLM; OLMo, Levanter): the objective adds z_loss × mean(log² Z), Z the softmax normalizer of
    # each predicted token, which keeps the logits from drifting. train/loss stays the cross-entropy alone;
    # train/z_loss is the added term. 1e-4 is PaLM's value; 0 is off.
    z_loss: float = 0.0
    # bf16/fp16: autocast; fp16 adds a GradScaler. auto: bf16 on a GPU that has it, else fp32 (resolved
    # on each worker's device and logged as resolved: gptray/train/device_defaults.py).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # fsdp: PyTorch FSDP2 (fully_shard), for models DDP cannot fit
    compile: bool | Literal["auto"] = "auto"  # torch.compile the model; auto: on CUDA, off on a CPU
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory
    seed: int = 1337  # model init and data order
    log_interval: int = 10  # log training metrics every N steps
    eval_interval: int = 300  # evaluate on the val split every N steps (and at the last)
    eval_windows: int = 64  # validation sequences per evaluation (spread over the val split)
    sample_interval: int = 0  # log a generated sample to MLflow every N steps (0: only at the end)
    peak_tflops: float | None = None  # per-device peak for MFU; null: known GPUs by name, none on CPU
    # Steps whose update is never applied: a non-finite loss or gradient norm on any rank, a loss spike
    # (train.spike), or a step listed in skip_steps. The run stops (TrainingError) after this many
    # consecutive non-finite or spiking steps.
    max_skipped_steps: int = 3
    # [[first, last], …]: steps (numbered as logged: step n trains global batch n − 1) whose global batches
    # are not trained on; every other step reads the batch it would have read, at the learning rate it
    # would have had. For rewinding past a spike: resume from a checkpoint before it with its steps here.
    skip_steps: list[list[int] | int] = field(default_factory=list)  # a bare n is [n, n]
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    # FOR TESTS ONLY: [step, rank, factor] multiplies that rank's loss at that step (numbered as logged) by
    # factor (.nan: a non-finite step; 1000: a spike); [[step, rank, factor], …] for several. Empty, the
    # default, in every real run.
    test_scale_loss: list[list[float] | float] = field(default_factory=list)
    # FOR TESTS ONLY: a file holding a step number N; every rank waits before a step past N until the file
    # names a later one (tests and benchmarks that resize a run at known steps); while waiting, rank 0 writes
    # the step it waits at to the file's name + ".at". Null, the default, in every real run.
    test_hold_file: str | None = None

    # Keys that lived in `train` before it was split into sections: a config using one is refused with
    # the new key (configs saved with checkpoints are read with them moved: upgrade_saved_config).
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "optimizer": "optimizer.name", "lr": "optimizer.lr", "weight_decay": "optimizer.weight_decay",
        "beta1": "optimizer.beta1", "beta2": "optimizer.beta2", "eps": "optimizer.eps",
        "grad_clip": "optimizer.grad_clip", "muon_lr": "optimizer.muon_lr", "muon_momentum": "optimizer.muon_momentum",
        "muon_weight_decay": "optimizer.muon_weight_decay",
        "schedule": "schedule.name", "warmup_steps": "schedule.warmup_steps", "min_lr": "schedule.min_lr",
        "lr_decay_steps": "schedule.decay_steps", "wsd_decay_fraction": "schedule.wsd_decay_fraction",
        "wsd_decay_shape": "schedule.wsd_decay_shape",
        "checkpoint_interval": "checkpoint.interval", "keep_checkpoints": "checkpoint.keep",
        "checkpoint_format": "checkpoint.format", "checkpoint_upload": "checkpoint.upload",
        "resume_from": "checkpoint.resume_from",
    }

    def effective_seq_len(self, model: ModelConfig) -> int:
        return self.seq_len if self.seq_len is not None else model.block_size

    def grad_accum_steps(self, num_workers: int) -> int:
        """Micro-batches each rank runs a step at this world size: those of the largest share of the global
        batch (gptray/core/shares.py); a rank with a smaller share runs as many, the last counting nothing."""
        return lockstep_batches(self.batch_size, max(num_workers, 1), self.micro_batch_size)

    def validate(self, model: ModelConfig, num_workers: int) -> None:
        """Check resolved train settings against the model and the largest worker count a run may have
        (ray.num_workers, or its maximum); raise ConfigError naming the key."""
        no_credentials("train.init_from", self.init_from)
        model.validate_for_training()
        if self.epochs is not None:
            require(self.max_steps is None, "train.epochs", "set train.max_steps or train.epochs, not both "
                    f"(train.max_steps={self.max_steps}: write train.max_steps=null)", self.epochs)
            require(math.isfinite(self.epochs) and self.epochs > 0, "train.epochs", "must be positive", self.epochs)
        else:
            require(self.max_steps is not None and self.max_steps > 0, "train.max_steps", "must be positive",
                    self.max_steps)
        for key in ("batch_size", "micro_batch_size", "log_interval", "eval_interval"):
            require(getattr(self, key) > 0, f"train.{key}", "must be positive", getattr(self, key))
        require(math.isfinite(self.z_loss) and self.z_loss >= 0, "train.z_loss", "must be >= 0 (0 is off)",
                 self.z_loss)
        require(self.eval_windows >= 0, "train.eval_windows", "must be >= 0", self.eval_windows)
        require(self.sample_interval >= 0, "train.sample_interval", "must be >= 0 (0: only at the end)",
                 self.sample_interval)
        if self.peak_tflops is not None:
            require(self.peak_tflops > 0, "train.peak_tflops", "must be positive or null", self.peak_tflops)
        if self.seq_len is not None:
            require(self.seq_len > 0, "train.seq_len", "must be positive", self.seq_len)
            if model.block_size is not None and self.seq_len > model.block_size:
                raise ConfigError("train.seq_len", f"must be <= model.block_size ({self.seq_len} > {model.block_size})")
        self._validate_skips()
        # Any world size up to the batch trains the same run (uneven shares, each rank's loss weighted by its
        # share of the batch's targets); more ranks than windows would leave a rank with nothing to read.
        if num_workers > self.batch_size:
            raise ConfigError(
                "train.batch_size",
                f"{self.batch_size} windows cannot be shared by {num_workers} workers (ray.num_workers): every rank "
                f"needs at least one window a step, at micro-batches of {self.micro_batch_size} "
                f"(train.micro_batch_size). Raise train.batch_size to {num_workers} or more, or lower ray.num_workers",
            )


    def _validate_skips(self) -> None:
        require(self.max_skipped_steps > 0, "train.max_skipped_steps", "must be positive", self.max_skipped_steps)
        for i, pair in enumerate(self.skip_steps):
            pair = [pair, pair] if isinstance(pair, int) else pair
            require(len(pair) == 2 and 1 <= pair[0] <= pair[1], f"train.skip_steps[{i}]",
                    "must be a step or [first, last] with 1 <= first <= last", pair)
        self.spike.validate()
        for fault in self.test_scale_faults():
            require(len(fault) == 3 and fault[0] >= 1 and fault[1] >= 0, "train.test_scale_loss",
                    "must be [step, rank, factor] or a list of them (for tests only)", self.test_scale_loss)

    def test_scale_faults(self) -> list[list[float]]:
        """train.test_scale_loss as a list of [step, rank, factor] (tests only)."""
        faults = self.test_scale_loss
        if faults and not any(isinstance(f, list) for f in faults):
            return [list(faults)]
        return [f if isinstance(f, list) else [f] for f in faults]  # a bare number among lists: refused


@dataclass
class OptimizerConfig(OptimizerSettings):
    """The optimizer: AdamW, or Muon for the hidden matrices with AdamW for the rest. AdamW's settings
    (weight_decay, beta1, beta2, eps, grad_clip: see OptimizerSettings) left null take train.recipe's."""

    # adamw: AdamW for every parameter. muon: Muon (momentum orthogonalized by Newton–Schulz) for the
    # hidden matrices (each 2-D weight inside the transformer blocks), AdamW with the settings here
    # (lr, betas, eps, weight_decay) for the rest: embeddings, the head, norm gains, biases.
    name: Literal["adamw", "muon"] = "adamw"
    lr: float | None = None  # peak learning rate (AdamW's); null: the model preset's, or train.recipe's
    # Muon's settings: the defaults modded-nanogpt and its Muon reference (KellerJordan/Muon's README)
    # publish: lr 0.02 (scaled by √max(1, rows/cols) per matrix), momentum 0.95 with Nesterov, 5
    # Newton–Schulz steps, weight decay 0.01 (the README's). The schedule scales muon_lr as it scales lr
    # (warmup, decay, min_lr in proportion). Muon's decay per step is muon_lr × muon_weight_decay: 2e-4 at
    # these values, the same as nano's AdamW (2e-3 × 0.1).
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.01

    def validate(self) -> None:
        """Check resolved optimizer settings; raise ConfigError naming the key."""
        require(self.lr > 0, "optimizer.lr", "must be positive", self.lr)
        self.validate_optimizer("optimizer")
        require(self.muon_lr > 0, "optimizer.muon_lr", "must be positive", self.muon_lr)
        require(0 <= self.muon_momentum < 1, "optimizer.muon_momentum", "must be in [0, 1)", self.muon_momentum)
        require(self.muon_weight_decay >= 0, "optimizer.muon_weight_decay", "must be >= 0", self.muon_weight_decay)


@dataclass
class ScheduleConfig:
    """The learning rate schedule: a linear warmup to optimizer.lr, then a decay to min_lr."""

    # After the warmup: cosine (GPT-3) or linear decay to min_lr at decay_steps; or wsd
    # (warmup-stable-decay): lr held at its peak, then decayed to min_lr over the last
    # wsd_decay_fraction of decay_steps. A WSD checkpoint from before its decay began continues
    # into any WSD run whose decay begins at or after its step (checkpoint.resume_from; see docs/training.md).
    name: Literal["cosine", "wsd", "linear"] = "cosine"
    warmup_steps: int | None = None  # null: the preset's, else the recipe's (GPT-3 375M tokens, GPT-2 2000 steps)
    min_lr: float | None = None  # the end of the decay; null: optimizer.lr × the recipe's ratio
    decay_steps: int | None = None  # the decay reaches min_lr here; default train.max_steps
    # 0.2 and 1-sqrt (lr × (1 − √progress)): Hägele et al. 2024 ("Scaling Laws and Compute-Optimal
    # Training Beyond Fixed Training Durations") found a 20% cooldown of this shape matches cosine.
    # 0 never decays: a stable phase only, to be continued with a decay later.
    wsd_decay_fraction: float = 0.2
    wsd_decay_shape: Literal["1-sqrt", "linear", "cosine"] = "1-sqrt"

    def validate(self, lr: float) -> None:
        """Check resolved schedule settings against the peak lr; raise ConfigError naming the key."""
        require(0 <= self.min_lr <= lr, "schedule.min_lr", f"must be in [0, optimizer.lr = {lr:g}]", self.min_lr)
        # null only while train.epochs waits for the dataset to give the steps a warmup fraction is of
        if self.warmup_steps is not None:
            require(self.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0", self.warmup_steps)
        if self.decay_steps is not None:
            require(self.decay_steps > 0, "schedule.decay_steps", "must be positive", self.decay_steps)
        require(0 <= self.wsd_decay_fraction <= 1, "schedule.wsd_decay_fraction",
                 "must be in [0, 1] (0: no decay, a stable phase only)", self.wsd_decay_fraction)


@dataclass
class CheckpointConfig:
    """How often a run checkpoints, how many it keeps, in which format, and where a new run starts from."""

    interval: int = 600  # optimizer steps between checkpoints (and one at the last step)
    # Optimizer steps between asking Ray Train whether a node of the run is about to be preempted (a spot
    # reclaim, which Ray sees as a node drain; only an elastic run, ray.num_workers: [min, max], starts Ray's
    # watcher). Once one is, the run checkpoints at each of these steps until Ray restarts the group without
    # that node, so a reclaim costs at most this many steps. The answer is a collective (one round trip
    # through Ray); Ray's watcher looks every 5 s. Keep this × step time to a few seconds, well inside the
    # notice (30 s on GCP, 2 min on AWS): 10 for GPT-2 124M on 8-GPU nodes. 0: never ask.
    preemption_check_interval: int = 10
    keep: int = 2  # the newest complete checkpoints kept; older ones (orphans too) are deleted
    # whole: rank 0 writes model.pt and optimizer.pt (loadable with torch.load); sharded: every rank
    # writes its own part with torch.distributed.checkpoint. auto: sharded under FSDP (no rank may
    # hold the whole state), whole under DDP (every rank holds it anyway; see BENCHMARKS.md).
    format: Literal["auto", "whole", "sharded"] = "auto"
    # async: training goes on once the checkpoint is on the worker's local disk, while Ray uploads it
    upload: Literal["async", "sync"] = "async"
    # Start this run from another run's checkpoint (a checkpoint or run directory, local or on an object
    # store): weights, optimizer state, step and tokens seen, as if this run had written it. Used on the
    # run's first launch only (later launches resume from the run's own checkpoints). For continuing a
    # WSD stable phase with a decay to a new max_steps under a new name.
    resume_from: str | None = None

    def effective_format(self, parallelism: str) -> str:
        if self.format != "auto":
            return self.format
        return "sharded" if parallelism == "fsdp" else "whole"

    def validate(self, init_from: str | None) -> None:
        """Check checkpoint settings; raise ConfigError naming the key."""
        no_credentials("checkpoint.resume_from", self.resume_from)
        require(self.interval > 0, "checkpoint.interval", "must be positive", self.interval)
        require(self.keep > 0, "checkpoint.keep", "must be positive", self.keep)
        require(self.preemption_check_interval >= 0, "checkpoint.preemption_check_interval",
                "must be 0 (never ask) or positive", self.preemption_check_interval)
        if self.resume_from is not None and init_from is not None:
            raise ConfigError("checkpoint.resume_from", "set checkpoint.resume_from (a whole training state) or "
                                                        "train.init_from (weights only), not both")


def resolve_training(train: TrainConfig, optimizer: OptimizerConfig, schedule: ScheduleConfig,
                     model: ModelConfig) -> None:
    """Fill null settings from the model preset's recipe and train.recipe (in place; the model resolved)."""
    recipe = RECIPES[train.recipe]
    preset = training_recipe(model.preset)
    if train.max_steps is None and train.epochs is None:
        train.max_steps = DEFAULT_MAX_STEPS
    seq_len = train.effective_seq_len(model)
    if seq_len <= 0:
        raise ConfigError("train.seq_len", f"must be positive (got {seq_len})")
    if train.tokens_per_step is not None:
        if train.tokens_per_step <= 0 or train.tokens_per_step % seq_len:
            raise ConfigError("train.tokens_per_step", f"must be a positive multiple of the sequence length "
                                                       f"{seq_len} (got {train.tokens_per_step})")
        train.batch_size = train.tokens_per_step // seq_len
    # A fine-tuning recipe's lr and batch beat the pretraining preset's.
    where = f"model preset {model.preset!r}" if model.preset else "a model without a preset"
    if train.batch_size is None:
        train.batch_size = _first_given((recipe, preset), lambda r: r.batch_sequences(seq_len), "train.batch_size",
                                        f"{where} carries no default (train.batch_size=8 or "
                                        "train.tokens_per_step=524288)")
    if optimizer.lr is None:
        optimizer.lr = _first_given((recipe, preset), lambda r: r.lr, "optimizer.lr",
                                    f"{where} carries no default (optimizer.lr=6e-4)")
    optimizer.fill_from(recipe.optimizer)
    if schedule.min_lr is None:
        schedule.min_lr = optimizer.lr * recipe.min_lr_ratio
    if schedule.warmup_steps is None and not (train.max_steps is None and _warmup_follows_steps(recipe, preset)):
        schedule.warmup_steps, source = _warmup(train, recipe, preset, model, seq_len)
        if train.max_steps is not None and schedule.warmup_steps >= train.max_steps:
            raise ConfigError("schedule.warmup_steps", f"{source} warmup is {schedule.warmup_steps:,} steps at "
                                                       f"{train.batch_size * seq_len:,} tokens/step, not shorter "
                                                       f"than train.max_steps={train.max_steps:,}; set "
                                                       "schedule.warmup_steps")


def _first_given(recipes, value_of, key: str, missing: str):
    for recipe in recipes:
        if recipe is not None and (value := value_of(recipe)) is not None:
            return value
    raise ConfigError(key, f"must be set: {missing}")


def _warmup_follows_steps(recipe, preset) -> bool:
    """Whether the default warmup is a share of train.max_steps (so train.epochs must resolve first)."""
    return recipe.warmup_fraction is not None or (preset is not None and preset.warmup_fraction is not None)


def _warmup(train: TrainConfig, recipe, preset, model: ModelConfig, seq_len: int) -> tuple[int, str]:
    """The warmup a run takes when it sets none, and whose it is: a fraction of the steps (the fine-tuning
    recipe's, else the preset's), the preset's tokens, else train.recipe's steps or tokens."""
    tokens = max(train.batch_size * seq_len, 1)  # a bad batch_size is reported by validation
    if recipe.warmup_fraction is not None:
        return min(math.ceil(recipe.warmup_fraction * train.max_steps), train.max_steps - 1), \
            f"the {train.recipe} recipe's"
    if preset is not None and preset.warmup_fraction is not None:
        return min(math.ceil(preset.warmup_fraction * train.max_steps), train.max_steps - 1), \
            f"the {model.preset} preset's"
    if preset is not None and preset.warmup_tokens is not None:
        return -(-preset.warmup_tokens // tokens), f"the {model.preset} preset's"
    if recipe.warmup_steps is not None:
        return recipe.warmup_steps, f"the {train.recipe} recipe's"
    return -(-recipe.warmup_tokens // tokens), f"the {train.recipe} recipe's"


def upgrade_saved_config(data: dict) -> dict:
    """A config as a checkpoint or run saved it, with the keys of the layout before `train` was split moved
    into their sections (a run saved before the split resumes, generates and evaluates as it did)."""
    train = data.get("train")
    if not isinstance(train, dict) or not any(key in train for key in TrainConfig.MOVED_KEYS):
        return data
    data = {**data, "train": dict(train)}
    for old, new in TrainConfig.MOVED_KEYS.items():
        if old in data["train"]:
            section, key = new.split(".")
            data[section] = {**(data.get(section) or {}), key: data["train"].pop(old)}
    return data
