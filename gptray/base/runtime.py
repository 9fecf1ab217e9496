"""Process-level set-up shared by the CLI, pipelines and workers: Ray connection and logging."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s | %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """Send gptray's log records to stderr (once per process; Ray workers call it too)."""
    logger = logging.getLogger("gptray")
    logger.setLevel(level)
    if not any(getattr(h, "_gptray", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        handler._gptray = True
        logger.addHandler(handler)
        logger.propagate = False


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Connect to Ray as `ray.address` and `ray.num_cpus` say, unless this process already is.

    address null: join the cluster this process belongs to (`ray job submit`, RAY_ADDRESS, or a
    local `ray start`), otherwise start a local instance. "local": always start a fresh local
    instance, with `num_cpus` CPUs when given.
    """
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"address": address}
    if num_cpus is not None:
        kwargs["address"] = "local"
        kwargs["num_cpus"] = num_cpus
    ray.init(**kwargs)
