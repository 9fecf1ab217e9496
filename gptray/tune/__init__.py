"""Sweeps: ablation grids (axis values × seeds) run by Ray Tune, each trial a Ray Train run."""
