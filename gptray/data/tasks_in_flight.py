"""A Ray Data backpressure policy for the tokenize job: read tasks in flight bounded by the cluster's CPUs."""

from __future__ import annotations

import time

# The DataContext config key Ray Data reads its backpressure policies from (ray/data/_internal/execution/
# backpressure_policy/__init__.py), and the one this policy reads the job's CPUs at its start from (the cluster's,
# at most one a read task) until it first asks Ray for the cluster's.
POLICIES_KEY = "backpressure_policies.enabled"
CPUS_KEY = "gptray.job_cpus"

TASKS_PER_CPU = 2  # one running on each CPU and the next queued behind it
MIN_TASKS = 64  # in flight however few CPUs the cluster has: what an autoscaler sees waiting on an empty cluster
CPUS_CHECK_S = 5.0  # how often the policy asks Ray how many CPUs the cluster has now


def tasks_in_flight(cluster_cpus: float) -> int:
    """The most read tasks the job keeps submitted and unfinished on a cluster of `cluster_cpus` CPUs."""
    return max(MIN_TASKS, TASKS_PER_CPU * int(cluster_cpus))


class TasksInFlightCap:
    """No new task for an operator while `tasks_in_flight(the cluster's CPUs)` of its tasks are unfinished.

    Without Ray Data's reservation allocator nothing else bounds them, and Ray Data would hand Ray a whole plan's
    read tasks at once: every scheduling step then waits on every unfinished task, and the driver holds each one's
    state (BENCHMARKS.md: ~45 KB and more CPU a task the more are in flight), past what one driver carries at the
    hundred thousand read tasks of a web-scale corpus. The bound follows the cluster as an autoscaler grows it:
    tasks waiting beyond the running ones are the demand that makes it grow.

    Ray Data's BackpressurePolicy interface, written out rather than inherited so that importing gptray does not
    import Ray Data (its executor builds the policy from the context's config and calls these three members)."""

    def __init__(self, data_context, topology, resource_manager):
        self._cap = tasks_in_flight(data_context.get_config(CPUS_KEY))
        self._next_check = time.monotonic() + CPUS_CHECK_S

    @property
    def name(self) -> str:
        return "TasksInFlight"

    def can_add_input(self, op) -> bool:
        """Whether `op` (a Ray Data operator) may submit another task now."""
        if time.monotonic() >= self._next_check:
            import ray

            self._cap = tasks_in_flight(ray.cluster_resources().get("CPU", 0))
            self._next_check = time.monotonic() + CPUS_CHECK_S
        return op.metrics.num_tasks_running < self._cap

    def max_task_output_bytes_to_read(self, op) -> None:
        """No bound of this policy's on reading finished tasks' outputs (a read task's output is its record)."""
        return None
