"""The Ray Data settings the tokenize job runs with: its CPUs, progress bars on a terminal only, a quiet driver.

Set on the job's own Dataset context (a copy Ray Data takes at the read), never on the process's current
one, so another Ray Data job in the same process (distributed eval) keeps Ray Data's defaults.
"""

from __future__ import annotations

import sys

from gptray.core.progress_bar import on_terminal


def ray_data_bars() -> bool:
    """Whether Ray Data draws its progress bars: on a person's terminal. Ray Data decides by stdout and gptray
    logs to stderr, so both must be one (`gptray tokenize > out.log` is not a terminal for either)."""
    return on_terminal(sys.stderr) and on_terminal(sys.stdout)


def configure_job_context(context, cpus: int, bars: bool) -> None:
    """Set the tokenize job's Ray Data `context` (a ray.data.DataContext): at most `cpus` CPUs; Ray Data's progress
    bars only if `bars`; no per-step work in the driver that the job has no use for."""
    from ray.data import ExecutionResources

    context.execution_options.resource_limits = ExecutionResources(cpu=cpus)
    # Off a terminal, Ray Data logs a block of progress lines every 10 s (its LoggingExecutionProgressManager);
    # the job logs its own line every 30 s instead (job_progress.py).
    context.enable_progress_bars = bars
    context.enable_auto_log_stats = False  # the job logs its own summary; Ray Data's stats stay in its log file
    context.verbose_stats_logs = False
