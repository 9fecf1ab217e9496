"""When the worker loop logs, evaluates, samples and checkpoints: one pure function of the step."""

from __future__ import annotations

from dataclasses import dataclass

from gptray.config import ExperimentConfig


@dataclass(frozen=True)
class Due:
    """What falls due after one optimizer step."""

    log: bool = False
    eval: bool = False  # validation loss
    tasks: bool = False  # eval.train_tasks (HellaSwag, perplexity, harness tasks)
    sample: bool = False
    checkpoint: bool = False

    @property
    def anything(self) -> bool:
        return self.log or self.pauses_training

    @property
    def pauses_training(self) -> bool:
        """Work that is not training time: the throughput clock restarts after it."""
        return self.eval or self.tasks or self.sample or self.checkpoint


@dataclass(frozen=True)
class Cadence:
    max_steps: int
    log_interval: int
    eval_interval: int | None  # None: no validation split to evaluate
    tasks_interval: int | None  # None: no eval.train_tasks
    sample_interval: int  # 0: only the driver's final sample
    checkpoint_interval: int

    @classmethod
    def of(cls, config: ExperimentConfig, has_validation: bool, tasks_interval: int | None) -> Cadence:
        train, checkpoint = config.train, config.checkpoint
        return cls(max_steps=train.max_steps, log_interval=train.log_interval,
                   eval_interval=train.eval_interval if has_validation else None, tasks_interval=tasks_interval,
                   sample_interval=train.sample_interval, checkpoint_interval=checkpoint.interval)

    def at(self, step: int) -> Due:
        """What is due once `step` optimizer steps are done. The last step logs, evaluates and checkpoints;
        the first logs, so a run shows its starting loss at once. Every rank gets the same answer, so the
        collectives of evaluation and checkpointing pair up."""
        last = step == self.max_steps
        return Due(
            log=step % self.log_interval == 0 or last or step == 1,
            eval=self.eval_interval is not None and (step % self.eval_interval == 0 or last),
            tasks=self.tasks_interval is not None and (step % self.tasks_interval == 0 or last),
            sample=self.sample_interval > 0 and step % self.sample_interval == 0,
            checkpoint=step % self.checkpoint_interval == 0 or last,
        )


def validates_at(config: ExperimentConfig, step: int) -> bool:
    """Whether the checkpoint at `step` is one Ray Train's asynchronous validation evaluates (eval.train_async):
    every eval.train_interval steps and the last (the config makes the interval a multiple of checkpoint.interval,
    so a checkpoint falls at each)."""
    if not config.eval.train_async:
        return False
    return step % config.train_tasks_interval() == 0 or step == config.train.max_steps
