"""Fine-tuning: prompt/completion data with the loss masked to completions, from gptray or Hugging Face bases."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import GPT2_TOKENIZER, SMALL_RUN, make_config

NAMES = ["Romeo", "Juliet", "Mercutio", "Tybalt", "Benvolio", "Capulet", "Montague", "Nurse"]
PLACES = ["Verona", "Mantua", "the orchard", "the tomb", "the square", "the ball", "the chapel", "the street"]


def write_pairs(path: Path, count: int) -> list[dict]:
    """Prompt/completion records whose completion follows from the prompt (a pattern fine-tuning can learn)."""
    rows = []
    for i in range(count):
        name, place = NAMES[i % len(NAMES)], PLACES[(i * 3) % len(PLACES)]
        rows.append({"prompt": f"Where is {name} in scene {i}?\nAnswer:", "completion": f" {name} is in {place}."})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def tree_digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pairs_dataset(ray_session, tmp_path_factory):
    from gptray.data.tokenize_job import tokenize_corpus

    root = tmp_path_factory.mktemp("pairs")
    rows = write_pairs(root / "pairs.jsonl", 600)
    config = make_config(root, f"data.sources=[{{path: {root}/pairs.jsonl, prompt_field: prompt, "
                               "text_field: completion}]", "data.val_fraction=0.2")
    return config, rows, tokenize_corpus(config)


def test_prompt_tokens_are_recorded_exactly(pairs_dataset):
    """Each document is prompt + completion + <|endoftext|>, encoded separately, with the prompt's length."""
    import tiktoken

    from gptray.data.shards import read_shard

    config, rows, result = pairs_dataset
    manifest = result.manifest
    assert manifest.prompt_masked and manifest.documents == len(rows)
    enc = tiktoken.get_encoding("gpt2")
    by_doc = {}
    for split in ("train", "val"):
        for shard in manifest.split_info(split).shards:
            table = read_shard(config.data.dataset_dir, shard)
            for doc, tokens, prompt in zip(table.column("doc").to_pylist(), table.column("tokens").to_pylist(),
                                           table.column("prompt_tokens").to_pylist()):
                by_doc[doc] = (tokens, prompt)
    assert sorted(by_doc) == list(range(len(rows)))
    for doc, row in enumerate(rows):
        prompt = enc.encode_ordinary(row["prompt"])
        assert by_doc[doc] == (prompt + enc.encode_ordinary(row["completion"]) + [enc.eot_token], len(prompt))


def test_loss_mask_leaves_out_prompt_targets(pairs_dataset):
    from gptray.data.global_order import IGNORE_INDEX, gather_windows, open_split_loss_mask, open_split_tokens
    from gptray.data.manifest import Manifest

    config, rows, _ = pairs_dataset
    manifest = Manifest.load(config.data.dataset_dir)
    tokens = open_split_tokens(config.data.dataset_dir, manifest, "train", config.data.cache_dir)
    mask = open_split_loss_mask(config.data.dataset_dir, manifest, "train", config.data.cache_dir)
    assert len(mask) == len(tokens) and 0 < mask.mean() < 1
    x, y = gather_windows(tokens, np.array([0, 64]), 64, mask)
    counted = y != IGNORE_INDEX
    np.testing.assert_array_equal(counted, mask[np.array([[s + 1 + i for i in range(64)] for s in (0, 64)])] == 1)
    np.testing.assert_array_equal(y[counted], np.stack([tokens[1:65], tokens[65:129]])[counted])
    # the first document's prompt: its tokens are never targets
    first_prompt = len(__import__("tiktoken").get_encoding("gpt2").encode_ordinary(rows[0]["prompt"]))
    assert not counted[0, : first_prompt - 1].any() and counted[0, first_prompt - 1]


def test_all_prompt_micro_batch_trains_without_nan():
    """A micro-batch whose targets are all prompt adds nothing (not NaN) to the step."""
    from gptray.config import load_config
    from gptray.train.engine import TrainingEngine

    tokens = np.random.default_rng(0).integers(0, 50257, 5_000).astype(np.uint16)
    mask = np.zeros_like(tokens, dtype=np.uint8)
    config = load_config(None, [GPT2_TOKENIZER, "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                                "train.batch_size=2", "train.micro_batch_size=2", "optimizer.lr=1e-3",
                                "schedule.warmup_steps=1", "ray.num_workers=1", "train.eval_windows=4",
                                "optimizer.weight_decay=0"])  # so that a zero gradient leaves every weight as it is
    engine = TrainingEngine(config, torch.device("cpu"), 0, 1, tokens, tokens, mask, mask)
    before = [p.detach().clone() for p in engine.module.parameters()]
    result = engine.train_step(0)
    assert result.loss.item() == 0.0 and float(result.grad_norm) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, engine.module.parameters()))
    assert np.isnan(engine.evaluate().loss)  # nothing counted: no loss, reported as NaN rather than 0
    with_bytes = TrainingEngine(config, torch.device("cpu"), 0, 1, tokens, tokens, mask, mask,
                                token_bytes=np.ones(50257, dtype=np.int64))
    assert np.isnan(with_bytes.evaluate().bpb)  # nor bits per byte: prompt targets count in neither sum


def masked_loss(checkpoint, config) -> float:
    """Mean loss of a checkpoint's model over every train window of the dataset, completion tokens only."""
    from gptray.data.global_order import gather_windows, open_split_loss_mask, open_split_tokens
    from gptray.data.manifest import Manifest
    from gptray.generation import load_model

    model, _ = load_model(checkpoint)
    manifest = Manifest.load(config.data.dataset_dir)
    tokens = open_split_tokens(config.data.dataset_dir, manifest, "train", config.data.cache_dir)
    mask = open_split_loss_mask(config.data.dataset_dir, manifest, "train", config.data.cache_dir)
    seq = model.config.block_size
    starts = np.arange(0, len(tokens) - seq - 1, seq)
    x, y = gather_windows(tokens, starts, seq, mask)
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(y))[1].item()


def test_finetune_lowers_loss_and_leaves_the_base_untouched(reference_run, pairs_dataset, tmp_path):
    from gptray.checkpoint.files import latest_checkpoint, read_config, read_state
    from gptray.cli.main import main

    base_config, base = reference_run
    base_dir = Path(base.run_dir)
    before = tree_digest(base_dir)
    config, _, _ = pairs_dataset
    overrides = [o for o in SMALL_RUN
                 if not o.startswith(("model.", "optimizer.lr", "schedule.warmup", "schedule.decay"))]
    code = main(["finetune", "--init-from", str(base_dir), "--no-sample", f"out_dir={tmp_path}/runs",
                 "name=ft", f"data.dataset_dir={config.data.dataset_dir}", GPT2_TOKENIZER, "train.max_steps=24",
                 "optimizer.lr=2e-3", *overrides, "ray.num_workers=0"])  # local mode: ~4× cheaper than workers
    assert code == 0
    tuned = latest_checkpoint(tmp_path / "runs" / "ft")
    assert read_state(tuned).step == 24
    resolved = read_config(tuned)
    assert resolved.train.recipe == "finetune" and resolved.model.dropout == 0.1  # the recipe's
    assert resolved.schedule.warmup_steps == 2  # 5% of 24 steps, rounded up
    assert resolved.model.shape() == base_config.model.shape()
    base_loss, tuned_loss = masked_loss(base.checkpoint, config), masked_loss(tuned, config)
    assert tuned_loss < base_loss - 1.0, (base_loss, tuned_loss)
    assert tree_digest(base_dir) == before  # nothing written into the base run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("gptray").experiment_id])
    assert run.data.tags["mlflow.runName"] == "ft" and run.info.status == "FINISHED"
    assert run.data.params["train.init_from"] == str(base_dir) and "val/loss" in run.data.metrics


def test_finetune_refuses_what_would_change_or_overwrite_the_base(reference_run, pairs_dataset, tmp_path):
    from gptray.core.errors import ConfigError

    _, base = reference_run
    config, _, _ = pairs_dataset
    common = [f"data.dataset_dir={config.data.dataset_dir}", f"train.init_from={base.run_dir}", "model.preset=null"]
    with pytest.raises(ConfigError, match=r"model.n_layer: the base model has n_layer=2"):
        make_config(tmp_path, *common, "model.n_layer=3")
    with pytest.raises(ConfigError, match="model.preset: fine-tuning keeps the base model"):
        make_config(tmp_path, f"data.dataset_dir={config.data.dataset_dir}", f"train.init_from={base.run_dir}",
                    "model.preset=gpt2")
    with pytest.raises(ConfigError, match="^name: the run directory"):
        make_config(Path(base.run_dir).parents[1], *common, f"name={Path(base.run_dir).name}")
    with pytest.raises(ConfigError, match="train.init_from: no checkpoint"):
        make_config(tmp_path, *common[:1], f"train.init_from={tmp_path}/nothing")
    with pytest.raises(ConfigError, match=r"data.sources\[0\].prompt_field: prompt/completion fields need JSON"):
        from gptray.data.sources import resolve_sources

        text = tmp_path / "plain.txt"
        text.write_text("hello\n")
        resolve_sources(make_config(tmp_path, f"data.sources=[{{path: {text}, prompt_field: p}}]").data.sources)


def test_hugging_face_base_is_imported_once_and_keeps_its_shape(reference_run, pairs_dataset, tmp_path):
    """init_from a Hugging Face GPT-2 directory: the model comes from its config.json, the weights from an import."""
    from gptray.checkpoint.files import load_tensors
    from gptray.interop.huggingface import export_checkpoint
    from gptray.train.finetune import base_checkpoint, find_base

    _, base = reference_run
    config, _, _ = pairs_dataset
    export_checkpoint(base.checkpoint, tmp_path / "hf")
    resolved = make_config(tmp_path, f"data.dataset_dir={config.data.dataset_dir}", "model.preset=null",
                           f"train.init_from={tmp_path}/hf", "train.recipe=finetune", "train.max_steps=20")
    assert resolved.model.n_layer == 2 and resolved.model.n_embd == 64 and resolved.model.dropout == 0.1
    assert (resolved.optimizer.lr, resolved.train.batch_size) == (5e-5, 32)  # the recipe's, not nano's preset
    imported = base_checkpoint(find_base(resolved.train.init_from), resolved.out_dir)
    assert imported.parent == Path(resolved.out_dir) / "bases"
    original, again = load_tensors(base.checkpoint, "model.pt"), load_tensors(imported, "model.pt")
    for name, tensor in original.items():
        torch.testing.assert_close(again[name], tensor)
    mtime = (imported / "model.pt").stat().st_mtime_ns
    assert base_checkpoint(find_base(resolved.train.init_from), resolved.out_dir) == imported
    assert (imported / "model.pt").stat().st_mtime_ns == mtime  # reused, not imported again
