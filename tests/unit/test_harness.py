"""gptray as an lm-evaluation-harness model: the same checkpoint through gptray's model (`gptray`) and the
harness's own Hugging Face model (`hf`, on gptray's export) gives the same per-request log-likelihoods,
generations and accuracies on a local task per request type; windows are cut from the left as the harness
expects; harness task names and results in gptray's terms."""

from __future__ import annotations

import math

import lm_eval.models.huggingface  # noqa: F401 (registers the harness's `hf` model)
import pytest
import torch
from lm_eval import evaluator

from gptray.config import EvalConfig
from gptray.core.errors import ConfigError
from gptray.data.tiktoken_tokenizer import TiktokenTokenizer
from gptray.eval.harness_model import GptrayLM
from gptray.eval.harness_scoring import generation_unit, loglikelihood_unit
from gptray.eval.harness_tasks import check_tasks, harness_task_name, task_manager, task_results
from gptray.interop.huggingface import export_checkpoint
from harness_fixtures import BLOCK_SIZE, TASKS, save_tiny_checkpoint, sentence, tiny_gpt2, write_tasks


@pytest.fixture(scope="module")
def harness_setup(tmp_path_factory):
    """A tiny GPT-2 as a gptray checkpoint and as its Hugging Face export, and the local tasks."""
    root = tmp_path_factory.mktemp("harness")
    model = tiny_gpt2()
    checkpoint = save_tiny_checkpoint(model, root / "run" / "checkpoint_00000001")
    export_checkpoint(checkpoint, root / "hf")
    tasks = write_tasks(root)
    manager = task_manager(EvalConfig(harness_include=[str(tasks)]), list(TASKS))
    return checkpoint, root / "hf", manager


def run(model, model_args, manager) -> dict:
    return evaluator.simple_evaluate(model=model, model_args=model_args, tasks=list(TASKS), task_manager=manager,
                                     bootstrap_iters=0, log_samples=True)


def responses(results: dict, task: str) -> list:
    return [sample["resps"] for sample in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_gptray_and_the_harness_hf_model_agree_on_every_request(harness_setup):
    checkpoint, hf_dir, manager = harness_setup
    ours = run("gptray", {"pretrained": str(checkpoint), "device": "cpu", "batch_size": 3}, manager)
    theirs = run("hf", {"pretrained": str(hf_dir), "device": "cpu", "dtype": "float32", "batch_size": 3}, manager)
    for task in ("gptray_mc", "gptray_rolling"):
        mine, reference = responses(ours, task), responses(theirs, task)
        assert len(mine) == len(reference) > 0
        for doc_mine, doc_reference in zip(mine, reference):
            for (ll_mine, *greedy_mine), (ll_ref, *greedy_ref) in zip(_flat(doc_mine), _flat(doc_reference)):
                assert ll_mine == pytest.approx(ll_ref, abs=1e-4)
                assert greedy_mine == greedy_ref
    assert responses(ours, "gptray_gen") == responses(theirs, "gptray_gen")
    assert any(r[0][0].strip() for r in responses(ours, "gptray_gen"))  # it generated text, not nothing
    for task in TASKS:
        for key, value in theirs["results"][task].items():
            if isinstance(value, float):
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, key)
    assert ours["results"]["gptray_mc"]["acc,none"] == theirs["results"]["gptray_mc"]["acc,none"]
    assert ours["results"]["gptray_mc"]["acc_norm,none"] == theirs["results"]["gptray_mc"]["acc_norm,none"]
    # the choices' log-likelihoods are far apart: agreeing on accuracy is not agreeing on ties
    for doc in responses(ours, "gptray_mc"):
        values = sorted(ll for ll, *_ in _flat(doc))
        assert min(b - a for a, b in zip(values, values[1:])) > 1e-2


def _flat(doc_responses: list) -> list[tuple]:
    """A document's responses as (log-likelihood, greedy) tuples: one per choice, or one rolling total."""
    out = []
    for response in doc_responses:
        value = response[0] if isinstance(response, list) and len(response) == 1 else response
        out.append(tuple(value) if isinstance(value, (list, tuple)) else (value,))
    return out


def test_context_longer_than_the_window_is_cut_from_the_left():
    unit = loglikelihood_unit(0, list(range(100)), [7, 8], block_size=BLOCK_SIZE)
    assert unit["tokens"] == (list(range(100)) + [7, 8])[-(BLOCK_SIZE + 1):] and unit["scored"] == 2
    assert loglikelihood_unit(1, [1, 2], [3], BLOCK_SIZE)["tokens"] == [1, 2, 3]
    with pytest.raises(ValueError, match="does not fit"):
        loglikelihood_unit(2, [1], list(range(BLOCK_SIZE + 1)), BLOCK_SIZE)
    assert generation_unit(0, list(range(100)), ["."], 8, 0.0, BLOCK_SIZE)["context"] == list(range(100))[-24:]
    assert generation_unit(0, [5, 6], ["."], 64, 0.0, BLOCK_SIZE)["context"] == [6]


def test_a_cut_request_scores_as_the_model_reads_its_last_window():
    torch.manual_seed(1)
    model = tiny_gpt2(seed=1)
    tokenizer = TiktokenTokenizer("gpt2")
    lm = GptrayLM.from_model(model, tokenizer, torch.device("cpu"), batch_size=2)
    context, continuation = list(range(1000, 1050)), [11, 12, 13]
    (logprob, _), = lm._loglikelihood_tokens([(None, context, continuation)])
    window = torch.tensor([(context + continuation)[-(BLOCK_SIZE + 1):]])
    with torch.no_grad():
        logits, _ = model(window[:, :-1])
    expected = torch.log_softmax(logits[0, -3:].double(), -1).gather(1, torch.tensor([[11], [12], [13]])).sum()
    assert logprob == pytest.approx(float(expected), abs=1e-5)


def test_task_names_and_results_in_gptrays_terms(harness_setup):
    assert harness_task_name("hellaswag") is None and harness_task_name("perplexity") is None
    assert harness_task_name("lm_eval/hellaswag") == "hellaswag" and harness_task_name("arc_easy") == "arc_easy"
    _, _, local = harness_setup  # the local tasks alone: the harness's own are not indexed for them
    assert set(local.all_tasks) == set(TASKS)
    with pytest.raises(ConfigError, match="no lm-evaluation-harness task named 'arc_easy'"):
        check_tasks(["arc_easy"], local)
    everything = task_manager(EvalConfig(), ["arc_easy"])  # the tasks README names exist in the harness pinned
    check_tasks(["hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai"], everything)
    with pytest.raises(ConfigError, match="no lm-evaluation-harness task named 'arc_eazy'"):
        check_tasks(["arc_eazy"], everything)
    results = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1,
                                        "acc_norm,none": 0.25, "acc_norm_stderr,none": "N/A",
                                        "exact_match,strict-match": 1.0}},
               "n-shot": {"arc_easy": 0}, "n-samples": {"arc_easy": {"original": 10, "effective": 4}}}
    [result] = task_results(results, 1.0, "this process")
    assert result.label == "lm_eval/arc_easy"
    assert result.metrics == {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.25, "exact_match-strict-match": 1.0,
                              "examples": 4.0}


@pytest.mark.parametrize("settings, key", [
    (dict(tasks=["arc easy"]), "eval.tasks[0]"), (dict(num_fewshot=-1), "eval.num_fewshot"),
    (dict(bootstrap_iters=-1), "eval.bootstrap_iters"), (dict(train_tasks=["arc easy"]), "eval.train_tasks[0]"),
])
def test_harness_settings_are_validated_by_the_eval_section(settings, key):
    with pytest.raises(ConfigError) as caught:
        EvalConfig(**settings).validate()
    assert caught.value.key == key
    EvalConfig(tasks=["hellaswag", "lm_eval/hellaswag", "arc_easy", "lambada_openai"], num_fewshot=5,
               train_tasks=["hellaswag", "arc_easy", "lm_eval/hellaswag"]).validate()


def test_rolling_log_likelihood_is_the_sum_over_disjoint_windows():
    torch.manual_seed(2)
    model = tiny_gpt2(seed=1)
    tokenizer = TiktokenTokenizer("gpt2")
    lm = GptrayLM.from_model(model, tokenizer, torch.device("cpu"))
    from lm_eval.api.instance import Instance

    text = " ".join(sentence(i) for i in range(8))
    tokens = [tokenizer.eot_token, *tokenizer.encode(text)]  # the first window reads end-of-text
    assert len(tokens) - 1 > 2 * BLOCK_SIZE  # three windows, the last a partial one
    [total] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    expected = 0.0
    with torch.no_grad():
        for start in range(1, len(tokens), BLOCK_SIZE):  # each window reads as much before it as fits
            end = min(start + BLOCK_SIZE, len(tokens))
            window = tokens[max(end - BLOCK_SIZE - 1, 0) : end]
            logits, _ = model(torch.tensor([window[:-1]]))
            logprobs = torch.log_softmax(logits[0].double(), -1)
            n = end - start
            targets = torch.tensor(window[-n:])
            expected += float(logprobs[-n:].gather(1, targets[:, None]).sum())
    assert math.isclose(total, expected, abs_tol=1e-4)


def test_runs_are_compared_by_any_evaluation_metric():
    from gptray.tracking.compare import RunRecord, check_metric, summarize

    check_metric("eval/lm_eval/arc_easy/acc", "sweep.metric")
    check_metric("best_val_loss", "sweep.metric")
    with pytest.raises(ConfigError, match="eval/<task>/<measure>") as caught:
        check_metric("eval/acc", "sweep.metric")
    assert caught.value.key == "sweep.metric"
    key = "eval/lm_eval/arc_easy/acc"
    records = [RunRecord("a", "a", "rmsnorm", 0, "FINISHED", metrics={key: 0.40}),
               RunRecord("b", "b", "rmsnorm", 1, "FINISHED", metrics={key: 0.42}),
               RunRecord("c", "c", "layernorm", 0, "FINISHED", metrics={key: 0.35}),
               RunRecord("d", "d", "layernorm", 1, "FINISHED", metrics={})]  # never evaluated: left out
    rms, layer = summarize(records, key, baseline="layernorm")
    assert rms.mean == pytest.approx(0.41) and layer.n == 1 and rms.diff == pytest.approx(0.06)
