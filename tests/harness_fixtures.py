"""Local lm-evaluation-harness tasks the tests write for themselves: one per request type (multiple choice,
rolling log-likelihood, generation), over jsonl files of generated sentences (nothing copied from a
dataset), as the harness's `dataset_path: json` tasks, and a tiny GPT-2-style checkpoint."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import torch

from gptray.checkpoint.files import TrainingState, save_checkpoint
from gptray.config import DataConfig, ExperimentConfig, ModelConfig
from gptray.model import GPT

PEOPLE = ["Anna", "Ben", "Carla", "Dev", "Elif", "Femi"]
PLACES = ["garden", "kitchen", "station", "library", "harbour", "market"]
THINGS = ["lamp", "kettle", "ticket", "novel", "anchor", "basket"]
TASKS = ("gptray_mc", "gptray_rolling", "gptray_gen")  # multiple choice, loglikelihood_rolling, generate_until
BLOCK_SIZE = 32  # small, so that long contexts are cut from the left


def sentence(i: int) -> str:
    return f"{PEOPLE[i % 6]} left the {THINGS[i % 6]} in the {PLACES[i % 6]}."


def write_tasks(root: Path, mc_docs: int = 6) -> Path:
    """Three task YAMLs and their jsonl files under root/tasks (a harness include path)."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    long_story = " ".join(sentence(j) for j in range(6))  # longer than BLOCK_SIZE tokens
    mc = []
    for i in range(mc_docs):
        prefix = (long_story + " ") if i % 3 == 0 else ""
        choices = list(PLACES[:4]) if PLACES[i % 6] in PLACES[:4] else [PLACES[i % 6], *PLACES[:3]]
        rng.shuffle(choices)
        mc.append({"question": f"{prefix}{PEOPLE[i % 6]} left the {THINGS[i % 6]} in the",
                   "choices": [c + "." for c in choices], "label": choices.index(PLACES[i % 6])})
    rolling = [{"text": sentence(i) + " " + sentence(i + 1)} for i in range(3)] + [{"text": long_story * 2}]
    gen = [{"prompt": f"{PEOPLE[i % 6]} left the", "answer": f" {THINGS[i % 6]} in the {PLACES[i % 6]}"}
           for i in range(4)] + [{"prompt": long_story + " " + PEOPLE[1] + " left the", "answer": " kettle"}]
    for name, docs in (("mc", mc), ("rolling", rolling), ("gen", gen)):
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    (tasks / "gptray_mc.yaml").write_text(
        "task: gptray_mc\n" + common.format(path=tasks / "mc.jsonl") +
        "output_type: multiple_choice\ndoc_to_text: question\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (tasks / "gptray_rolling.yaml").write_text(
        "task: gptray_rolling\n" + common.format(path=tasks / "rolling.jsonl") +
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (tasks / "gptray_gen.yaml").write_text(
        "task: gptray_gen\n" + common.format(path=tasks / "gen.jsonl") +
        "output_type: generate_until\ndoc_to_text: prompt\ndoc_to_target: answer\ntarget_delimiter: ''\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 8\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return tasks


def tiny_gpt2(seed: int = 0) -> GPT:
    """A 2-layer GPT-2 (exportable to Hugging Face) with weights large enough that its predictions are
    peaked: no near-ties for greedy decoding or a multiple choice to fall either way on rounding."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(preset=None, n_layer=2, n_head=2, n_embd=32, block_size=BLOCK_SIZE).resolved())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
    return model.eval()


def save_tiny_checkpoint(model: GPT, directory: Path) -> Path:
    save_checkpoint(directory, model.state_dict(), None, TrainingState(step=1, model=asdict(model.config)),
                    ExperimentConfig(model=model.config, data=DataConfig(tokenizer="gpt2")))
    return directory
