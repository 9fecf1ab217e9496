"""The training engine: model, parallelism, precision, optimizer, steps, evaluation — without Ray.

Ray Train's worker loop (loop.py) drives one engine per rank; the throughput benchmark drives
one in a plain process. Collectives go through torch.distributed when a process group is up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gptray.checkpoint.sharded import load_sharded
from gptray.config import ExperimentConfig, GenerateConfig
from gptray.core.devices import all_reduce_sum, autocast, distributed
from gptray.core.errors import ConfigError
from gptray.core.shares import lockstep_batches, share
from gptray.data.global_order import IGNORE_INDEX, eval_starts, gather_windows
from gptray.data.token_bytes import bits_per_byte
from gptray.data.train_windows import TrainWindows, WholeSplitWindows
from gptray.generation import generate_text
from gptray.model import GPT
from gptray.model.gpt import cross_entropy_and_z_loss
from gptray.model.masks import require_flex_training
from gptray.train.device_defaults import for_device
from gptray.train.flops import device_peak_flops, flops_per_token
from gptray.train.numerics import StepGuard, Verdict
from gptray.train.optim import LrSchedule, build_optimizers, set_learning_rates


def step_seed(seed: int, step: int, rank: int) -> int:
    """The RNG seed of one rank at one step: dropout masks are a pure function of the step too."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


@dataclass
class Validation:
    """What evaluate() measures over the fixed validation windows (the same on every rank)."""

    loss: float  # mean cross-entropy per counted target (nats); NaN where no target counts
    bpb: float | None  # bits per byte of the same targets (gptray/data/token_bytes.py); None without a byte table


@dataclass
class StepResult:
    # this rank's part of the global batch's mean cross-entropy, times the world size: averaged over ranks, the
    # mean over the global batch's counted targets (engine._weighted_micro_batches)
    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    data_seconds: float  # spent gathering windows and copying them to the device
    z_loss: torch.Tensor | None = None  # the z-loss term added to the objective, as `loss` (train.z_loss > 0)
    verdict: Verdict = dataclasses.field(default_factory=lambda: Verdict(True))  # whether the update was applied
    global_loss: float | None = None  # `loss` averaged over ranks (None where the step was not computed)
    grad_norm_value: float | None = None  # the global gradient norm before clipping, as a number
    overflowed: bool = False  # fp16: the GradScaler skipped the update (overflowed gradients) and lowered its scale


class TrainingEngine:
    def __init__(self, config: ExperimentConfig, device: torch.device, rank: int, world_size: int,
                 train_data: np.ndarray | TrainWindows, val_tokens: np.ndarray,
                 train_loss_mask: np.ndarray | None = None, val_loss_mask: np.ndarray | None = None,
                 val_starts: np.ndarray | None = None, token_bytes: np.ndarray | None = None):
        """`train_data`: the training windows (train_windows.py), or a token array to train on in the
        global order. Prompt/completion data has loss masks: 0 where a token is prompt, whose
        prediction the loss leaves out. `val_starts`: the validation windows in `val_tokens`
        (default: train.eval_windows spread over it). `token_bytes`: the UTF-8 bytes of each token id
        (token_bytes.byte_table), for validation's bits per byte; without it evaluate() gives none."""
        self.config = config
        self.train_config = for_device(config.train, device)  # precision and compile: auto resolved here
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.seq_len = self.train_config.effective_seq_len(config.model)
        if isinstance(train_data, np.ndarray):
            train_data = WholeSplitWindows(train_data, self.seq_len, self.train_config.seed,
                                           self.train_config.batch_size,
                                           train_loss_mask)
        self.train_data = train_data
        self.val_tokens, self.val_loss_mask = val_tokens, val_loss_mask
        self.val_starts = val_starts if val_starts is not None else \
            eval_starts(len(val_tokens), self.seq_len, self.train_config.eval_windows)

        if config.model.attention_impl == "flex":
            require_flex_training(device)  # before any work: the first backward pass would fail
        torch.manual_seed(self.train_config.seed)  # identical initial weights on every rank
        self.module = GPT(config.model).to(device)  # the unwrapped model (FSDP shards it in place)
        self.token_bytes = None  # (vocab_size,) int64 on the device: a lookup by target id
        if token_bytes is not None:
            table = np.zeros(max(len(token_bytes), config.model.vocab_size), dtype=np.int64)
            table[: len(token_bytes)] = token_bytes  # a padded vocabulary's extra ids stand for no bytes
            self.token_bytes = torch.from_numpy(table).to(device)
        self.num_parameters = self.module.num_parameters()
        if self.train_config.activation_checkpointing:  # before wrapping and compiling, which see the blocks as set
            self.module.set_activation_checkpointing(True)
        self.training_model = self._parallelize()  # what training steps run through
        # Evaluation and sampling need no gradient sync: DDP's replicas each hold the whole model.
        self.eval_model = self.module if self.train_config.parallelism == "ddp" else self.training_model
        self.optimizers = build_optimizers(self.module, config.optimizer, device)  # AdamW (and Muon: optimizer.name)
        self.lr_schedule = LrSchedule.of(config)
        self.scaler = torch.amp.GradScaler(device.type) if self.train_config.precision == "fp16" else None
        self.micro_steps = self.train_config.grad_accum_steps(world_size)  # the largest share's (core/shares.py)
        self.tokens_per_step = self.train_config.batch_size * self.seq_len
        self.flops_per_token = flops_per_token(config.model, self.num_parameters, self.seq_len)
        self.peak_flops = device_peak_flops(device, self.train_config.precision, self.train_config.peak_tflops)

    def _parallelize(self) -> torch.nn.Module:
        if self.train_config.parallelism == "fsdp":
            if not dist.is_available() or not dist.is_initialized():
                raise ConfigError("train.parallelism", "fsdp needs a torch.distributed process group (Ray Train)")
            from torch.distributed.fsdp import fully_shard

            # Shard each block, then the rest (embeddings, final norm, tied head) at the root.
            for block in self.module.transformer.h:
                fully_shard(block)
            fully_shard(self.module)
            return torch.compile(self.module) if self.train_config.compile else self.module
        model = torch.compile(self.module) if self.train_config.compile else self.module
        if distributed():
            device_ids = [self.device] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=device_ids)
        return model

    def autocast(self):
        return autocast(self.device, self.train_config.precision)

    @contextlib.contextmanager
    def _gradient_sync(self, enabled: bool):
        """Gradients are reduced across ranks once per optimizer step, on its last micro-batch."""
        if enabled or not distributed():
            yield
        elif isinstance(self.training_model, DistributedDataParallel):
            with self.training_model.no_sync():
                yield
        else:  # FSDP2
            self.module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def train_step(self, step: int, guard: StepGuard | None = None) -> StepResult:
        """Optimizer step `step` (0-based): this rank's micro-batches, one gradient sync, one update. With a
        `guard` (numerics.py), a step in train.skip_steps is not computed, and one whose loss or gradient norm
        is not finite on any rank, or that spikes, is computed but not applied, on every rank alike."""
        torch.manual_seed(step_seed(self.train_config.seed, step, self.rank))
        lr = set_learning_rates(self.optimizers, step, self.lr_schedule)
        if guard is not None and guard.configured(step + 1):
            nothing = torch.full((), math.nan, device=self.device)
            return StepResult(nothing, nothing, lr, 0.0, verdict=guard.skipped_configured())
        loss_sum, z_sum, data_seconds = self.accumulate_gradients(step)
        if self.scaler is not None:
            for optimizer in self.optimizers:
                self.scaler.unscale_(optimizer)
        clip = self.config.optimizer.grad_clip or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip)
        global_loss, nonfinite, norm = self._step_numbers(loss_sum, grad_norm)
        verdict = guard.judge(step + 1, global_loss, nonfinite) if guard is not None else Verdict(True)
        overflowed = self.scaler is not None and not math.isfinite(norm) and verdict.apply
        for optimizer in self.optimizers if verdict.apply else []:
            if self.scaler is not None:
                self.scaler.step(optimizer)  # skipped, for every optimizer, where the gradients overflowed
            else:
                optimizer.step()
        if self.scaler is not None:
            self.scaler.update()  # unscale_ recorded the overflow check it needs, applied or not
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_sum, grad_norm, lr, data_seconds,
                          z_sum if self.train_config.z_loss else None,
                          verdict=verdict, global_loss=global_loss, grad_norm_value=norm, overflowed=overflowed)

    def accumulate_gradients(self, step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Forward and backward passes over this rank's micro-batches at `step`, the gradients reduced over
        the ranks on the last: (this rank's part of the loss, of the z-loss term, seconds spent on data),
        each part times the world size (StepResult.loss)."""
        scale_loss = self._test_loss_factor(step)
        loss_sum = torch.zeros((), device=self.device)
        z_sum = torch.zeros((), device=self.device)
        data_start = time.perf_counter()
        self.train_data.begin_step(step)
        batches = self._weighted_micro_batches(step)
        data_seconds = time.perf_counter() - data_start
        for i, (x, y, weight) in enumerate(batches):
            data_start = time.perf_counter()
            x, y = self._to_device(x), self._to_device(y)
            data_seconds += time.perf_counter() - data_start
            with self._gradient_sync(i == len(batches) - 1):
                with self.autocast():
                    logits, loss, z_loss = self._losses(x, y)
                if scale_loss is not None:
                    loss = loss * scale_loss
                if not weight:  # nothing counted (all prompt, or a pad): the mean over no tokens is NaN,
                    loss = logits.sum() * 0.0  # but DDP still needs this rank's (zero) gradients
                    z_loss = loss if z_loss is not None else None
                loss_sum += loss.detach() * weight
                if z_loss is not None:
                    z_sum += z_loss.detach() * weight
                    loss = loss + z_loss  # the objective; train/loss stays the cross-entropy
                scaled = loss * weight
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss_sum, z_sum, data_seconds

    def _weighted_micro_batches(self, step: int) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """(inputs, targets, weight) of each micro-batch this rank runs at `step`. A micro-batch's mean loss
        times its weight, summed over micro-batches and averaged over ranks (as DDP and FSDP average
        gradients), is the mean over the whole global batch's counted targets at any world size, whatever
        each rank's share (rank_shares.py): the weight is the micro-batch's counted targets × world size /
        the global batch's. Every rank runs self.micro_steps of them; a short share's last ones are a single
        window counting nothing."""
        batches = []
        for windows in self.train_data.rank_micro_batches(step, self.rank, self.world_size,
                                                          self.train_config.micro_batch_size):
            x, y = self.train_data.gather(windows)
            batches.append((x, y, self._counted_targets(x, y)))
        while len(batches) < self.micro_steps:  # FSDP's per-forward all-gathers and DDP's buffer syncs pair up
            x, y, _ = batches[0]
            batches.append((x[:1], np.full_like(y[:1], IGNORE_INDEX), 0))
        total = self._global_counted_targets(step)
        return [(x, y, count * self.world_size / total if total else 0.0) for x, y, count in batches]

    def _global_counted_targets(self, step: int) -> int:
        """Targets the loss counts in the whole global batch at `step`, known to every rank without a
        collective: the batch is a pure function of the step. Unmasked windows count all their targets;
        masked ones (or a prefix pattern's) are gathered and counted, all ranks' (from the same blocks of
        the node's cache that this step reads anyway)."""
        if not self.train_data.masked and self.config.model.attention != "prefix":
            return self.train_config.batch_size * self.seq_len
        windows = np.concatenate(self.train_data.rank_micro_batches(step, 0, 1, self.train_config.batch_size))
        return self._counted_targets(*self.train_data.gather(windows))

    def _counted_targets(self, x: np.ndarray, y: np.ndarray) -> int:
        """Targets the loss counts in a micro-batch: not masked (prompt), and not dropped by the attention
        pattern (a prefix's)."""
        if self.config.model.attention == "prefix":
            y = self.module.prediction_targets(torch.from_numpy(y), torch.from_numpy(x)).numpy()
        return int((y != IGNORE_INDEX).sum())

    def _step_numbers(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> tuple[float, bool, float]:
        """(loss averaged over ranks, whether any rank's loss or gradient norm is not finite, the gradient
        norm), from one all-reduce: every rank gets the same answer, so all apply a step or none does. Under
        fp16 a non-finite gradient norm is the GradScaler's overflow, which skips the update itself."""
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        bad = ~torch.isfinite(loss)
        if self.scaler is None:
            bad = bad | ~torch.isfinite(norm)
        summed = all_reduce_sum(torch.stack([loss.detach().float(), bad.float(), norm.detach().float()]))
        total, flags, norms = summed.tolist()  # the one host sync a step makes for this
        return total / self.world_size, flags > 0, norms / self.world_size

    def _test_loss_factor(self, step: int) -> float | None:
        """train.test_scale_loss (for tests only): the factor this rank's loss takes at this step, if any."""
        for fault in self.train_config.test_scale_faults():
            if int(fault[0]) == step + 1 and int(fault[1]) == self.rank:
                return float(fault[2])
        return None

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits, mean cross-entropy, and the z-loss term where train.z_loss is on (else None)."""
        if not self.train_config.z_loss:
            logits, loss = self.training_model(x, y)
            return logits, loss, None
        logits, _ = self.training_model(x)
        y = self.module.prediction_targets(y, x)  # as forward does: a prefix's targets are not counted
        return logits, *cross_entropy_and_z_loss(logits, y, self.train_config.z_loss)

    def global_mean(self, value: torch.Tensor) -> float:
        """Mean of a per-rank scalar over all ranks (a collective: every rank must call it)."""
        return (all_reduce_sum(value.detach().float().clone()) / self.world_size).item()

    @torch.no_grad()
    def evaluate(self) -> Validation:
        """Mean loss (and bits per byte) over the fixed validation windows, spread over the ranks (a collective)."""
        micro = self.train_config.micro_batch_size
        mine = share(self.val_starts, self.rank, self.world_size)
        # Every rank runs the same number of forward passes (FSDP's all-gathers must pair up):
        # short ranks pad with a window whose targets are all ignored.
        passes = lockstep_batches(len(self.val_starts), self.world_size, micro)
        # (sum of token losses in nats, counted targets, their UTF-8 bytes)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.eval_model.eval()
        for p in range(passes):
            starts = mine[p * micro : (p + 1) * micro]
            real = len(starts)
            if real < micro:
                starts = np.concatenate([starts, np.zeros(micro - real, dtype=np.int64)])
            x, y = gather_windows(self.val_tokens, starts, self.seq_len, self.val_loss_mask)
            y[real:] = IGNORE_INDEX
            counted = int((y != IGNORE_INDEX).sum())
            targets = self._to_device(y)
            with self.autocast():
                _, loss = self.eval_model(self._to_device(x), targets)
            if counted:  # the mean over the counted tokens, times their number: their sum
                totals[0] += loss.double() * counted
                totals[1] += counted
                if self.token_bytes is not None:
                    totals[2] += self.token_bytes[targets[targets != IGNORE_INDEX]].sum()
        self.eval_model.train()
        all_reduce_sum(totals)
        nats, tokens, num_bytes = totals.tolist()
        loss = nats / tokens if tokens > 0 else float("nan")
        bpb = None
        if self.token_bytes is not None:
            bpb = bits_per_byte(nats, num_bytes) if tokens > 0 else float("nan")
        return Validation(loss, bpb)

    def has_validation(self) -> bool:
        return len(self.val_starts) > 0

    @torch.no_grad()
    def sample(self, tokenizer, settings: GenerateConfig) -> str | None:
        """A generated sample from the current model; rank 0 gets the text (FSDP: all ranks take part)."""

        if self.train_config.parallelism == "ddp" and self.rank != 0:
            return None
        module = self.module
        with self.autocast():
            text = generate_text(module, tokenizer, settings)
        module.train()
        return text if self.rank == 0 else None

    def full_state(self) -> tuple[dict, dict, dict | None]:
        """Whole (unsharded) model and optimizer state, on CPU, keyed by parameter name (a collective).

        On CPU the tensors may be the live ones: save them (as checkpoints do) before training on.
        """
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.module, options=options)
        optimizer_state = get_optimizer_state_dict(self.module, self.optimizers, options=options)
        scaler_state = self.scaler.state_dict() if self.scaler is not None else None
        return model_state, optimizer_state, scaler_state

    def load_full_state(self, model_state: dict, optimizer_state: dict | None = None) -> None:
        """Load whole state as `full_state` gives it (every rank passes it; FSDP keeps its own shard). Without
        `optimizer_state` only the weights: fine-tuning starts its optimizer fresh."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.module, model_state, options=options)
        if optimizer_state is not None:
            set_optimizer_state_dict(self.module, self.optimizers, optimizer_state, options=options)

    def load_scaler(self, scaler_state: dict | None) -> None:
        """fp16's loss scale as a checkpoint saved it (nothing to do in fp32/bf16, or for a checkpoint without one)."""
        if self.scaler is not None and scaler_state is not None:
            self.scaler.load_state_dict(scaler_state)

    def sharded_state(self) -> dict:
        """Model and optimizer state as this rank holds it, for torch.distributed.checkpoint: FSDP's
        shards as DTensors (no rank gathers the whole), DDP's replicas as plain tensors."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.module, self.optimizers)
        return {"model": model_state, "optimizer": optimizer_state}

    def load_sharded(self, directory, with_optimizer: bool = True) -> None:
        """Load a sharded checkpoint into this rank's model (and optimizer): each rank reads only the
        pieces it holds, whatever world size or parallelism wrote the checkpoint (a collective)."""
        from torch.distributed.checkpoint.state_dict import (
            get_model_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        # Not sharded_state() without the optimizer: asking for an optimizer's state dict gives a fresh
        # optimizer a state (torch takes a zero step), and fine-tuning must start from none.
        state = self.sharded_state() if with_optimizer else {"model": get_model_state_dict(self.module)}
        load_sharded(directory, state)
        set_model_state_dict(self.module, state["model"])
        if with_optimizer:
            set_optimizer_state_dict(self.module, self.optimizers, state["optimizer"])

    def mfu(self, tokens_per_second: float) -> float | None:
        """Model FLOPs utilization of the whole worker group, where the device peak is known."""
        if self.peak_flops is None:
            return None
        return self.flops_per_token * tokens_per_second / (self.peak_flops * self.world_size)
