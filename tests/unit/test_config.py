"""Configs: YAML + dotted overrides → typed, validated dataclasses; bad input names its key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from gptray.config import ExperimentConfig, load_config
from gptray.config.loader import read_yaml
from gptray.core.errors import ConfigError
from helpers import REPO


def error_for(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return info.value


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("model.n_embd=130", "model.n_embd", "divisible by model.n_head"),
        ("optimizer.lr=-1", "optimizer.lr", "positive"),
        ("optimizer.lr=fast", "optimizer.lr", "number"),
        ("train.batch_size=1", "train.batch_size", "cannot be shared by 2 workers"),
        ("train.precision=fp8", "train.precision", "one of"),
        ("model.preset=gpt5", "model.preset", "unknown preset"),
        ("data.val_fraction=1.5", "data.val_fraction", "[0, 1)"),
        ("model.n_layer=2.5", "model.n_layer", "integer"),
        ("tracking.enabled=maybe", "tracking.enabled", "true or false"),
        ("ray.num_workers=-1", "ray.num_workers", ">= 0 (0: local mode"),
        ("train.seq_len=1000", "train.seq_len", "block_size"),
    ],
)
def test_invalid_value_names_its_key(override, key, words):
    error = error_for(override)
    assert error.key == key
    assert words in str(error)


def test_unknown_key_is_refused_with_a_suggestion():
    error = error_for("train.lrr=0.1")
    assert error.key == "train.lrr"
    assert "did you mean 'optimizer.lr'" in str(error)  # lr lives in the optimizer section
    assert "did you mean 'max_steps'" in str(error_for("train.max_step=10"))


@pytest.mark.parametrize("old, new", [("train.lr", "optimizer.lr"), ("train.optimizer", "optimizer.name"),
                                      ("train.schedule", "schedule.name"),
                                      ("train.lr_decay_steps", "schedule.decay_steps"),
                                      ("train.checkpoint_interval", "checkpoint.interval"),
                                      ("train.resume_from", "checkpoint.resume_from")])
def test_a_key_that_moved_out_of_train_names_its_new_place(old, new, tmp_path):
    error = error_for(f"{old}=1")
    assert error.key == old and f"has moved to {new}" in str(error)
    section, key = old.split(".")
    written = tmp_path / "old.yaml"
    written.write_text(f"{section}:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=f"{old}: has moved to {new}"):
        load_config(written)


def test_a_config_saved_before_the_sections_reads_with_its_keys_moved():
    """A run saved before train was split resumes, generates and evaluates as it did: its config.yaml reads."""
    saved = ExperimentConfig().to_dict()
    for section in ("optimizer", "schedule", "checkpoint"):
        saved.pop(section)
    saved["train"].update(lr=3e-4, optimizer="muon", schedule="wsd", lr_decay_steps=90, checkpoint_interval=30,
                          keep_checkpoints=5, resume_from="/runs/a")
    config = ExperimentConfig.from_saved(saved)
    assert (config.optimizer.lr, config.optimizer.name, config.schedule.name, config.schedule.decay_steps) == \
        (3e-4, "muon", "wsd", 90)
    assert (config.checkpoint.interval, config.checkpoint.keep, config.checkpoint.resume_from) == (30, 5, "/runs/a")
    assert ExperimentConfig.from_saved(ExperimentConfig().to_dict()) == ExperimentConfig()


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  preset: nano\n  n_layers: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "model.n_layers"


def test_missing_config_file_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_overrides_are_typed_and_reach_into_lists():
    config = load_config(None, ["optimizer.lr=3e-4", "train.max_steps=1e3", "data.sources.0.text_unit=line",
                                "model.preset=tiny", "generate.top_k=null"])
    assert config.optimizer.lr == pytest.approx(3e-4) and isinstance(config.optimizer.lr, float)
    assert config.train.max_steps == 1000 and isinstance(config.train.max_steps, int)
    assert config.data.sources[0].text_unit == "line"
    assert (config.model.n_layer, config.model.n_embd, config.model.block_size) == (6, 384, 256)
    assert config.generate.top_k is None


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optimizer.lr"])


def test_presets_fill_only_unset_fields():
    config = load_config(None, ["model.preset=gpt2", "model.block_size=256", "train.max_steps=5000"])
    assert (config.model.n_layer, config.model.n_head, config.model.n_embd) == (12, 12, 768)
    assert config.model.block_size == 256


def test_source_needs_exactly_one_kind():
    error = error_for("data.sources=[{path: a.txt, corpus: tinyshakespeare}]")
    assert error.key == "data.sources[0]"


def test_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["out_dir=out", "data.dataset_dir=ds"])
    assert config.out_dir == str(tmp_path / "out")
    assert config.run_dir == str(tmp_path / "out" / "quickstart")
    assert config.tracking_uri() == f"sqlite:///{tmp_path}/out/mlflow.db"


def test_resolved_config_round_trips_through_yaml():
    config = load_config(None, ["model.preset=tiny", "optimizer.lr=1e-4"])
    again = ExperimentConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict()))).resolved()
    assert again == config


def test_quickstart_yaml_is_exactly_the_builtin_defaults():
    assert load_config(REPO / "configs" / "quickstart.yaml") == load_config(None)


def test_the_nanogpt_config_is_nanogpts_readme_cpu_recipe():
    """train_shakespeare_char with the README's CPU flags and train.py's defaults, on bytes and the tail split."""
    c = load_config(REPO / "configs" / "nanogpt-shakespeare-char.yaml")
    m, t, o, s = c.model, c.train, c.optimizer, c.schedule
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout, m.bias) == (4, 4, 128, 64, 0.0, False)
    assert (t.batch_size, t.micro_batch_size * max(c.ray.num_workers, 1), t.max_steps) == (12, 12, 2000)
    assert (o.name, o.lr, o.weight_decay, o.beta1, o.beta2, o.grad_clip) == ("adamw", 1e-3, 0.1, 0.9, 0.99, 1.0)
    assert (s.name, s.warmup_steps, s.decay_steps, s.min_lr) == ("cosine", 100, 2000, 1e-4)
    assert (t.eval_interval, t.eval_windows) == (250, 20 * 12)
    assert (c.data.tokenizer, c.data.split, c.data.val_fraction) == ("bytes", "tail", 0.1)


def test_the_gpt2_reproduction_trains_on_gpt2s_tokenizer():
    config = load_config(REPO / "configs" / "gpt2-124m.yaml")
    assert (config.data.tokenizer, config.model.vocab_size) == ("gpt2", 50257)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path, tmp_path):
    from dataclasses import asdict

    from gptray.checkpoint.files import TrainingState, save_checkpoint
    from gptray.model import GPT
    from gptray.train.finetune import load_run_config

    overrides = []
    if read_yaml(path).get("train", {}).get("init_from"):  # a fine-tuning config: give it its base
        base = load_config(None, ["data.tokenizer=gpt2"]).model
        save_checkpoint(tmp_path / "base", GPT(base).state_dict(), None, TrainingState(model=asdict(base)),
                        ExperimentConfig(model=base))
        overrides = [f"train.init_from={tmp_path / 'base'}"]
    load_run_config(path, overrides)


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_expands_into_valid_trials_over_three_seeds(path):
    from gptray.tune.spec import load_sweep

    sweep = load_sweep(path)
    assert len(sweep.spec.seeds) >= 3 and len(sweep.labels()) >= 2
    if sweep.spec.budget_flops is not None:  # steps follow each trial's vocabulary, known once it is tokenized
        return
    budgets = {t.config.train.max_steps * t.config.train.batch_size * t.config.train.effective_seq_len(t.config.model)
               for t in sweep.trials}
    assert len(budgets) == 1  # data-matched: every trial trains the same number of tokens


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptray", *args], capture_output=True, text=True, timeout=120)


def test_cli_bad_config_exits_2_naming_the_key():
    result = run_cli("config", "model.n_embd=100", "model.n_head=3")
    assert result.returncode == 2
    assert "model.n_embd" in result.stderr


def test_cli_config_prints_the_resolved_config():
    result = run_cli("config", "model.preset=gpt2", "train.max_steps=7", "schedule.warmup_steps=2")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["n_embd"] == 768 and printed["train"]["max_steps"] == 7


@pytest.mark.parametrize("command", [[], ["tokenize"], ["pretrain"], ["finetune"], ["generate"], ["quickstart"],
                                     ["config"]])
def test_every_command_has_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0
    assert "usage: gptray" in result.stdout
    if command:
        assert "--config" in result.stdout and "key=value" in result.stdout
    else:
        for name in ("tokenize", "pretrain", "finetune", "generate", "quickstart"):
            assert name in result.stdout


def test_finetune_without_a_base_is_refused_before_any_work(tmp_path):
    result = run_cli("finetune", f"out_dir={tmp_path}", f"data.dataset_dir={tmp_path}/none")
    assert result.returncode == 2 and "train.init_from: fine-tuning needs a base model" in result.stderr


def test_config_command_reads_nothing_from_the_hub_for_a_hub_base(tmp_path):
    """`gptray config` downloads nothing: a hf:NAME base not in the local cache is named, with what would read it."""
    result = run_cli("config", f"out_dir={tmp_path}", "train.init_from=hf:gpt2", "train.recipe=finetune",
                     "model.preset=null")
    assert result.returncode == 2, result.stderr
    assert "train.init_from" in result.stderr and "reads nothing from the Hub" in result.stderr
    assert "gptray finetune` reads its config.json" in result.stderr


def test_a_fine_tuning_config_needs_its_base_reader():
    """The config layer does no I/O: resolving a fine-tuning config without a way to read its base says how."""
    with pytest.raises(ConfigError, match="train.init_from: a fine-tuning config resolves with its base"):
        load_config(None, ["train.init_from=runs/quickstart"])


def test_gpt3_recipe_fills_unset_optimizer_settings():
    config = load_config(None, ["model.preset=gpt2", "train.tokens_per_step=524288", "schedule.warmup_steps=null",
                                "train.max_steps=19073", "train.micro_batch_size=16", "ray.num_workers=8",
                                "optimizer.lr=6e-4"])
    train, optimizer, schedule = config.train, config.optimizer, config.schedule
    assert train.batch_size == 512  # 524,288 tokens / 1024
    assert train.grad_accum_steps(8) == 4
    assert (optimizer.beta1, optimizer.beta2, optimizer.weight_decay, optimizer.grad_clip) == (0.9, 0.95, 0.1, 1.0)
    assert schedule.warmup_steps == 716  # 375M tokens, rounded up to whole steps
    assert schedule.min_lr == pytest.approx(6e-5)


def test_gpt2_recipe_and_explicit_values_win():
    # gpt2 carries its lr and batch but no warmup: the recipe's 2000 steps apply
    config = load_config(None, ["model.preset=gpt2", "train.recipe=gpt2", "train.max_steps=3000",
                                "optimizer.weight_decay=0.05"])
    optimizer, schedule = config.optimizer, config.schedule
    assert (optimizer.beta2, schedule.warmup_steps, schedule.min_lr) == (0.999, 2000, 0.0)
    assert optimizer.weight_decay == 0.05  # set explicitly, so not the recipe's 0.01


def test_recipe_warmup_longer_than_the_run_is_refused():
    error = error_for("model.preset=gpt3-small", "train.max_steps=300")  # 375M tokens at 0.5M tokens/step: 716 steps
    assert error.key == "schedule.warmup_steps" and "set schedule.warmup_steps" in str(error)


def test_a_model_without_a_preset_needs_its_learning_rate():
    error = error_for("model.preset=null", "model.n_layer=2", "model.n_head=2", "model.n_embd=64",
                      "model.block_size=32", "train.batch_size=8")
    assert error.key == "optimizer.lr" and "optimizer.lr=" in str(error)


def test_tokens_per_step_must_divide_into_sequences():
    error = error_for("train.tokens_per_step=1000")  # nano's sequences are 64 tokens
    assert error.key == "train.tokens_per_step"
