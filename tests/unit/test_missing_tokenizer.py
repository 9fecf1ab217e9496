"""A fine-tune never learns its tokenizer from its own data: a missing data.tokenizer there is refused."""

from __future__ import annotations

import dataclasses

import pytest

from gptray.config.schema import load_config
from gptray.core.errors import ConfigError
from gptray.data.bpe_training import learn_missing_tokenizer


def test_a_fine_tune_with_a_missing_tokenizer_is_refused_naming_the_base_and_nothing_is_learned(tmp_path):
    """The trap it closes: `gptray tokenize --config configs/finetune.yaml` without the quickstart's tokenizer
    learned a few hundred tokens from the fine-tuning pairs under the 8K tokenizer's name, and a later
    quickstart reused that file."""
    missing = tmp_path / "tokenizers" / "tinyshakespeare-8k"
    config = load_config(None, [f"data.tokenizer={missing}"])
    # as load_run_config resolves a fine-tune (which needs a real base checkpoint to read its model)
    config.train = dataclasses.replace(config.train, init_from=str(tmp_path / "runs" / "base"))
    with pytest.raises(ConfigError, match=r"data.tokenizer.*fine-tune \(train.init_from=.*base's tokenizer"):
        learn_missing_tokenizer(config)
    assert not missing.exists()
