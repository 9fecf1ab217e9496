"""Credentials never ride in a URI: every config field that holds one refuses user:password@ and secret
query settings, naming the key and pointing at the environment, without repeating the secret."""

from __future__ import annotations

import pytest

from gptray.config import load_config
from gptray.core.errors import ConfigError, StorageError
from gptray.core.paths import credentials_in
from gptray.core.storage import Storage

SECRET = "wJalrXUtnFEMIK7MDENG"


@pytest.mark.parametrize("key, value", [
    ("out_dir", f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs"),
    ("tracking.uri", f"http://alice:{SECRET}@mlflow.internal:5000"),
    ("tracking.uri", f"https://{SECRET}@mlflow.internal"),
    ("data.dataset_dir", f"s3://bucket/data?access_key=AKIAEXAMPLE&secret_key={SECRET}"),
    ("data.tokenizer", f"gs://bucket/tok/tokenizer.json?access_token={SECRET}"),
    ("train.init_from", f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs/base"),
    ("checkpoint.resume_from", f"s3://bucket/runs/x/checkpoint_00000010?session_token={SECRET}"),
    ("eval.hellaswag", f"https://bob:{SECRET}@files.internal/hellaswag_val.jsonl"),
    ("eval.dataset_dir", f"s3://k:{SECRET}@bucket/data"),
    ("ray.address", f"ray://admin:{SECRET}@head:10001"),
])
def test_a_uri_with_credentials_is_refused_by_the_key_that_holds_it(key, value):
    settings = {"tracking.uri": "http://mlflow.internal:5000"} if key == "out_dir" else {}
    with pytest.raises(ConfigError) as refused:
        load_config(overrides=[f"{key}={value}"], settings=settings)
    assert refused.value.key == key
    assert "environment" in str(refused.value) and SECRET not in str(refused.value)


def test_a_source_path_with_credentials_is_refused():
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.path") as refused:
        load_config(overrides=[f"data.sources=[{{path: 's3://a:{SECRET}@bucket/corpus.jsonl'}}]"])
    assert SECRET not in str(refused.value)
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.data_files\[1\]") as refused:
        load_config(overrides=[f"data.sources=[{{hf: json, data_files: [a.jsonl, 'https://u:{SECRET}@h/b.jsonl']}}]"])
    assert SECRET not in str(refused.value)


def test_uris_without_credentials_pass():
    config = load_config(overrides=["out_dir=s3://bucket/runs?endpoint_override=http://minio:9000",
                                    "tracking.uri=http://mlflow.internal:5000", "data.dataset_dir=gs://bucket/data"])
    assert config.out_dir.startswith("s3://bucket/runs")
    assert credentials_in("sqlite:////abs/mlflow.db") is None and credentials_in("/home/me/runs@2") is None


def test_storage_refuses_a_uri_with_credentials_from_anywhere():
    """The CLI's own arguments (gptray checkpoint …, data inspect) reach storage without a config."""
    with pytest.raises(StorageError) as refused:
        Storage(f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs")
    assert SECRET not in str(refused.value)
