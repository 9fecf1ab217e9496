"""A Hugging Face source says which commit it was read at: the Hub's resolution of its pin, or what a local copy
of the repository records; a pin a local copy does not match is refused; the manifest and data list show it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub._local_folder import write_download_metadata

from gptray.config.schema import SourceConfig
from gptray.core.errors import ConfigError, DataError
from gptray.data.corpora import CORPORA_PATH_ENV, REGISTRY
from gptray.data.hub_revision import UNKNOWN, local_copy_commit, source_commit
from gptray.data.manifest import Manifest
from gptray.data.sources import resolve_sources
from gptray.data.tokenize_job import _source_infos

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
FILES = ["plain_text/train-00000-of-00002.parquet", "plain_text/train-00001-of-00002.parquet"]


def downloaded_copy(root, commits=(COMMIT, COMMIT)):
    """A repository laid out as `huggingface-cli download --local-dir` leaves it: the files, and huggingface_hub's
    own metadata beside them (written by its writer) naming the commit each file came from."""
    for name, commit in zip(FILES, commits):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": [f"{name} row {i}" for i in range(3)]}), root / name)
        if commit:
            write_download_metadata(root, name, commit, "e" * 64)
    return root


def test_a_local_copy_records_the_commit_it_was_downloaded_at_and_the_manifest_keeps_it(tmp_path):
    repo = downloaded_copy(tmp_path / "owner" / "name")
    [source] = resolve_sources([SourceConfig(hf=str(repo), hf_config="plain_text")], 50257)
    assert source.kind == "files" and len(source.files) == 2
    assert source.revision == COMMIT and source.identity["commit"] == COMMIT  # a rerun at another commit differs
    [info] = _source_infos([source], [])
    assert info.revision == COMMIT

    manifest = Manifest(tokenizer={"kind": "bytes"}, split={}, sources=[info], splits={})
    manifest.fingerprint = manifest.compute_fingerprint()
    manifest.save(tmp_path / "dataset")
    assert Manifest.load(tmp_path / "dataset").sources[0].revision == COMMIT


def test_a_copy_without_a_record_is_no_commit_and_a_copy_of_several_commits_is_refused(tmp_path):
    bare = downloaded_copy(tmp_path / "bare", commits=(None, None))
    [source] = resolve_sources([SourceConfig(hf=str(bare), hf_config="plain_text")], 50257)
    assert source.revision is None and "commit" not in source.identity  # as before commits were recorded
    mixed = downloaded_copy(tmp_path / "mixed", commits=(COMMIT, OTHER))
    with pytest.raises(DataError, match="mixes files of 2 commits"):
        local_copy_commit(mixed)


def test_a_git_clone_says_its_commit(tmp_path):
    git = tmp_path / "clone" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{OTHER} refs/heads/other\n{COMMIT} refs/heads/main\n")
    assert local_copy_commit(tmp_path / "clone") == COMMIT
    (git / "refs" / "heads" / "main").write_text(OTHER + "\n")  # a loose ref is newer than the packed one
    assert local_copy_commit(tmp_path / "clone") == OTHER


def test_a_commit_pin_must_match_the_local_copy(tmp_path):
    repo = downloaded_copy(tmp_path / "owner" / "name")
    [source] = resolve_sources([SourceConfig(hf=str(repo), hf_config="plain_text", hf_revision=COMMIT)], 50257)
    assert source.revision == COMMIT
    with pytest.raises(DataError, match=f"pins commit {OTHER}, but the local copy .* holds {COMMIT}"):
        resolve_sources([SourceConfig(hf=str(repo), hf_config="plain_text", hf_revision=OTHER)], 50257)
    bare = downloaded_copy(tmp_path / "bare", commits=(None, None))
    with pytest.raises(DataError, match="holds no record of its commit"):
        source_commit(str(bare), COMMIT, "data.sources[0]")


def test_a_hub_source_reads_its_pinned_commit_and_offline_an_unpinned_one_is_unknown(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert source_commit("owner/name", COMMIT, "data.sources[0]") == COMMIT  # loaded at exactly that commit
    assert source_commit("owner/name", "main", "data.sources[0]") == UNKNOWN
    assert source_commit("json", None, "data.sources[0]") is None  # a builder over local files: no repository


def test_the_hub_resolves_a_branch_to_its_commit(monkeypatch):
    """Through huggingface_hub's own client, against a stand-in Hub on loopback (its dataset_info API)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from huggingface_hub import constants

    branches = {"/api/datasets/owner/name": COMMIT, "/api/datasets/owner/name/revision/v2": OTHER}
    asked = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            asked.append(self.path)
            sha = branches.get(self.path.split("?")[0])
            body = json.dumps({"id": "owner/name", "sha": sha} if sha else {"error": "Revision Not Found"}).encode()
            self.send_response(200 if sha else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert source_commit("owner/name", None, "data.sources[0]") == COMMIT  # the default branch, now
        assert source_commit("owner/name", "v2", "data.sources[0]") == OTHER
        assert source_commit("owner/name", "gone", "data.sources[0]") == UNKNOWN  # loading reports the error
        assert source_commit("owner/name", COMMIT, "data.sources[0]") == COMMIT  # a commit pin: not asked
        assert len([path for path in asked if path.startswith("/api/datasets/")]) == 3
    finally:
        server.shutdown()


def test_a_named_corpus_copy_is_checked_against_a_pin_and_says_unknown_without_a_record(tmp_path, monkeypatch):
    monkeypatch.setenv(CORPORA_PATH_ENV, str(tmp_path))
    corpus = REGISTRY["openwebtext-10k"]  # a Hub corpus with plain_text/ Parquet files in its converted layout
    downloaded_copy(tmp_path / corpus.hf)
    [source] = resolve_sources([SourceConfig(corpus="openwebtext-10k")], 50257)
    assert source.revision == COMMIT
    with pytest.raises(DataError, match=f"pins commit {OTHER}"):
        resolve_sources([SourceConfig(corpus="openwebtext-10k", hf_revision=OTHER)], 50257)
    for record in (tmp_path / corpus.hf / ".cache").rglob("*.metadata"):
        record.unlink()
    [source] = resolve_sources([SourceConfig(corpus="openwebtext-10k")], 50257)
    assert source.revision == UNKNOWN


def test_hf_revision_is_validated_where_it_cannot_apply(tmp_path):
    with pytest.raises(ConfigError, match=r"data.sources\[0\].hf_revision.*hf sources and named corpora"):
        SourceConfig(path=str(tmp_path), hf_revision=COMMIT).validate(0)
    with pytest.raises(ConfigError, match="must be a commit sha, branch or tag"):
        SourceConfig(hf="owner/name", hf_revision="main branch").validate(0)
    SourceConfig(corpus="wikitext-2", hf_revision=COMMIT).validate(0)
    with pytest.raises(ConfigError, match="'tinyshakespeare' is a file, pinned by its sha256"):
        resolve_sources([SourceConfig(corpus="tinyshakespeare", hf_revision=COMMIT)], 50257)


def test_data_list_says_which_corpora_are_pinned(capsys):
    from gptray.cli.data_commands import cmd_list

    assert REGISTRY["tinyshakespeare"].pin.startswith("sha256 86c4e6aa9db7")
    assert REGISTRY["wikitext-2"].pin == "no: main"
    assert REGISTRY["openwebtext-10k"].pin == "no: refs/convert/parquet"
    cmd_list(None)
    header, first = capsys.readouterr().out.splitlines()[:2]
    assert "pinned" in header.split() and "sha256 86c4e6aa9db7" in first
