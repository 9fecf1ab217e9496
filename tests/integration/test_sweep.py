"""Sweeps run by Ray Tune: every shipped sweep end to end, Ctrl-C and resume, a failing trial."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import sys
import time

import pytest

from gptray.checkpoint.files import STATE_FILE
from gptray.cli.main import main as cli
from gptray.tune.spec import group_label
from helpers import REPO, interruptible_command, write_sweep


def children(client, parent_run_id: str):
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


@pytest.mark.slow
def test_a_shipped_sweep_runs_as_shipped_and_ctrl_c_then_the_same_command_finishes_it(shakespeare_dataset, tmp_path,
                                                                                    capsys):
    """configs/sweeps/norm.yaml unmodified but for its budget and one seed, on a 2-CPU local Ray (where its
    trials once waited forever): SIGINT mid-sweep stops it with true counts and exit 130, compare calls the
    unfinished trial what it is, and the same command resumes and finishes the sweep. (The statistics
    across seeds are checked in tests/unit/test_compare.py.)"""
    from mlflow.tracking import MlflowClient

    path = REPO / "configs" / "sweeps" / "norm.yaml"
    # ray.num_cpus=2: a fresh local Ray the size of the documented machine, whatever this host has
    overrides = [f"out_dir={tmp_path}/runs", f"data.dataset_dir={shakespeare_dataset.dataset_dir}",
                 "sweep.budget_tokens=2048", "sweep.seeds=[0]", "ray.num_cpus=2"]
    sweep_dir = tmp_path / "runs" / "ablate-norm"
    names = ["layernorm-seed0", "rmsnorm-seed0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with interruptible_command([sys.executable, "-m", "gptray", "sweep", "--config", str(path), *overrides],
                               tmp_path / "driver.log", cwd=REPO, env=env) as driver:
        deadline = time.monotonic() + 400
        # one trial done, another one begun
        while not (list(sweep_dir.glob(f"*-seed*/checkpoint_00000004/{STATE_FILE}")) and
                   sum((sweep_dir / name / "config.yaml").is_file() for name in names) >= 2):
            assert driver.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)  # Ctrl-C, to the sweep's own process
        assert driver.wait(timeout=120) == 130, (tmp_path / "driver.log").read_text()[-3000:]
    finished_before = {p.parent.parent.name for p in sweep_dir.glob(f"*-seed*/checkpoint_00000004/{STATE_FILE}")}
    begun = {name for name in names if (sweep_dir / name / "config.yaml").is_file()}
    assert len(finished_before) == 1
    counts = f"{len(finished_before)} of 2 trial(s) finished, {len(begun - finished_before)} interrupted, " \
             f"{2 - len(begun)} not started"
    assert f"interrupted: {counts}" in (tmp_path / "driver.log").read_text()

    capsys.readouterr()
    assert cli(["compare", "--config", str(path), *overrides, "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]  # what did not finish is not called failed
    assert [sum(g[key] for g in groups) for key in ("n", "failed", "unfinished", "not_started")] == \
        [len(finished_before), 0, len(begun - finished_before), 2 - len(begun)]
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")

    assert cli(["sweep", "--config", str(path), *overrides]) == 0  # the same command again resumes the sweep

    parent = client.search_runs([client.get_experiment_by_name("gptray").experiment_id],
                                "tags.`gptray.sweep.role` = 'parent'")
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    runs = children(client, parent[0].info.run_id)
    assert sorted(r.info.run_name for r in runs) == names  # no duplicates
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert json.loads(run.data.tags["gptray.sweep.axis.model.norm"]) == run.info.run_name.split("-")[0]
        assert run.data.tags["gptray.sweep.seed"] == run.info.run_name[-1]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")][-1] == 4
    for name in finished_before:  # trials done before the interrupt were not trained again
        history = client.get_metric_history(next(r for r in runs if r.info.run_name == name).info.run_id,
                                            "train/loss")
        assert sorted(m.step for m in history) == [1, 4]

    # `gptray compare` equals the statistics computed here straight from the MLflow client
    out = tmp_path / "report"
    assert cli(["compare", "--config", str(path), *overrides, "--format", "json", "--plot", str(out)]) == 0
    reported = {g["label"]: g for g in json.loads((out / "summary.json").read_text())["groups"]}
    best = {}
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val/loss")
        best.setdefault(run.data.tags["gptray.sweep.label"], []).append(min(m.value for m in history))
    for label, values in best.items():
        group = reported[label]
        assert (group["n"], group["failed"], group["unfinished"], group["not_started"]) == (1, 0, 0, 0)
        assert group["values"] == pytest.approx(values, abs=1e-12) and group["mean"] == pytest.approx(values[0])
    assert reported["layernorm"]["is_baseline"]
    assert reported["rmsnorm"]["diff"] == pytest.approx(best["rmsnorm"][0] - best["layernorm"][0])
    for name in ("curves_val_loss.png", "bars_best_val_loss.png", "results.jsonl", "results.csv"):
        assert (out / name).stat().st_size > 0
    attached = {a.path for a in client.list_artifacts(parent[0].info.run_id, "compare")}
    assert "compare/bars_best_val_loss.png" in attached
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {r["axis.model.norm"] for r in rows} == {"layernorm", "rmsnorm"}

    # bits per byte ranks the groups by val/bpb's history
    capsys.readouterr()
    assert cli(["compare", "--config", str(path), *overrides, "--format", "json", "--metric", "best_val_bpb"]) == 0
    by_bpb = {g["label"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    bpb = {run.data.tags["gptray.sweep.label"]: min(m.value for m in client.get_metric_history(run.info.run_id,
                                                                                              "val/bpb"))
           for run in runs}
    assert {label: g["values"] for label, g in by_bpb.items()} == {label: [v] for label, v in bpb.items()}
    assert by_bpb["rmsnorm"]["diff"] == pytest.approx(bpb["rmsnorm"] - bpb["layernorm"])
    assert all(0 < r["best_val_bpb"] < r["best_val_loss"] for r in rows)  # GPT-2 tokens are > 1/ln 2 bytes each


SHIPPED_AXES = {"attention.yaml": {"model.attention": ["causal", "sliding_window", "alternating"]},
                "masks.yaml": {"model.attention": ["causal", "prefix", "sliding_window"]},
                "mlp.yaml": {"model.mlp": ["gelu", "swiglu"]},
                "positions.yaml": {"model.position": ["learned", "rope", "none"]},
                "recipe.yaml": {"optimizer.name": ["adamw", "muon"], "schedule.name": ["cosine", "wsd"]}}


def test_every_shipped_sweep_is_run_here():
    """A sweep file added to configs/sweeps/ must be run end to end by this module too."""
    shipped = {p.name for p in (REPO / "configs" / "sweeps").glob("*.yaml")}
    assert shipped == {*SHIPPED_AXES, "norm.yaml", "gpt2-vs-gpt3.yaml", "vocab.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHIPPED_AXES))
def test_the_other_shipped_sweeps_run_end_to_end(name, shakespeare_dataset, tmp_path, capsys):
    """Each shipped ablation unmodified but for a tiny budget and one seed per value (per combination of
    values, for recipe.yaml's two axes): every trial trains its variant to the end and the comparison has
    one finished run per group, baseline first.
    (norm.yaml runs above as shipped on a fresh 2-CPU Ray; gpt2-vs-gpt3.yaml is a GPU sweep that
    test_placement fits on the shipped cluster, but cannot train here.)"""
    from mlflow.tracking import MlflowClient

    axes = SHIPPED_AXES[name]
    combinations = [dict(zip(axes, c)) for c in itertools.product(*axes.values())]
    values = [group_label(c) for c in combinations]  # e.g. "optimizer=muon,schedule=wsd" for two axes
    path = REPO / "configs" / "sweeps" / name
    overrides = [f"out_dir={tmp_path}/runs", f"data.dataset_dir={shakespeare_dataset.dataset_dir}",
                 "sweep.budget_tokens=2048", "sweep.seeds=[0]"]
    assert cli(["sweep", "--config", str(path), *overrides]) == 0
    assert f"{len(values)} of {len(values)} trial(s) finished" in capsys.readouterr().out

    assert cli(["compare", "--config", str(path), *overrides, "--format", "json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert [g["label"] for g in groups] == values and groups[0]["is_baseline"]
    assert all((g["n"], g["failed"], g["unfinished"], g["not_started"]) == (1, 0, 0, 0) for g in groups)
    assert all(math.isfinite(g["mean"]) for g in groups)
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    (parent,) = client.search_runs([client.get_experiment_by_name("gptray").experiment_id],
                                   "tags.`gptray.sweep.role` = 'parent'")
    runs = children(client, parent.info.run_id)
    for axis, axis_values in axes.items():
        assert sorted(json.loads(r.data.tags[f"gptray.sweep.axis.{axis}"]) for r in runs) == \
            sorted(c[axis] for c in combinations)
        assert {r.data.params[axis] for r in runs} == set(axis_values)  # each trial trained its variant
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_others_finish(shakespeare_dataset, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    path = write_sweep(tmp_path / "lr.yaml", shakespeare_dataset.dataset_dir,
                       {"axes": {"optimizer.lr": [2e-3, 1e12]}, "seeds": [0], "max_concurrent_trials": 2},
                       optimizer={"grad_clip": 0})
    assert cli(["sweep", "--config", str(path)]) == 5  # finished, with a failed trial
    printed = capsys.readouterr().out
    assert "1 of 2 trial(s) finished" in printed and "diverged" in printed
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name("gptray").experiment_id],
                                "tags.`gptray.sweep.role` = 'parent'")[0]
    runs = {r.info.run_name: r for r in children(client, parent.info.run_id)}
    assert runs["0.002-seed0"].info.status == "FINISHED"
    failed = runs["1000000000000.0-seed0"]
    assert failed.info.status == "FAILED" and "diverged" in failed.data.tags["gptray.error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert parent.data.tags["gptray.sweep.failed_trials"] == "1"


@pytest.mark.slow
def test_the_shipped_vocabulary_sweep_learns_its_tokenizers_and_ranks_by_bits_per_byte(ray_session, tmp_path,
                                                                                      monkeypatch, capsys):
    """configs/sweeps/vocab.yaml unmodified but for a tiny FLOPs budget and one seed, run from an empty
    directory: the sweep learns both BPE tokenizers and tokenizes all three datasets itself, every trial
    trains the same FLOPs with its dataset's vocabulary, the comparison ranks by val bpb, and a BPE trial's
    run generates and exports with its own tokenizer. Then configs/finetune.yaml, as shipped but for budget,
    tokenizes its jsonl and fine-tunes the 8k trial's model in runs/quickstart's place."""
    import tokenizers
    from mlflow.tracking import MlflowClient
    from transformers import AutoTokenizer

    from gptray.checkpoint.files import read_config
    from gptray.config import ModelConfig
    from gptray.model.gpt import count_parameters
    from gptray.train.flops import flops_per_token

    monkeypatch.chdir(tmp_path)  # its data/ paths are relative, as a user's checkout runs them
    path = REPO / "configs" / "sweeps" / "vocab.yaml"
    budget = 1.2e11
    overrides = [f"sweep.budget_flops={budget}", "sweep.seeds=[0]"]
    assert cli(["sweep", "--config", str(path), *overrides]) == 0
    assert "3 of 3 trial(s) finished" in capsys.readouterr().out

    steps = {}
    for label, vocab in (("gpt2-50k", 50257), ("bpe-2k", 2048), ("bpe-8k", 8192)):
        run = tmp_path / "runs" / "ablate-vocab" / f"{label}-seed0"
        config = read_config(run)
        model = ModelConfig.from_saved({k: v for k, v in vars(config.model).items() if k != "preset"})
        assert model.vocab_size == vocab  # followed its dataset
        per_step = flops_per_token(model, count_parameters(model), 64) * 512
        assert config.train.max_steps == math.ceil(budget / per_step)
        steps[label] = config.train.max_steps
        if label != "gpt2-50k":
            learned = tmp_path / "data" / "tokenizers" / f"tinyshakespeare-{label[4:]}" / "tokenizer.json"
            assert tokenizers.Tokenizer.from_file(str(learned)).get_vocab_size() == vocab
            assert (run / "tokenizer.json").read_bytes() == learned.read_bytes()
    assert steps["bpe-2k"] > steps["bpe-8k"] > steps["gpt2-50k"]  # a cheaper vocabulary trains longer

    assert cli(["compare", "--config", str(path), *overrides, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metric"] == "best_val_bpb"
    groups = report["groups"]
    assert [g["label"] for g in groups] == ["gpt2-50k", "bpe-2k", "bpe-8k"] and groups[0]["is_baseline"]
    assert all(g["n"] == 1 and 0 < g["mean"] < 20 for g in groups)
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    (parent,) = client.search_runs([client.get_experiment_by_name("gptray").experiment_id],
                                   "tags.`gptray.sweep.role` = 'parent'")
    assert {r.data.params["data.tokenizer"].rsplit("/", 1)[-1] for r in children(client, parent.info.run_id)} == \
        {"gpt2", "tinyshakespeare-2k", "tinyshakespeare-8k"}

    bpe_run = tmp_path / "runs" / "ablate-vocab" / "bpe-2k-seed0"
    assert cli(["generate", "--checkpoint", str(bpe_run), "--prompt", "ROMEO:", "generate.max_new_tokens=8",
                "generate.temperature=0"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert cli(["model", "export", "--checkpoint", str(bpe_run), "--out", str(tmp_path / "hf")]) == 0
    text = "ROMEO: What say'st thou, é?"
    library = tokenizers.Tokenizer.from_file(str(bpe_run / "tokenizer.json"))
    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf"))(text)["input_ids"] == \
        library.encode(text, add_special_tokens=False).ids
    # fine-tuning data must be in the base's own tokenizer (here: the 8k base, the 2k dataset)
    assert cli(["finetune", f"train.init_from={tmp_path}/runs/ablate-vocab/bpe-8k-seed0", "name=ft",
                "data.tokenizer=data/tokenizers/tinyshakespeare-2k", "data.dataset_dir=data/tinyshakespeare-bpe2k",
                "tracking.enabled=false"]) == 3
    assert "was trained with the tokenizer" in capsys.readouterr().err

    # configs/finetune.yaml as shipped but for budget, on a base in runs/quickstart with the quickstart's
    # tokenizer (this 8k trial's run stands in for the quickstart's: the same tokenizer and model preset)
    (tmp_path / "runs" / "quickstart").symlink_to(tmp_path / "runs" / "ablate-vocab" / "bpe-8k-seed0")
    pairs = [{"prompt": f"Who speaks in scene {i}?", "completion": f" {name}."}
             for i, name in enumerate(["ROMEO", "JULIET", "MERCUTIO", "TYBALT"] * 50)]
    (tmp_path / "data" / "finetune.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    finetune_yaml = str(REPO / "configs" / "finetune.yaml")
    assert cli(["tokenize", "--config", finetune_yaml]) == 0
    assert json.loads((tmp_path / "data" / "finetune" / "manifest.json").read_text())["prompt_masked"]
    budget = ["train.max_steps=4", "train.eval_interval=2", "checkpoint.interval=2",
              "generate.max_new_tokens=8"]
    assert cli(["finetune", "--config", finetune_yaml, *budget]) == 0
    assert capsys.readouterr().out.count("ROMEO:")  # its sample, from its prompt
    tuned = tmp_path / "runs" / "finetune"
    assert read_config(tuned).model.vocab_size == 8192 and (tuned / "checkpoint_00000004").is_dir()
    assert (tuned / "tokenizer.json").read_bytes() == \
        (tmp_path / "data" / "tokenizers" / "tinyshakespeare-8k" / "tokenizer.json").read_bytes()
    runs = client.search_runs([client.get_experiment_by_name("gptray-finetune").experiment_id])
    (finetuned,) = [r for r in runs if r.data.tags.get("gptray.job") != "tokenize"]  # beside its dataset's run
    assert finetuned.info.status == "FINISHED" and "val/bpb" in finetuned.data.metrics
