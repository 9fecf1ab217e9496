"""PNG plots of a comparison: loss curves per group with a band across seeds, and bars with CIs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from gptray.tracking.compare import GroupSummary, RunRecord


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _title(ax, text: str) -> None:
    """A title that wraps at the figure's edges instead of running off them (a narrow bar chart's did)."""
    ax.set_title(text, wrap=True)  # wrapped when drawn; tight_layout() makes room for the extra lines


def loss_curves(client, records: list[RunRecord], key: str, path: str | Path) -> Path | None:
    """Mean of `key` over the seeds of each group at every step, with a min–max band; None if no data."""
    plt = _pyplot()
    groups: dict[str, list[dict[int, float]]] = {}
    for record in records:
        if record.status != "FINISHED":
            continue
        history = {m.step: m.value for m in sorted(client.get_metric_history(record.run_id, key),
                                                  key=lambda m: m.timestamp)}
        if history:
            groups.setdefault(record.label, []).append(history)
    if not groups:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, histories in groups.items():
        steps = sorted(set.intersection(*(set(h) for h in histories)))
        values = np.array([[h[s] for s in steps] for h in histories])  # (seeds, steps)
        mean = values.mean(axis=0)
        # A line through one point draws nothing: a group with a single step (one validation) shows a marker.
        line, = ax.plot(steps, mean, label=f"{label} (n={len(histories)})", marker="o" if len(steps) == 1 else None)
        if len(histories) > 1 and len(steps) == 1:  # nor does a band one step wide: a min–max bar instead
            ax.errorbar(steps, mean, yerr=[mean - values.min(axis=0), values.max(axis=0) - mean], fmt="none",
                        ecolor=line.get_color(), alpha=0.5, capsize=6)
        elif len(histories) > 1:
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    _title(ax, f"{key}: mean over seeds, band = min–max")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_chart(summaries: list[GroupSummary], metric: str, path: str | Path) -> Path | None:
    """Each group's mean with its 95% confidence interval; None when no group has a value."""
    plt = _pyplot()
    shown = [s for s in summaries if s.n > 0]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(shown) + 2), 4.5))
    x = np.arange(len(shown))
    errors = [0 if math.isnan(s.ci_high) else s.ci_high - s.mean for s in shown]
    colors = ["tab:gray" if s.is_baseline else "tab:blue" for s in shown]
    ax.bar(x, [s.mean for s in shown], yerr=errors, capsize=6, color=colors)
    ax.set_xticks(x, [f"{s.label}\nn={s.n}" for s in shown])
    ax.set_ylabel(metric)
    low = min(s.mean - e for s, e in zip(shown, errors))
    high = max(s.mean + e for s, e in zip(shown, errors))
    margin = (high - low) * 0.5 or abs(high) * 0.05 or 1.0
    ax.set_ylim(low - margin, high + margin)  # differences between groups, not distance from zero
    _title(ax, f"{metric}: mean and 95% CI over seeds (grey: baseline)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_report(histories: dict[str, dict[int, float]], title: str, directory: str | Path) -> list[Path]:
    """One run's curves (losses; val bits per byte; learning rate) as PNG and all its metric histories (metric → {step:
    value}) as CSV; nothing when there are none."""
    plt = _pyplot()
    histories = {key: histories[key] for key in sorted(histories) if histories[key]}
    if not histories:
        return []
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    csv_path = directory / "metrics.csv"
    steps = sorted({s for h in histories.values() for s in h})
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *histories])
        for step in steps:
            writer.writerow([step, *(h.get(step, "") for h in histories.values())])
    files.append(csv_path)

    loss_keys = [k for k in histories if k.endswith("/loss")]
    panels = [(loss_keys, "loss")] + ([(["val/bpb"], "val bits per byte")] if "val/bpb" in histories else []) \
        + ([(["train/lr"], "learning rate")] if "train/lr" in histories else [])
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (keys, ylabel) in zip(axes[:, 0], panels):
        for key in keys:
            points = sorted(histories[key].items())
            ax.plot([s for s, _ in points], [v for _, v in points], label=key,
                    marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[-1, 0].set_xlabel("step")
    _title(axes[0, 0], title)
    fig.tight_layout()
    png = directory / "curves.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    files.append(png)
    return files
