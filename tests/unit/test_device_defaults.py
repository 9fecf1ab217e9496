"""train.precision=auto and train.compile=auto: bf16 and compile on CUDA, fp32 and no compile on a CPU."""

from __future__ import annotations

import pytest
import torch

from gptray.config import load_config
from gptray.core.errors import ConfigError
from gptray.train.device_defaults import auto_compile, auto_precision, for_device

CPU = torch.device("cpu")


def test_auto_is_the_default_and_resolves_to_the_old_cpu_defaults():
    train = load_config(None, ["data.tokenizer=gpt2"]).train
    assert (train.precision, train.compile) == ("auto", "auto")
    resolved = for_device(train, CPU)
    assert (resolved.precision, resolved.compile) == ("fp32", False)
    assert train.precision == "auto"  # the config itself keeps saying auto


def test_explicit_settings_are_kept_and_cuda_compiles():
    train = load_config(None, ["data.tokenizer=gpt2", "train.precision=bf16", "train.compile=true"]).train
    assert (for_device(train, CPU).precision, for_device(train, CPU).compile) == ("bf16", True)
    assert auto_compile(torch.device("cuda")) and not auto_compile(CPU)
    assert auto_precision(CPU) == "fp32"
    if torch.cuda.is_available():  # on a GPU machine: bf16 where the GPU has it
        assert auto_precision(torch.device("cuda")) == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(None, ["data.tokenizer=gpt2", "train.compile=sometimes"])
