"""The Ray Data settings the tokenize job runs with: CPUs, allocator, tasks in flight, block size, and progress bars.

Set on the job's own Dataset context (a copy Ray Data takes at the read), never on the process's current
one, so another Ray Data job in the same process (distributed eval) keeps Ray Data's defaults.
"""

from __future__ import annotations

import sys

from gptray.core.progress_bar import on_terminal
from gptray.data.tasks_in_flight import CPUS_KEY, POLICIES_KEY, TasksInFlightCap

RAY_DATA_BARS_OFF_WARNING = "ray_data_progress_manager_disabled"  # ray/data/_internal/progress/__init__.py
BLOCK_BYTES = 16 << 20  # the largest block Ray Data builds inside the job's fused task


def ray_data_bars() -> bool:
    """Whether Ray Data draws its progress bars: on a person's terminal. Ray Data decides by stdout and gptray
    logs to stderr, so both must be one (`gptray tokenize > out.log` is not a terminal for either)."""
    return on_terminal(sys.stderr) and on_terminal(sys.stdout)


def configure_job_context(context, cpus: int, bars: bool) -> None:
    """Set the tokenize job's Ray Data `context` (a ray.data.DataContext): at most `cpus` CPUs asked of Ray Data's
    autoscaler, no reservation allocator, read tasks in flight bounded by the cluster's CPUs (tasks_in_flight.py),
    blocks of up to BLOCK_BYTES, Ray Data's progress bars only if `bars`. Everything else is Ray Data's default
    (BENCHMARKS.md measures what the others save)."""
    from ray.data import ExecutionResources
    from ray.data._internal.execution.backpressure_policy import ENABLED_BACKPRESSURE_POLICIES

    context.execution_options.resource_limits = ExecutionResources(cpu=cpus)
    # The job is one operator (read, tokenize and write fused), so the reservation allocator, which divides
    # resources between operators, has nothing to divide. It costs the driver CPU on every scheduling step (ten a
    # second), and it holds each read task back until the driver's loop has seen one end. Without it a worker that
    # finishes a read task starts the next one already queued at Ray, with no round trip through the driver
    # (BENCHMARKS.md, "Ray Data's reservation allocator").
    context.op_resource_reservation_enabled = False
    # Nothing else then bounds the read tasks Ray Data hands Ray: a whole plan's at once, and every scheduling step
    # waits on every unfinished one. One queued behind each running one is all the above needs.
    context.set_config(POLICIES_KEY, [*ENABLED_BACKPRESSURE_POLICIES, TasksInFlightCap])
    context.set_config(CPUS_KEY, cpus)
    # Inside the fused task Ray Data reshapes each operator's output into blocks of up to target_max_block_size
    # (128 MiB by default) before the next operator sees them: a whole read task's documents, then its tokens,
    # held and copied at once. The job's blocks never cross the object store, so small ones cost nothing there,
    # and a worker held ~290 MB less with a 29M-token task (BENCHMARKS.md). The shards do not depend on it.
    context.target_max_block_size = BLOCK_BYTES
    # Off a terminal, Ray Data logs a block of progress lines every 10 s (its LoggingExecutionProgressManager);
    # the job logs its own line every 30 s instead (job_progress.py).
    context.enable_progress_bars = bars
    if not bars:
        from ray.util.debug import log_once

        # Ray Data then warns once "Progress bars disabled. To enable, set ... = True": wrong advice where the job
        # logs its own progress. Its warning is keyed by log_once; taking the key first leaves it unsaid.
        log_once(RAY_DATA_BARS_OFF_WARNING)
