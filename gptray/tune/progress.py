"""A sweep's bar of trials done (finished, stopped or failed) out of its total, with an ETA, on a terminal."""

from __future__ import annotations

from gptray.core.progress_bar import on_terminal, progress_bar


def sweep_console(total: int, stream=None) -> dict:
    """Tune RunConfig settings for the console: on a terminal, a bar of the sweep's `total` trials instead of
    Tune's status tables (printed as they are, they would break the bar's line); elsewhere (a log file, CI, a
    `ray job submit` job) nothing, so the sweep's log lines and Tune's tables stay as they are."""
    if not on_terminal(stream):
        return {}
    return {"callbacks": trial_bar_callbacks(total, stream), "verbose": 0}


def trial_bar_callbacks(total: int, stream=None) -> list:
    """The Tune callback that draws the bar on the driver."""
    from ray.tune import Callback  # heavy

    class TrialBar(Callback):
        """Counts each trial as it ends; the bar is made on the driver when the sweep starts."""

        def __init__(self):
            self.bar = None

        def setup(self, **info) -> None:
            self.bar = progress_bar(total, "sweep", "trial", stream)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._ended()

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._ended()

        def on_experiment_end(self, trials, **info) -> None:
            if self.bar is not None:
                self.bar.close()

        def _ended(self) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def __getstate__(self) -> dict:  # Tune saves its RunConfig with the sweep's state: a bar is not state
            return {**self.__dict__, "bar": None}

    return [TrialBar()]
