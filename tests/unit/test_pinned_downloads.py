"""Files gptray fetches by name are checked against digests it ships: the tinyshakespeare corpus (sha256)
and HellaSwag's validation file (its git blob id at a pinned commit), downloaded or already on disk."""

from __future__ import annotations

import subprocess

import pytest

from gptray.config.schema import HELLASWAG_VAL_URL, EvalConfig
from gptray.core.errors import DataError
from gptray.data.corpora import CORPORA_PATH_ENV, REGISTRY, corpus_file
from gptray.eval.hellaswag import KNOWN_BLOBS, cache_dir, git_blob_id, locate


def test_the_shipped_corpus_copy_matches_its_sha256_and_a_changed_copy_is_refused(tmp_path, monkeypatch):
    assert corpus_file("tinyshakespeare").read_bytes()[:10] == b"First Citi"  # the shared copy, checked
    (tmp_path / "tinyshakespeare.txt").write_text("First Citizen:\nSomething else entirely.\n")
    monkeypatch.setenv(CORPORA_PATH_ENV, str(tmp_path))
    with pytest.raises(DataError, match=f"is not corpus 'tinyshakespeare'.*{REGISTRY['tinyshakespeare'].sha256}"):
        corpus_file("tinyshakespeare")


def test_the_hellaswag_default_is_pinned_to_a_commit_and_checked(tmp_path, monkeypatch):
    assert EvalConfig().hellaswag == HELLASWAG_VAL_URL and "/master/" not in HELLASWAG_VAL_URL
    assert HELLASWAG_VAL_URL in KNOWN_BLOBS
    sample = tmp_path / "sample.jsonl"
    sample.write_text('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 0}\n')
    git = subprocess.run(["git", "hash-object", str(sample)], capture_output=True, text=True, check=True)
    assert git_blob_id(sample) == git.stdout.strip()
    # a cached copy that is not the file the URL names is refused, not evaluated on
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = cache_dir() / "hellaswag" / "hellaswag_val.jsonl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(sample.read_bytes())
    with pytest.raises(DataError, match="is not the file that URL names.*Delete it"):
        locate(HELLASWAG_VAL_URL)
    assert locate(str(sample)) == sample  # a path of the user's own is theirs to vouch for
