"""Sweep files: axes × seeds expanded into validated trial configs, budgets matched in tokens, bad sweeps refused."""

from __future__ import annotations

import pytest

from gptray.core.errors import ConfigError
from gptray.tune.spec import load_sweep
from helpers import write_sweep


def test_sweep_expands_axes_times_seeds_with_validated_configs(tmp_path):
    path = write_sweep(tmp_path / "grid.yaml", str(tmp_path / "data"),
                       {"axes": {"model.n_layer": [1, 2], "optimizer.lr": [1e-3, 3e-3]}, "seeds": [0, 1, 2]})
    sweep = load_sweep(path)
    assert len(sweep.trials) == 12
    first = sweep.trials[0]
    assert first.name == "n_layer=1,lr=0.001-seed0" and first.label == "n_layer=1,lr=0.001"
    assert (first.config.model.n_layer, first.config.optimizer.lr, first.config.train.seed) == (1, 1e-3, 0)
    assert first.config.out_dir == str(tmp_path / "runs" / "grid")  # trials live in the sweep's directory
    assert first.config.tracking_uri() == sweep.base.tracking_uri()  # and log beside the sweep's run
    assert sweep.baseline() == "n_layer=1,lr=0.001"
    assert first.tags("grid")["gptray.sweep.axis.optimizer.lr"] == "0.001"


def test_budget_in_tokens_matches_compute_across_shapes(tmp_path):
    path = write_sweep(tmp_path / "budget.yaml", str(tmp_path / "data"),
                       {"axes": {"train.seq_len": [32, 64]}, "seeds": [0], "budget_tokens": 2048})
    steps = {t.config.train.seq_len: t.config.train.max_steps for t in load_sweep(path).trials}
    assert steps == {32: 16, 64: 8}  # 4 sequences × 32 or 64 tokens per step


def test_named_variants_change_several_keys_together(tmp_path):
    path = write_sweep(tmp_path / "arch.yaml", str(tmp_path / "data"), {
        "axes": {"arch": {"wide": {"model.n_embd": 128, "model.n_head": 4},
                          "deep": {"model.n_layer": 3, "optimizer.lr": 1e-3}}},
        "seeds": [0], "baseline": "deep"})
    sweep = load_sweep(path)
    wide, deep = sweep.trials
    assert (wide.name, wide.label, wide.values) == ("wide-seed0", "wide", {"arch": "wide"})
    assert (wide.config.model.n_embd, wide.config.model.n_head, wide.config.model.n_layer) == (128, 4, 1)
    assert (deep.config.model.n_layer, deep.config.optimizer.lr) == (3, 1e-3)
    assert wide.tags("arch")["gptray.sweep.axis.arch"] == '"wide"'
    bad = write_sweep(tmp_path / "bad.yaml", str(tmp_path / "data"),
                      {"axes": {"arch": {"odd": {"model.n_embd": 65}}}})
    with pytest.raises(ConfigError) as info:
        load_sweep(bad)
    assert info.value.key == "sweep.axes.arch.odd"


def test_sweep_overrides_reach_the_base_and_the_sweep_section(tmp_path):
    path = write_sweep(tmp_path / "o.yaml", str(tmp_path / "data"), {"axes": {"model.n_layer": [1, 2]}})
    sweep = load_sweep(path, ["sweep.seeds=[5]", "train.max_steps=3"])
    assert [t.seed for t in sweep.trials] == [5, 5]
    assert all(t.config.train.max_steps == 3 for t in sweep.trials)
    assert load_sweep(path, ["sweep.metric=best_val_bpb"]).spec.metric == "best_val_bpb"


@pytest.mark.parametrize("sweep, key", [
    ({"axes": {"model.n_embd": [64, 65]}}, "sweep.axes.model.n_embd"),  # 65 is not divisible by 2 heads
    ({"axes": {"model.n_layr": [1]}}, "sweep.axes.model.n_layr"),
    ({"axes": {}}, "sweep.axes"),
    ({"axes": {"model.n_layer": [1]}, "seeds": [1, 1]}, "sweep.seeds"),
    ({"axes": {"model.n_layer": [1, 2]}, "baseline": "3"}, "sweep.baseline"),
    ({"axes": {"model.n_layer": [1]}, "schedular": "asha"}, "sweep.schedular"),
    ({"axes": {"model.n_layer": [1]}, "metric": "val_bpb"}, "sweep.metric"),  # best_val_bpb, or final_val_bpb
])
def test_invalid_sweeps_are_refused_before_anything_runs(tmp_path, sweep, key):
    with pytest.raises(ConfigError) as info:
        load_sweep(write_sweep(tmp_path / "bad.yaml", str(tmp_path / "data"), sweep))
    assert info.value.key == key
