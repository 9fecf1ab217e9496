"""Bits per byte's ingredients: the UTF-8 bytes each token stands for, the padded table, the ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptray.data.tiktoken_tokenizer import TiktokenTokenizer
from gptray.data.token_bytes import bits_per_byte, byte_table, dataset_mismatch

TEXTS = ["Hello, world!", "café crème é", "日本語のテキスト", "emoji 🙂🎉 and a flag 🇫🇷", "  tabs\tand\nnewlines\r\n",
         "mixed: naïve 日本 🙂 <|endoftext|> as plain text"]


@pytest.fixture(scope="module")
def gpt2():
    return TiktokenTokenizer("gpt2")


def test_gpt2_token_bytes_add_up_to_the_texts_utf8_bytes(gpt2):
    lengths = gpt2.token_byte_lengths()
    assert lengths.dtype == np.int32 and lengths.shape == (gpt2.vocab_size,)
    assert lengths[gpt2.eot_token] == 0  # <|endoftext|> is no text
    assert (np.delete(lengths, gpt2.eot_token) > 0).all()  # every other gpt2 id is at least one byte
    for text in TEXTS:
        ids = gpt2.encode(text)
        assert int(lengths[ids].sum()) == len(text.encode("utf-8")), text
    # documents end with <|endoftext|>, which adds no bytes
    values, _ = gpt2.encode_concatenated(TEXTS)
    assert (values == gpt2.eot_token).sum() == len(TEXTS)
    assert int(lengths[values.astype(np.int64)].sum()) == sum(len(t.encode()) for t in TEXTS)
    assert gpt2.token_byte_lengths() is lengths  # computed once per tokenizer


def test_a_tokenizer_rebuilt_from_a_pickle_gives_the_same_lengths(gpt2):
    import pickle

    again = pickle.loads(pickle.dumps(gpt2))
    np.testing.assert_array_equal(again.token_byte_lengths(), gpt2.token_byte_lengths())


def test_the_table_is_padded_with_zeros_to_a_larger_model_vocabulary(gpt2):
    table = byte_table(gpt2, 50304)
    assert table.dtype == np.int64 and len(table) == 50304
    np.testing.assert_array_equal(table[: gpt2.vocab_size], gpt2.token_byte_lengths())
    assert not table[gpt2.vocab_size :].any()
    assert len(byte_table(gpt2)) == gpt2.vocab_size


def test_bits_per_byte_and_the_dataset_check(gpt2):
    assert bits_per_byte(math.log(2) * 30, 10) == pytest.approx(3.0)
    assert math.isnan(bits_per_byte(1.0, 0))
    assert dataset_mismatch(gpt2, gpt2.describe()) is None
    assert "r50k_base" in dataset_mismatch(gpt2, {"name": "r50k_base", "vocab_size": 50257})
    # where the manifest records a digest, the content decides, whatever the name
    assert dataset_mismatch(gpt2, {"name": "elsewhere/gpt2.json", "vocab_size": 50257, "digest": gpt2.digest}) is None
    assert dataset_mismatch(gpt2, {"name": "gpt2", "vocab_size": 50257, "digest": "0" * 64}) is not None
