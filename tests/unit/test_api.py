"""The Python API: gptray.load (run directory, whole and sharded checkpoints, hf:), gptray.generate, light import."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import gptray
from gptray.checkpoint.files import TrainingState, save_checkpoint, write_state
from gptray.checkpoint.sharded import SHARDED, save_sharded
from gptray.config import DataConfig, ExperimentConfig, load_config
from gptray.core.errors import ConfigError
from gptray.generation import generate_text
from gptray.model import GPT
from helpers import REPO

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "data.tokenizer=gpt2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory holding a whole checkpoint (step 2) and, later, a sharded one (step 4) of the same tiny GPT."""
    config = load_config(None, TINY)
    torch.manual_seed(0)
    model = GPT(config.model).eval()
    run = tmp_path_factory.mktemp("run")
    saved = ExperimentConfig(model=config.model, data=DataConfig(tokenizer="gpt2"))
    save_checkpoint(run / "checkpoint_00000002", model.state_dict(), None,
                    TrainingState(step=2, model=asdict(config.model)), saved)
    sharded = run / "checkpoint_00000004"
    sharded.mkdir()
    save_sharded(sharded, {"model": model.state_dict()})
    write_state(sharded, TrainingState(step=4, model=asdict(config.model), format=SHARDED), saved)
    return run, model


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_load_a_run_directory_and_each_checkpoint_format(run_dir):
    run, trained = run_dir
    for source in (run, run / "checkpoint_00000002", str(run / "checkpoint_00000004")):  # latest is the sharded one
        model, tokenizer = gptray.load(source, device="cpu")
        assert same_weights(model, trained), source
        assert not model.training and tokenizer.name == "gpt2"


def test_generate_is_the_clis_generation_and_takes_its_options(run_dir):
    run, _ = run_dir
    model, tokenizer = gptray.load(run, device="cpu")
    settings = load_config(None, [*TINY, "generate.max_new_tokens=8", "generate.temperature=0"]).generate
    expected = generate_text(model, tokenizer, settings, "Hello")
    assert gptray.generate(model, tokenizer, "Hello", max_new_tokens=8, temperature=0) == expected
    assert gptray.generate(model, tokenizer, ["Hello", "Hello"], max_new_tokens=8, temperature=0) == [expected] * 2
    with pytest.raises(ConfigError, match="max_new_token: not a generation option"):
        gptray.generate(model, tokenizer, "Hello", max_new_token=8)
    with pytest.raises(ConfigError, match="generate.temperature"):
        gptray.generate(model, tokenizer, "Hello", temperature=-1)


def test_load_a_hugging_face_gpt2_from_a_local_directory(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=16, vocab_size=96)).eval()
    hf.save_pretrained(tmp_path / "hf")
    model, tokenizer = gptray.load(f"hf:{tmp_path / 'hf'}", device="cpu")
    idx = torch.randint(0, 96, (2, 16))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], hf(idx).logits, atol=1e-4)
    assert tokenizer.name == "gpt2"


def test_importing_gptray_and_its_api_loads_neither_ray_nor_mlflow():
    code = ("import sys, gptray\n"
            "light = not any(m in sys.modules for m in ('torch', 'ray', 'mlflow'))\n"
            "gptray.load, gptray.generate\n"
            "print(light, 'torch' in sys.modules, [m for m in ('ray', 'mlflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["True", "True", "[]"], out.stdout + out.stderr


def test_the_docs_python_example_runs(run_dir, capsys):
    run, _ = run_dir
    guide = (REPO / "docs" / "generation.md").read_text()
    section = guide.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'gptray.load("runs/quickstart"' in code
    exec(compile(code.replace("runs/quickstart", str(run)), "docs/generation.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("ROMEO:") and printed.rstrip().endswith("gpt2 2")
