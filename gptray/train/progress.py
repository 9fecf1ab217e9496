"""Training's bar of optimizer steps with its ETA, on the launching terminal; elsewhere the step lines alone."""

from __future__ import annotations

from gptray.core.progress_bar import logs_above, progress_bar, ray_worker_bar


class StepBar:
    """Rank 0's bar of steps to train.max_steps. In local mode it draws on this process's terminal, gptray's
    log lines printing above it; on a Ray Train worker Ray draws it on the driver's, where Ray clears it
    around the forwarded step lines. It does nothing where the driver's console is not a terminal (a log
    file, CI, a `ray job submit` job, a Tune trial): the step lines say the same there, as they always have."""

    def __init__(self, bar=None, in_this_process: bool = False):
        self.bar = bar
        self._logs = logs_above(bar if in_this_process else None)
        self._logs.__enter__()

    @classmethod
    def open(cls, shown: bool, step: int, max_steps: int, in_ray_worker: bool, stream=None) -> StepBar:
        """`shown`: the driver is on a terminal (WorkerInputs.progress_bar); `step`: where the run resumes."""
        if not shown or step >= max_steps:
            return cls()
        if in_ray_worker:
            return cls(ray_worker_bar(max_steps, "train", "step", initial=step))
        return cls(progress_bar(max_steps, "train", "step", stream, initial=step), in_this_process=True)

    def at(self, step: int) -> None:
        """The run is at `step` (a rewind goes back)."""
        if self.bar is not None and step != self.bar.n:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        """Closes the bar (once: the driver's copy of a Ray worker's bar cannot close twice)."""
        if self.bar is not None:
            self._logs.__exit__(None, None, None)
            self.bar.close()
            self.bar = None
