"""Which commit of a Hugging Face dataset repository a source reads: the one the Hub resolves, or a local copy's.

A Hub dataset is read at the commit its branch (or the source's `hf_revision`) points to when the job plans,
and loaded at that commit, so the manifest and the tokenize run can say exactly what the dataset was made
from. A local copy of a repository says which commit it holds in the metadata `huggingface-cli download
--local-dir` writes beside the files (`.cache/huggingface/download/<file>.metadata`: the commit on its first
line), or in its `.git` when it is a clone.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from gptray.core.errors import DataError

log = logging.getLogger(__name__)

COMMIT = re.compile(r"[0-9a-f]{40}")
UNKNOWN = "unknown"  # a Hub source whose commit neither the Hub (offline) nor its local copy can tell
DOWNLOAD_METADATA = Path(".cache") / "huggingface" / "download"


def is_commit(revision: str | None) -> bool:
    """Whether a revision names one commit (a full sha), not a branch or tag that can move."""
    return bool(revision) and COMMIT.fullmatch(revision) is not None


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def source_commit(path: str, revision: str | None, key: str) -> str | None:
    """The commit a Hugging Face source reads: a sha, UNKNOWN (the Hub unreachable), or None (no repository: the
    `json` builder on local files, a local directory that records no commit).

    `path` is a Hub dataset id or a local copy of a repository; `revision` the pin (a commit, branch or tag; None:
    the default branch). A local copy that a commit pin does not match is refused: a pin must never be ignored.
    """
    if os.path.isdir(path):
        commit = local_copy_commit(Path(path))
        if is_commit(revision) and commit != revision:
            raise DataError(f"{key}.hf_revision pins commit {revision}, but the local copy {path} holds "
                            f"{commit or 'no record of its commit'}: download that revision there "
                            f"(huggingface-cli download --repo-type dataset --revision {revision} --local-dir …) "
                            "or remove the copy to read the Hub")
        if revision and not is_commit(revision):
            log.warning("%s: hf_revision %r is a branch or tag, which a local copy cannot be checked against; "
                        "reading the copy at %s (%s)", key, revision, path, f"commit {commit}" if commit else
                        "its commit unrecorded")
        return commit
    if "/" not in path:
        return None
    if is_commit(revision):
        return revision
    if hub_offline():
        return UNKNOWN
    return hub_commit(path, revision)


def hub_commit(repo: str, revision: str | None) -> str:
    """The commit the Hub resolves `revision` of dataset `repo` to; UNKNOWN when the Hub cannot be asked."""
    try:
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(repo, revision=revision).sha
    except Exception as exc:  # unreachable, unauthorized, no such revision: loading reports it, with its context
        log.info("could not resolve %s@%s on the Hub (%s: %s)", repo, revision or "main", type(exc).__name__, exc)
        return UNKNOWN
    return sha if is_commit(sha) else UNKNOWN


def local_copy_commit(directory: Path) -> str | None:
    """The commit a local copy of a repository holds, from huggingface_hub's download metadata or git; None when
    it records none. A copy whose files were downloaded at different commits is refused (it is no one revision)."""
    metadata = directory / DOWNLOAD_METADATA
    commits = set()
    if metadata.is_dir():
        for record in sorted(metadata.rglob("*.metadata")):
            first = record.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip()
            if is_commit(first):
                commits.add(first)
    if len(commits) > 1:
        raise DataError(f"the local copy {directory} mixes files of {len(commits)} commits "
                        f"({', '.join(sorted(commits))}): download one revision of the whole repository again")
    return commits.pop() if commits else _git_head(directory / ".git")


def _git_head(git: Path) -> str | None:
    """The commit a clone has checked out: a detached HEAD, or the branch it names (loose or packed ref)."""
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if is_commit(head):
        return head
    if not head.startswith("ref: "):
        return None
    ref = head[len("ref: "):]
    try:
        loose = (git / ref).read_text(encoding="utf-8").strip()
        return loose if is_commit(loose) else None
    except OSError:
        pass
    try:
        for line in (git / "packed-refs").read_text(encoding="utf-8").splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and is_commit(sha):
                return sha
    except OSError:
        pass
    return None
