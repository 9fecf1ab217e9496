"""Evaluation: HellaSwag on a fixture whose answers a tiny trained model knows, perplexity against its
definition, Ray Data actor pools against in-process scoring, MLflow targets, errors, and evaluation
during training."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptray.checkpoint.files import TrainingState, save_checkpoint
from gptray.cli.main import main
from gptray.config import DataConfig, ExperimentConfig, ModelConfig
from gptray.core.errors import CheckpointError, ConfigError, DataError
from gptray.data.tiktoken_tokenizer import TiktokenTokenizer
from gptray.eval.evaluate import evaluate_checkpoint
from gptray.eval.hellaswag import read_examples
from gptray.eval.perplexity import sliding_windows
from gptray.model import GPT
from helpers import make_config, metric_history, small_run_config

# Sentences a tiny model learns by heart: the ending after each context is then the one it expects.
FACTS = [
    ("The cat sat on the", "mat."),
    ("A dog barked at the", "mailman."),
    ("She poured a cup of", "coffee."),
    ("He rode his bike to", "school."),
    ("They sailed across the", "ocean."),
    ("The baker took fresh bread out of the", "oven."),
]
WRONG_LABELS = {4, 5}  # examples labelled with a wrong ending: the model "fails" them, so acc is 4/6


@pytest.fixture(scope="module")
def memorizer(tmp_path_factory) -> tuple[GPT, Path]:
    """A small GPT trained on FACTS until it knows them, saved as a checkpoint at step 80."""
    tokenizer = TiktokenTokenizer("gpt2")
    rows = [tokenizer.encode(f"{context} {ending}\n") for context, ending in FACTS]  # one sequence each
    width = max(len(r) for r in rows) - 1
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), -100)  # padding is not learned
    for i, r in enumerate(rows):
        x[i, : len(r) - 1], y[i, : len(r) - 1] = torch.tensor(r[:-1]), torch.tensor(r[1:])
    torch.manual_seed(0)
    model = GPT(ModelConfig(preset=None, n_layer=2, n_head=2, n_embd=32, block_size=64).resolved())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    root = tmp_path_factory.mktemp("memorizer")
    checkpoint = root / "runs" / "memorizer" / "checkpoint_00000080"
    save_checkpoint(checkpoint, model.state_dict(), None, TrainingState(step=80, model=asdict(model.config)),
                    ExperimentConfig(model=model.config, data=DataConfig(tokenizer="gpt2")))
    return model.eval(), checkpoint


def write_hellaswag(path: Path, extra_lines: tuple[str, ...] = ()) -> list[int]:
    """The official jsonl format; the endings of each example are all the FACTS' endings, rotated."""
    endings = [e for _, e in FACTS]
    labels = []
    with open(path, "w") as out:
        for i, (context, _) in enumerate(FACTS):
            choices = [endings[(i + k) % len(FACTS)] for k in range(4)]  # the true ending is choice 0 …
            choices = choices[i % 4:] + choices[: i % 4]  # … moved to position (4 - i % 4) % 4
            truth = choices.index(endings[i])
            label = (truth + 1) % 4 if i in WRONG_LABELS else truth
            labels.append(truth)
            out.write(json.dumps({"ind": i, "activity_label": "test", "ctx_a": context, "ctx_b": "", "ctx": context,
                                  "split": "val", "split_type": "indomain", "endings": choices, "label": label,
                                  "source_id": f"fixture-{i}"}) + "\n")
        for line in extra_lines:
            out.write(line + "\n")
    return labels


@torch.no_grad()
def reference_losses(model: GPT, context: str, endings: list[str]) -> tuple[list[float], list[float]]:
    """Total and mean loss of each ending's tokens after the context, one plain forward pass per ending."""
    tokenizer = TiktokenTokenizer("gpt2")
    ctx = tokenizer.encode(context)
    totals, means = [], []
    for ending in endings:
        end = tokenizer.encode(" " + ending)
        logits, _ = model(torch.tensor([ctx + end]))
        log_probs = F.log_softmax(logits[0, len(ctx) - 1 : -1], dim=-1)
        losses = [-float(log_probs[i, t]) for i, t in enumerate(end)]
        totals.append(sum(losses))
        means.append(sum(losses) / len(losses))
    return totals, means


def eval_config(root: Path, *overrides: str) -> ExperimentConfig:
    return make_config(root, "eval.distributed=false", *overrides)


def test_hellaswag_picks_the_endings_the_model_knows_and_scores_them_by_definition(memorizer, tmp_path):
    model, checkpoint = memorizer
    truths = write_hellaswag(tmp_path / "hellaswag_val.jsonl")
    config = eval_config(tmp_path, f"eval.hellaswag={tmp_path}/hellaswag_val.jsonl", "eval.tasks=[hellaswag]",
                         "eval.batch_size=4")
    report = evaluate_checkpoint(checkpoint, config)
    [result] = report.tasks
    assert report.step == 80
    assert [r["pred"] for r in result.results] == truths
    assert [r["pred_norm"] for r in result.results] == truths
    assert result.metrics["acc"] == pytest.approx(4 / 6) and result.metrics["acc_norm"] == pytest.approx(4 / 6)
    assert result.metrics["examples"] == 6
    examples = [json.loads(line) for line in (tmp_path / "hellaswag_val.jsonl").read_text().splitlines()]
    for example, row in zip(examples, result.results):
        totals, means = reference_losses(model, example["ctx"], example["endings"])
        assert row["losses"] == pytest.approx(totals, abs=1e-4)
        assert row["pred"] == int(np.argmin(totals)) and row["pred_norm"] == int(np.argmin(means))
    assert report.metrics()["eval/hellaswag/acc_norm"] == pytest.approx(4 / 6)


def test_hellaswag_file_or_url_and_bad_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_hellaswag(tmp_path / "hs.jsonl", extra_lines=(
        "not json", json.dumps({"ctx": "x", "endings": ["a", "b"]}),  # no label: the test split
        json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 2}), ""))
    examples = read_examples(str(tmp_path / "hs.jsonl"))
    assert len(examples.items) == 6 and examples.skipped == 3
    assert "line 7: not JSON" in examples.problems[0] and "test split" in examples.problems[1]
    assert len(read_examples(str(tmp_path / "hs.jsonl"), limit=2).items) == 2
    url = (tmp_path / "hs.jsonl").as_uri()  # a real URL fetch through urllib, from the local filesystem
    fetched = read_examples(url)
    assert fetched.items == examples.items
    assert Path(fetched.source) == tmp_path / "cache" / "gptray" / "eval" / "hellaswag" / "hs.jsonl"
    (tmp_path / "hs.jsonl").unlink()
    assert read_examples(url).items == examples.items  # downloaded once: the cached copy serves
    with pytest.raises(DataError, match="no HellaSwag file"):
        read_examples(str(tmp_path / "hs.jsonl"))
    with pytest.raises(DataError, match="eval.hellaswag=/path/to/hellaswag_val.jsonl"):
        read_examples((tmp_path / "missing.jsonl").as_uri())
    (tmp_path / "bad.jsonl").write_text("{}\n[1]\n")
    with pytest.raises(DataError, match="holds no HellaSwag examples"):
        read_examples(str(tmp_path / "bad.jsonl"))


@pytest.mark.parametrize("tokens, length, stride", [(2, 4, 2), (10, 4, 4), (11, 4, 1), (100, 16, 5), (17, 16, 8)])
def test_sliding_windows_predict_every_token_once_with_enough_context(tokens, length, stride):
    scored = []
    for begin, end, count in sliding_windows(tokens, length, stride):
        assert 0 < end - begin <= length and 0 < count <= end - begin
        targets = list(range(end - count + 1, end + 1))  # the last `count` of the targets begin+1 … end
        scored += targets
        assert all(t - begin >= min(t, length - stride) for t in targets)  # context before each target
    assert scored == list(range(1, tokens))


@torch.no_grad()
def test_perplexity_of_text_files_equals_its_definition(memorizer, tmp_path):
    """stride 1: each token predicted from the max_length tokens before it (fewer at the start); bits per
    byte over the files' own bytes, less the first token of each (which no window predicts)."""
    model, checkpoint = memorizer
    text = "The cat sat on the mat. She poured a café crème. A dog barked at the 日本 ocean 🙂."
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text("He rode his bike to school.")
    config = eval_config(tmp_path, f"eval.text_files=[{tmp_path}/a.txt, {tmp_path}/b.txt]", "eval.max_length=8",
                         "eval.stride=1", "eval.batch_size=5")
    [result] = evaluate_checkpoint(checkpoint, config).tasks
    tokenizer = TiktokenTokenizer("gpt2")
    losses, scored_bytes = [], 0
    for file_text in (text, "He rode his bike to school."):  # files are separate streams
        ids = tokenizer.encode(file_text)
        assert tokenizer.decode(ids[:1]).isascii()  # so its bytes are its text's (it is "The", "He")
        scored_bytes += len(file_text.encode("utf-8")) - len(tokenizer.decode(ids[:1]).encode("utf-8"))
        for t in range(1, len(ids)):
            logits, _ = model(torch.tensor([ids[max(0, t - 8) : t]]))
            losses.append(-float(F.log_softmax(logits[0, -1], dim=-1)[ids[t]]))
    assert result.label == "perplexity-text"
    assert result.metrics["tokens"] == len(losses)
    assert result.metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert result.metrics["ppl"] == pytest.approx(np.exp(np.mean(losses)), rel=1e-5)
    assert result.metrics["bytes"] == scored_bytes
    assert result.metrics["bpb"] == pytest.approx(sum(losses) / (np.log(2) * scored_bytes), rel=1e-5)


def test_bad_evaluation_input_names_the_problem(memorizer, tmp_path):
    _, checkpoint = memorizer
    small = GPT(ModelConfig(preset=None, n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=96).resolved())
    save_checkpoint(tmp_path / "small", small.state_dict(), None, TrainingState(model=asdict(small.config)),
                    ExperimentConfig(model=small.config, data=DataConfig(tokenizer="gpt2")))
    write_hellaswag(tmp_path / "hs.jsonl")
    with pytest.raises(DataError, match="outside the model's vocabulary of 96"):
        evaluate_checkpoint(tmp_path / "small", eval_config(tmp_path, f"eval.hellaswag={tmp_path}/hs.jsonl",
                                                            "eval.tasks=[hellaswag]"))
    with pytest.raises(ConfigError, match="block_size"):
        evaluate_checkpoint(checkpoint, eval_config(tmp_path, "eval.max_length=65", f"eval.text_files=[{tmp_path}/x]"))
    with pytest.raises(ConfigError) as info:
        eval_config(tmp_path, "eval.tasks=['lambada openai']")  # not a task name (a harness name is checked later)
    assert info.value.key == "eval.tasks[0]"
    with pytest.raises(DataError, match="missing manifest.json"):  # perplexity on a dataset that is not there
        evaluate_checkpoint(checkpoint, eval_config(tmp_path, f"eval.dataset_dir={tmp_path}/nothing"))
    (tmp_path / "small" / "model.pt").unlink()
    with pytest.raises(CheckpointError, match=r"model\.pt \(missing\)"):
        evaluate_checkpoint(tmp_path / "small", eval_config(tmp_path))
    base = ["eval", "--checkpoint", str(checkpoint), "--local", "--no-track"]
    assert main([*base, "--hellaswag", str(tmp_path / "none.jsonl"), "--task", "hellaswag", f"out_dir={tmp_path}"]) == 3
    assert main([*base, "--task", "perplexity", f"out_dir={tmp_path}", "eval.stride=0"]) == 2


def mlflow_metrics(uri: str, run_id: str) -> dict[str, tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {k: (h[-1].step, h[-1].value) for k in client.get_run(run_id).data.metrics
            for h in [client.get_metric_history(run_id, k)]}


def test_cli_eval_logs_to_the_training_run_a_named_run_or_a_new_one(memorizer, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from gptray.tracking import MlflowTracker

    _, checkpoint = memorizer
    write_hellaswag(tmp_path / "hs.jsonl")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = [f"out_dir={tmp_path}", f"tracking.uri={uri}", "tracking.experiment=evals"]
    base = ["eval", "--local", "--hellaswag", str(tmp_path / "hs.jsonl"), "--task", "hellaswag"]

    # A checkpoint with no training run beside it: a new run in tracking.experiment.
    assert main([*base, "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out.json"), *settings]) == 0
    out = capsys.readouterr().out
    assert "acc_norm" in out and "0.6667" in out and "MLflow     new run" in out
    new_run = out.split("MLflow     new run ")[1].split()[0]
    assert mlflow_metrics(uri, new_run)["eval/hellaswag/acc"] == (80, pytest.approx(4 / 6))
    assert MlflowClient(uri).get_run(new_run).info.status == "FINISHED"
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["step"] == 80 and len(saved["tasks"][0]["results"]) == 6

    # The run a training run recorded beside its checkpoints (mlflow_run.json) gets the results.
    training = MlflowTracker.start(make_config(tmp_path, f"tracking.uri={uri}", "name=memorizer",
                                               f"out_dir={checkpoint.parent.parent}"))
    assert main([*base, "--checkpoint", str(checkpoint.parent), *settings]) == 0  # the run directory: its latest
    assert f"MLflow     run {training.run_id}" in capsys.readouterr().out
    assert mlflow_metrics(uri, training.run_id)["eval/hellaswag/acc_norm"] == (80, pytest.approx(4 / 6))

    # --run names the run; --no-track logs nothing.
    assert main([*base, "--checkpoint", str(checkpoint), "--run", new_run, *settings, "eval.limit=3"]) == 0
    assert mlflow_metrics(uri, new_run)["eval/hellaswag/examples"] == (80, 3)
    runs = len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("evals").experiment_id]))
    assert main([*base, "--checkpoint", str(checkpoint), "--no-track", *settings]) == 0
    assert len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("evals").experiment_id])) == runs
    assert main([*base, "--checkpoint", str(checkpoint), "--run", "0" * 32, *settings]) == 2

    # perplexity's bits per byte: in the table, the JSON output and MLflow
    (tmp_path / "a.txt").write_text("The cat sat on the mat. She poured a cup of coffee.")
    capsys.readouterr()
    assert main(["eval", "--local", "--checkpoint", str(checkpoint), "--text", str(tmp_path / "a.txt"), "--run",
                 new_run, "--output", str(tmp_path / "ppl.json"), *settings]) == 0
    assert any(line.split()[:1] == ["bpb"] for line in capsys.readouterr().out.splitlines())
    [task] = json.loads((tmp_path / "ppl.json").read_text())["tasks"]
    assert task["metrics"]["bpb"] > 0
    assert mlflow_metrics(uri, new_run)["eval/perplexity-text/bpb"] == (80, pytest.approx(task["metrics"]["bpb"]))


@pytest.mark.slow
def test_ray_data_actor_pool_scores_what_one_process_scores(memorizer, shakespeare_dataset, tmp_path):
    """Perplexity on the token dataset's val split and HellaSwag, over a pool of 2 actors."""
    _, checkpoint = memorizer
    write_hellaswag(tmp_path / "hs.jsonl")
    overrides = [f"eval.hellaswag={tmp_path}/hs.jsonl", "eval.tasks=[hellaswag, perplexity]",
                 f"eval.dataset_dir={shakespeare_dataset.dataset_dir}", "eval.limit=24", "eval.batch_size=3"]
    local = evaluate_checkpoint(checkpoint, eval_config(tmp_path, *overrides))
    pooled = evaluate_checkpoint(checkpoint, make_config(tmp_path, *overrides, "eval.num_actors=2",
                                                         "eval.distributed=true"))
    assert [t.label for t in pooled.tasks] == ["hellaswag", "perplexity"]
    assert "2 Ray Data actor(s)" in pooled.tasks[0].workers
    for ours, theirs in zip(local.tasks, pooled.tasks):
        assert ours.metrics == pytest.approx(theirs.metrics, rel=1e-6)
    assert pooled.tasks[1].metrics["windows"] == 24 and pooled.tasks[1].metrics["tokens"] == 64 + 23 * 32


@pytest.mark.slow
def test_evaluation_during_training_logs_to_the_run_and_matches_evaluating_the_checkpoint(shakespeare_dataset,
                                                                                          tmp_path):
    from gptray.train.pretrain import pretrain

    """Under FSDP, where every rank's forward passes must pair up: 5 units over 2 ranks in batches of 2
    leave one rank a pass short, which it must pad. Harness tasks too: rank 0 runs the harness, both ranks
    score shares of its requests (harness_training.py), and the numbers are `gptray eval`'s."""
    from harness_fixtures import write_tasks

    write_hellaswag(tmp_path / "hs.jsonl")
    tasks = "eval.train_tasks=[hellaswag, perplexity, gptray_mc, gptray_gen]"
    config = small_run_config(tmp_path, shakespeare_dataset, "name=with-evals", "train.max_steps=4",
                              "train.parallelism=fsdp", tasks, "eval.train_interval=2", "eval.limit=5",
                              "eval.batch_size=2", f"eval.hellaswag={tmp_path}/hs.jsonl",
                              f"eval.harness_include=[{write_tasks(tmp_path)}]", "eval.bootstrap_iters=0")
    result = pretrain(config, sample=False)
    history = metric_history(result, "eval/hellaswag/acc_norm")
    assert sorted(history) == [2, 4]
    assert sorted(metric_history(result, "eval/perplexity/ppl")) == [2, 4]
    assert sorted(metric_history(result, "eval/lm_eval/gptray_mc/acc")) == [2, 4]
    assert sorted(metric_history(result, "train/lm_eval_blocked_s")) == [2, 4]
    report = evaluate_checkpoint(result.checkpoint, ExperimentConfig.from_dict(
        {**config.to_dict(), "eval": {**config.to_dict()["eval"], "distributed": False,
                                      "tasks": config.eval.train_tasks}}))
    assert {"eval/lm_eval/gptray_mc/acc_norm", "eval/lm_eval/gptray_gen/exact_match"} <= set(report.metrics())
    at_end = {k: metric_history(result, k)[4] for k in report.metrics()}
    assert at_end == pytest.approx(report.metrics(), rel=1e-5)


@pytest.mark.slow
def test_asynchronous_harness_validation_logs_each_evaluation_checkpoint_to_the_run(shakespeare_dataset, tmp_path):
    """eval.train_async: Ray Train's validation tasks evaluate the checkpoints of steps 2 and 4 beside the worker,
    log to the run at those steps (Ray keeps a checkpoint until its validation is done: checkpoint.keep=1), and
    the worker never evaluates them itself."""
    from gptray.train.pretrain import pretrain
    from harness_fixtures import write_tasks

    config = small_run_config(tmp_path, shakespeare_dataset, "name=async-evals", "train.max_steps=4",
                              "ray.num_workers=1", "eval.train_tasks=[gptray_mc]", "eval.train_async=true",
                              "eval.train_interval=2", "checkpoint.interval=2", "checkpoint.keep=1", "eval.limit=5",
                              f"eval.harness_include=[{write_tasks(tmp_path)}]", "eval.bootstrap_iters=0",
                              "eval.cpus_per_actor=0.5")
    result = pretrain(config, sample=False)
    assert sorted(metric_history(result, "eval/lm_eval/gptray_mc/acc")) == [2, 4]
    assert sorted(metric_history(result, "train/lm_eval_async_s")) == [2, 4]
    assert metric_history(result, "train/lm_eval_blocked_s") == {}
    report = evaluate_checkpoint(result.checkpoint, ExperimentConfig.from_dict(
        {**config.to_dict(), "eval": {**config.to_dict()["eval"], "distributed": False,
                                      "tasks": ["gptray_mc"]}}))
    at_end = {k: metric_history(result, k)[4] for k in report.metrics()}
    assert at_end == pytest.approx(report.metrics(), rel=1e-5)


def test_the_run_directory_of_a_checkpoint_keeps_a_uris_settings():
    from gptray.core.paths import parent

    assert parent("/a/run/checkpoint_00000004") == "/a/run"
    assert parent("s3://bucket/runs/x/checkpoint_00000004/") == "s3://bucket/runs/x"
    assert parent("s3://bucket/runs/x/checkpoint_00000004?endpoint_override=http://127.0.0.1:9000") \
        == "s3://bucket/runs/x?endpoint_override=http://127.0.0.1:9000"


def harness_hellaswag_yaml(root: Path, data: Path) -> Path:
    """The harness's own hellaswag task (its preprocessing, its metrics) reading a local jsonl file."""
    import lm_eval

    official = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "hellaswag.yaml"
    root.mkdir(parents=True, exist_ok=True)
    (root / "hellaswag_local.yaml").write_text(
        f"include: {official}\ntask: hellaswag_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    validation: {data}\ntraining_split: null\n"
        "validation_split: validation\n")
    return root


def test_gptrays_hellaswag_and_the_harness_hellaswag_on_the_same_examples(memorizer, tmp_path):
    """The harness reads an example's context as "<activity_label>: <ctx_a> <Ctx_b>", gptray reads `ctx`;
    the harness's acc_norm divides an ending's log-likelihood by its characters, gptray's by its tokens
    (docs/evaluation.md, "lm-evaluation-harness tasks"). Given the context the harness reads, gptray's losses give the
    harness's acc, and its acc_norm once divided by characters."""
    _, checkpoint = memorizer
    write_hellaswag(tmp_path / "hs.jsonl")
    examples = [json.loads(line) for line in (tmp_path / "hs.jsonl").read_text().splitlines()]
    with open(tmp_path / "as_read.jsonl", "w") as out:  # the same examples, ctx as the harness reads it
        for example in examples:
            out.write(json.dumps({**example, "ctx": f"{example['activity_label']}: {example['ctx_a']}"}) + "\n")
    tasks = harness_hellaswag_yaml(tmp_path / "tasks", tmp_path / "hs.jsonl")
    harness = [f"eval.harness_include=[{tasks}]", "eval.bootstrap_iters=0"]
    report = evaluate_checkpoint(checkpoint, eval_config(tmp_path, f"eval.hellaswag={tmp_path}/as_read.jsonl",
                                                         "eval.tasks=[hellaswag, hellaswag_local]", *harness))
    ours, theirs = report.tasks
    assert theirs.label == "lm_eval/hellaswag_local" and theirs.metrics["examples"] == 6
    assert theirs.metrics["acc"] == pytest.approx(ours.metrics["acc"])
    by_characters = [int(np.argmin(np.array(r["losses"]) / [len(e) for e in example["endings"]])) == r["label"]
                     for r, example in zip(ours.results, examples)]
    assert theirs.metrics["acc_norm"] == pytest.approx(np.mean(by_characters))
    own = evaluate_checkpoint(checkpoint, eval_config(tmp_path, f"eval.hellaswag={tmp_path}/hs.jsonl",
                                                      "eval.tasks=[hellaswag]"))
    assert own.tasks[0].metrics["acc_norm"] == pytest.approx(4 / 6)  # on its own reading: the sentences it knows


@pytest.mark.slow
def test_harness_tasks_over_two_actors_equal_one_process_and_go_to_mlflow(memorizer, ray_session, tmp_path,
                                                                         capsys):
    from mlflow.tracking import MlflowClient

    from gptray.tracking.compare import load_runs, summarize
    from harness_fixtures import TASKS, write_tasks

    # a copy with no training run beside it (another test records one beside the memorizer's): a new run
    checkpoint = tmp_path / "runs" / "copy" / memorizer[1].name
    shutil.copytree(memorizer[1], checkpoint)
    tasks = write_tasks(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = [f"out_dir={tmp_path}", f"tracking.uri={uri}", "tracking.experiment=evals", "eval.bootstrap_iters=0",
                "eval.batch_size=2"]
    names = [arg for task in TASKS for arg in ("--task", task)]
    local = evaluate_checkpoint(checkpoint, make_config(tmp_path, *settings, f"eval.tasks=[{', '.join(TASKS)}]",
                                                        f"eval.harness_include=[{tasks}]", "eval.distributed=false"))
    assert main(["eval", "--checkpoint", str(checkpoint), *names, "--include", str(tasks),
                 "--output", str(tmp_path / "out.json"), *settings, "eval.num_actors=2"]) == 0
    out = capsys.readouterr().out
    run_id = out.split("MLflow     new run ")[1].split()[0]
    pooled = json.loads((tmp_path / "out.json").read_text())["tasks"]
    assert [t["task"] for t in pooled] == [f"lm_eval/{t}" for t in TASKS]
    assert "2 Ray Data actor(s)" in pooled[0]["workers"]
    for ours, theirs in zip(local.tasks, pooled):
        assert ours.metrics == pytest.approx(theirs["metrics"], rel=1e-6)
    client = MlflowClient(uri)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval/lm_eval/gptray_mc/acc"] == pytest.approx(local.tasks[0].metrics["acc"])
    assert "eval/lm_eval/gptray_rolling/word_perplexity" in metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "lm_eval_results_step_00000080.json" in artifacts
    records, _ = load_runs(client, run_ids=[run_id])
    [summary] = summarize(records, "eval/lm_eval/gptray_mc/acc")
    assert summary.mean == pytest.approx(local.tasks[0].metrics["acc"])
