"""Hugging Face interop, checked against `transformers` itself: a random GPT2LMHeadModel built
locally (no download) imports with the same logits, and exports load back with the same logits."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from gptray.cli.main import main
from gptray.config import ModelConfig
from gptray.core.errors import CheckpointError, ConfigError
from gptray.generation import load_model
from gptray.interop.huggingface import export_checkpoint, export_hf, import_hf_checkpoint, load_hf_gpt2
from gptray.model import GPT

VOCAB, CONTEXT = 96, 24


def make_hf_model(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """A random GPT-2 with every parameter drawn at random (biases and norms too)."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=CONTEXT, vocab_size=VOCAB, **overrides)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
    return model


def tokens(batch: int = 2, length: int = CONTEXT) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def hf_logits(model: GPT2LMHeadModel, idx: torch.Tensor) -> torch.Tensor:
    return model(idx).logits


@torch.no_grad()
def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    return model.eval()(idx)[0]


def assert_same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_import_safetensors_directory(tmp_path):
    hf = make_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    imported = load_hf_gpt2(tmp_path / "hf")
    assert imported.weights == ["model.safetensors"]
    config = imported.model.config
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size, config.vocab_size) == (2, 4, 32, CONTEXT,
                                                                                                   VOCAB)
    assert config.tie_embeddings and config.dropout == 0.1
    assert imported.model.transformer.wte.weight is imported.model.lm_head.weight
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad
               for p in imported.model.parameters())
    assert_same_logits(our_logits(imported.model, tokens()), hf_logits(hf, tokens()))


def test_import_pytorch_bin_untied_with_custom_inner_width(tmp_path):
    hf = make_hf_model(tie_word_embeddings=False, n_inner=48, layer_norm_epsilon=1e-6)
    directory = tmp_path / "bin"
    directory.mkdir()
    hf.config.to_json_file(directory / "config.json")
    torch.save(hf.state_dict(), directory / "pytorch_model.bin")  # the format of save_pretrained before safetensors
    assert_same_logits(hf_logits(GPT2LMHeadModel.from_pretrained(directory).eval(), tokens()), hf_logits(hf, tokens()))
    imported = load_hf_gpt2(directory)
    assert imported.weights == ["pytorch_model.bin"]
    config = imported.model.config
    assert (config.tie_embeddings, config.mlp_hidden, config.norm_eps) == (False, 48, 1e-6)
    assert imported.model.transformer.wte.weight is not imported.model.lm_head.weight
    assert_same_logits(our_logits(imported.model, tokens()), hf_logits(hf, tokens()))


def test_import_sharded_safetensors(tmp_path):
    hf = make_hf_model()
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    imported = load_hf_gpt2(tmp_path / "sharded")
    assert len(imported.weights) > 1
    assert_same_logits(our_logits(imported.model, tokens()), hf_logits(hf, tokens()))


def write_hub_layout(hf: GPT2LMHeadModel, directory: Path) -> None:
    """The layout of the original hub checkpoints (openai-community/gpt2): keys without the
    `transformer.` prefix, no lm_head, and the causal-mask buffers older transformers saved."""
    directory.mkdir(parents=True)
    hf.config.to_json_file(directory / "config.json")
    state = {k.removeprefix("transformer."): v.clone() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    for layer in range(hf.config.n_layer):
        state[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(CONTEXT, CONTEXT)).view(1, 1, CONTEXT, CONTEXT)
        state[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_import_the_original_hub_layout(tmp_path):
    hf = make_hf_model()
    write_hub_layout(hf, tmp_path / "hub")
    assert_same_logits(hf_logits(GPT2LMHeadModel.from_pretrained(tmp_path / "hub").eval(), tokens()),
                       hf_logits(hf, tokens()))
    imported = load_hf_gpt2(tmp_path / "hub")
    assert_same_logits(our_logits(imported.model, tokens()), hf_logits(hf, tokens()))


def test_import_by_hub_name_from_the_local_hub_cache(tmp_path):
    # A hub name resolves through huggingface_hub; offline (as in these tests) it finds the
    # snapshot in the hub cache, laid out as huggingface_hub lays it out.
    hf = make_hf_model()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-gpt2"
    hf.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    imported = load_hf_gpt2("someone/tiny-gpt2", cache_dir=str(tmp_path / "cache"))
    assert imported.directory == repo / "snapshots" / commit
    assert_same_logits(our_logits(imported.model, tokens()), hf_logits(hf, tokens()))


def test_a_hub_name_that_cannot_be_fetched_is_a_checkpoint_error(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: no test may reach the network
    with pytest.raises(CheckpointError, match="not a local directory, and getting it from the Hugging Face hub failed"):
        load_hf_gpt2("someone/not-cached-anywhere", cache_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="no such directory"):
        load_hf_gpt2(str(tmp_path / "missing" / "dir"))


@pytest.mark.parametrize("overrides, message", [
    (dict(activation_function="relu"), "activation_function 'relu'"),
    (dict(activation_function="gelu"), "activation_function 'gelu'"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(scale_attn_weights=False), "scale_attn_weights"),
])
def test_import_refuses_gpt2s_computed_differently(tmp_path, overrides, message):
    make_hf_model(**overrides).save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=message):
        load_hf_gpt2(tmp_path / "hf")


def test_import_reports_broken_directories(tmp_path):
    hf = make_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())

    (tmp_path / "no_weights").mkdir()
    shutil.copy(tmp_path / "hf" / "config.json", tmp_path / "no_weights")
    with pytest.raises(CheckpointError, match="holds no GPT-2 weights"):
        load_hf_gpt2(tmp_path / "no_weights")

    shutil.copytree(tmp_path / "hf", tmp_path / "wrong_shape")
    (tmp_path / "wrong_shape" / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(CheckpointError, match="has shape"):
        load_hf_gpt2(tmp_path / "wrong_shape")

    shutil.copytree(tmp_path / "hf", tmp_path / "llama")
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="only GPT-2"):
        load_hf_gpt2(tmp_path / "llama")

    shutil.copytree(tmp_path / "hf", tmp_path / "no_config")
    (tmp_path / "no_config" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf_gpt2(tmp_path / "no_config")


def gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**{"preset": None, "n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": CONTEXT,
                               "vocab_size": VOCAB, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.2)
    return model.eval()


@pytest.mark.parametrize("overrides", [dict(), dict(tie_embeddings=False), dict(bias=False),
                                       dict(mlp_hidden=40, norm_eps=1e-6, dropout=0.1)],
                         ids=["gpt2", "untied", "no_bias", "inner_width"])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, overrides):
    model = gpt(**overrides)
    files = export_hf(model, tmp_path / "export").files
    assert sorted(p.name for p in files) == ["config.json", "model.safetensors"]
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    assert_same_logits(hf_logits(hf, tokens()), our_logits(model, tokens()))
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings


def test_round_trip_hf_to_gptray_to_hf(tmp_path):
    hf = make_hf_model(seed=4)
    hf.save_pretrained(tmp_path / "hf")
    _, checkpoint = import_hf_checkpoint(tmp_path / "hf", tmp_path / "checkpoint")
    model, _ = load_model(checkpoint)
    assert_same_logits(our_logits(model, tokens()), hf_logits(hf, tokens()))
    export_checkpoint(checkpoint, tmp_path / "back")
    assert_same_logits(hf_logits(GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval(), tokens()),
                       hf_logits(hf, tokens()))
    provenance = json.loads((checkpoint / "import.json").read_text())
    assert provenance["weights"] == ["model.safetensors"]


@pytest.mark.parametrize("overrides, key", [
    (dict(norm="rmsnorm"), "model.norm"),
    (dict(mlp="swiglu"), "model.mlp"),
    (dict(position="rope"), "model.position"),
    (dict(position="none"), "model.position"),
    (dict(attention="sliding_window", attention_window=4), "model.attention"),
    (dict(attention="alternating", attention_window=4), "model.attention"),
    (dict(document_mask=True, eot_token=5), "model.document_mask"),
    (dict(head_dim=16), "model.head_dim"),
])
def test_export_refuses_variants_gpt2_cannot_express(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match="cannot be exported as a Hugging Face GPT-2") as info:
        export_hf(gpt(**overrides), tmp_path / "export")
    assert info.value.key == key
    assert not (tmp_path / "export").exists()  # refused before writing anything


def test_export_refusal_names_every_field():
    with pytest.raises(ConfigError) as info:
        export_hf(gpt(norm="rmsnorm", mlp="swiglu", position="rope"), "unused")
    assert all(k in str(info.value) for k in ("model.norm=rmsnorm", "model.mlp=swiglu", "model.position=rope"))


def test_cli_import_generate_export(tmp_path, capsys):
    hf = make_hf_model()
    hf.save_pretrained(tmp_path / "hf")
    checkpoint, export = tmp_path / "ckpt", tmp_path / "export"
    assert main(["model", "import", "--hf", str(tmp_path / "hf"), "--out", str(checkpoint)]) == 0
    assert "checkpoint " + str(checkpoint) in capsys.readouterr().out
    assert main(["model", "import", "--hf", str(tmp_path / "hf"), "--out", str(checkpoint)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["model", "import", "--hf", str(tmp_path / "hf"), "--out", str(checkpoint), "--overwrite"]) == 0
    capsys.readouterr()
    # "A" is token 32: inside this small vocabulary, as everything it generates.
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "A", "generate.max_new_tokens=4",
                 f"out_dir={tmp_path}"]) == 0
    assert capsys.readouterr().out.startswith("A")
    assert main(["model", "export", "--checkpoint", str(checkpoint), "--out", str(export)]) == 0
    out = capsys.readouterr().out
    assert "from_pretrained" in out and "vocabulary (96) is smaller than GPT-2's" in out
    assert_same_logits(hf_logits(GPT2LMHeadModel.from_pretrained(export).eval(), tokens()), hf_logits(hf, tokens()))
    assert main(["model", "import", "--hf", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 4
    assert "no such directory" in capsys.readouterr().err


def test_cli_export_refusal_exits_2(tmp_path, capsys):
    from gptray.checkpoint.files import TrainingState, save_checkpoint
    from gptray.config import ExperimentConfig

    model = gpt(position="rope")
    save_checkpoint(tmp_path / "ckpt", model, None, TrainingState(model=model.config.__dict__.copy()),
                    ExperimentConfig(model=model.config))
    assert main(["model", "export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "model.position=rope" in capsys.readouterr().err


def test_export_writes_the_gpt2_tokenizer_transformers_loads(tmp_path):
    import tiktoken
    from transformers import AutoTokenizer

    model = gpt(vocab_size=50257)
    result = export_hf(model, tmp_path / "export", tokenizer="gpt2")
    assert {p.name for p in result.files} >= {"vocab.json", "merges.txt", "tokenizer_config.json"}
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    text = "First Citizen:\nBefore we proceed any further, hear me speak. ünïcode  spaces\t42"
    assert hf_tokenizer(text)["input_ids"] == tiktoken.get_encoding("gpt2").encode(text)
    assert hf_tokenizer.eos_token_id == 50256
    assert "tokenizer files not written" in export_hf(gpt(), tmp_path / "small", tokenizer="gpt2").notes[0]
    assert "cl100k_base" in export_hf(model, tmp_path / "other", tokenizer="cl100k_base").notes[0]
