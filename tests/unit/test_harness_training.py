"""Harness tasks during training: the requests cut into contiguous shares by rank give the same results at any
world size, FSDP's ranks run the same number of forward passes, the training engine's harness results equal
`gptray eval`'s on the same model, eval.train_tasks's harness names are checked before a run starts, workers
import the harness only when they need it, and eval.train_async's settings are checked. (The 2-worker FSDP run
and the asynchronous validation run end to end are in tests/integration/test_eval.py.)"""

from __future__ import annotations

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import gptray
from gptray.config import EvalConfig, load_config
from gptray.core.errors import ConfigError
from gptray.data.tiktoken_tokenizer import TiktokenTokenizer
from gptray.eval.harness_model import GptrayLM, LocalScorer
from gptray.eval.harness_scoring import generation_unit, loglikelihood_unit
from gptray.eval.harness_tasks import evaluate_harness, task_manager
from gptray.eval.harness_training import RankShareScorer, TrainingHarness, training_harness
from gptray.eval.harness_validation import evaluate_reported_checkpoint, validation_config
from gptray.eval.training import BLOCKED_METRIC, progress_parts, training_payload
from gptray.train.engine import TrainingEngine
from harness_fixtures import BLOCK_SIZE, TASKS, tiny_gpt2, write_tasks

CPU = torch.device("cpu")


def requests(tokenizer) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(0)
    loglikelihood = [loglikelihood_unit(i, rng.integers(0, 50000, int(rng.integers(1, 60))).tolist(),
                                        rng.integers(0, 50000, int(rng.integers(1, 4))).tolist(), BLOCK_SIZE)
                     for i in range(7)]
    generation = [generation_unit(i, tokenizer.encode(f"Anna left the {thing}"), ["."], 4, 0.0, BLOCK_SIZE)
                  for i, thing in enumerate(["lamp", "kettle", "ticket"])]
    return loglikelihood, generation


def test_every_world_size_scores_the_same_requests_the_same():
    """World sizes 1, 2 and 3: each rank's share scored by its own scorer (one process standing in for each rank:
    what `score` gives a rank when no process group is up is its own share) and merged, against scoring all in
    one place."""
    tokenizer = TiktokenTokenizer("gpt2")
    model = tiny_gpt2(seed=3)
    loglikelihood, generation = requests(tokenizer)
    whole = LocalScorer(model, tokenizer, CPU, batch_size=2)
    expected, generations = whole.loglikelihoods(loglikelihood), whole.generations(generation)
    for world_size in (1, 2, 3):
        ranks = [RankShareScorer(LocalScorer(model, tokenizer, CPU, batch_size=2), rank, world_size, lockstep=False)
                 for rank in range(world_size)]
        merged = sorted((r for s in ranks for r in s.score("loglikelihood", loglikelihood)), key=lambda r: r["index"])
        assert [r["index"] for r in merged] == list(range(len(loglikelihood)))
        for ours, theirs in zip(merged, expected):
            assert ours["logprob"] == pytest.approx(theirs["logprob"], abs=1e-5)
            assert ours["greedy"] == theirs["greedy"]
        generated = sorted((r for s in ranks for r in s.score("generate", generation)), key=lambda r: r["index"])
        assert generated == generations


def test_under_fsdp_every_rank_runs_as_many_forward_passes():
    """7 log-likelihood requests over 3 ranks in batches of 2 (shares of 2, 2 and 3): 2 passes each; every rank
    generates every request (a generation's passes depend on its text)."""
    tokenizer = TiktokenTokenizer("gpt2")
    model = tiny_gpt2(seed=3)
    loglikelihood, generation = requests(tokenizer)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    for kind, units in (("loglikelihood", loglikelihood), ("generate", generation)):
        passes = []
        for rank in range(3):
            calls.clear()
            RankShareScorer(LocalScorer(model, tokenizer, CPU, batch_size=2), rank, 3, lockstep=True).score(kind,
                                                                                                             units)
            passes.append(len(calls))
        assert len(set(passes)) == 1 and passes[0] > 0, (kind, passes)
    assert passes[0] > 2  # generation: a pass per new token, not one per batch


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("harness-training"))


def test_the_training_engines_harness_results_are_gptray_evals_on_the_same_model(tasks):
    config = load_config(None, ["model.n_layer=2", "model.n_head=2", "model.n_embd=32",
                                f"model.block_size={BLOCK_SIZE}", "data.tokenizer=gpt2", "train.batch_size=2"])
    tokens = np.random.default_rng(0).integers(0, 50257, 2_000).astype(np.uint16)
    engine = TrainingEngine(config, CPU, rank=0, world_size=1, train_data=tokens, val_tokens=tokens)
    engine.train_step(0)
    tokenizer = TiktokenTokenizer("gpt2")
    settings = EvalConfig(harness_include=[str(tasks)], bootstrap_iters=0, batch_size=3, limit=3)
    random.seed(7)
    torch.manual_seed(7)
    python, numpy_state, torch_state = random.getstate(), np.random.get_state()[1], torch.random.get_rng_state()
    metrics = TrainingHarness(list(TASKS), settings, tokenizer).run(engine)
    assert random.getstate() == python and (np.random.get_state()[1] == numpy_state).all()  # training's randomness
    assert torch.equal(torch.random.get_rng_state(), torch_state)  # left as it was
    assert engine.module.training  # back to training mode
    lm = GptrayLM.from_model(engine.module, tokenizer, CPU, batch_size=3, seed=settings.seed)
    results, _ = evaluate_harness(lm, list(TASKS), settings, "this process", task_manager(settings, list(TASKS)))
    expected = {f"eval/{r.label}/{k}": v for r in results for k, v in r.metrics.items()}
    assert metrics.pop(BLOCKED_METRIC) > 0
    assert metrics == pytest.approx(expected, rel=1e-6)
    assert {"eval/lm_eval/gptray_mc/acc_norm", "eval/lm_eval/gptray_rolling/word_perplexity",
            "eval/lm_eval/gptray_gen/exact_match"} <= set(metrics)
    line = progress_parts({**metrics, "eval/hellaswag/acc": 0.2, "eval/hellaswag/acc_norm": 0.3, BLOCKED_METRIC: 1.25})
    assert [part.rsplit(" ", 1)[0] for part in sorted(line[:3])] == [
        "lm_eval/gptray_gen exact_match", "lm_eval/gptray_mc acc_norm", "lm_eval/gptray_rolling word_perplexity"]
    assert line[3:] == ["hellaswag acc_norm 0.3000", "lm_eval 1.2 s"]


def test_harness_names_in_train_tasks_are_checked_before_a_run_starts(tasks, tmp_path):
    tokenizer = TiktokenTokenizer("gpt2")

    def harness(*overrides):
        return training_harness(load_config(None, ["data.tokenizer=gpt2", f"eval.harness_include=[{tasks}]",
                                                   "eval.train_limit=3", *overrides]), tokenizer)

    ready = harness("eval.train_tasks=[hellaswag, gptray_mc, lm_eval/gptray_gen]")
    assert ready.names == ["gptray_mc", "gptray_gen"] and ready.settings.limit == 3 and ready.tokenizer is tokenizer
    assert harness("eval.train_tasks=[hellaswag]") is None
    assert harness("eval.train_tasks=[gptray_mc]", "eval.train_async=true", "ray.num_workers=1",
                   "checkpoint.interval=10", "eval.train_interval=20") is None  # Ray Train's validation runs them
    payload = training_payload(load_config(None, ["data.tokenizer=gpt2", "eval.train_tasks=[gptray_mc]"]), tokenizer,
                               ready)
    assert payload["tasks"] == [] and payload["harness"] is ready
    assert training_payload(load_config(None, ["data.tokenizer=gpt2", "eval.train_tasks=[gptray_mc]"]), tokenizer,
                            None) is None
    with pytest.raises(ConfigError, match="no lm-evaluation-harness task named 'gptray_mcq'") as caught:
        harness("eval.train_tasks=[gptray_mcq]")
    assert caught.value.key == "eval.train_tasks"
    (tmp_path / "broken.yaml").write_text((tasks / "gptray_mc.yaml").read_text().replace("gptray_mc", "broken")
                                          .replace(str(tasks / "mc.jsonl"), str(tmp_path / "missing.jsonl")))
    with pytest.raises(ConfigError, match="cannot load lm-evaluation-harness task") as caught:
        training_harness(load_config(None, ["data.tokenizer=gpt2", f"eval.harness_include=[{tmp_path}]",
                                            "eval.train_tasks=[broken]"]), tokenizer)
    assert caught.value.key == "eval.train_tasks"


def test_the_workers_import_the_harness_only_for_a_run_with_harness_tasks():
    """lm-eval's import costs about a second and a half: the modules a worker imports (gptray.train.loop and what
    it imports at the top, transitively) never reach it; a run with harness tasks imports it by unpickling its
    TrainingHarness."""
    root = Path(gptray.__file__).parent
    seen, todo, third_party = set(), ["gptray.train.loop"], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = root.joinpath(*module.split(".")[1:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.parse(path.read_text()).body:  # the top level only: function bodies run on demand
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module \
                else []  # `from a.b import c`: c may be a module; a.b runs either way
            for name in names:
                parts = name.split(".")
                if parts[0] != "gptray":
                    third_party.add(parts[0])
                for k in range(2, len(parts) + 1):  # a package's __init__ runs before its module
                    candidate = root.joinpath(*parts[1:k])
                    if candidate.is_dir() or candidate.with_suffix(".py").is_file():
                        todo.append(".".join(parts[:k]))
    assert "gptray.eval.training" in seen and "torch" in third_party  # it did follow the imports
    assert "lm_eval" not in third_party, sorted(m for m in seen if m.startswith("gptray.eval"))


def test_asynchronous_harness_evaluation_needs_workers_checkpoints_at_its_steps_and_a_harness_task():
    base = ["data.tokenizer=gpt2", "eval.train_tasks=[hellaswag, arc_easy]", "eval.train_async=true",
            "ray.num_workers=2", "checkpoint.interval=100"]
    config = load_config(None, [*base, "eval.train_interval=200"])
    assert config.eval.train_async
    for overrides, message in [(["ray.num_workers=0"], "needs Ray Train workers"),
                               (["eval.train_interval=150"], "must be a multiple of checkpoint.interval"),
                               (["eval.train_tasks=[hellaswag]"], "names none")]:
        with pytest.raises(ConfigError, match=message) as caught:
            load_config(None, [*base, "eval.train_interval=200", *overrides])
        assert caught.value.key == "eval.train_async"
    validation = validation_config(load_config(None, [*base, "eval.train_interval=200", "eval.cpus_per_actor=0.5"]),
                                   "sqlite:///x.db", "run-id")
    assert validation.fn is evaluate_reported_checkpoint
    assert validation.ray_remote_kwargs == {"num_cpus": 0.5, "num_gpus": 0}
    assert validation.task_config.fn_kwargs["names"] == ["arc_easy"]
    assert validation_config(load_config(None, ["data.tokenizer=gpt2"]), None, None) is None
