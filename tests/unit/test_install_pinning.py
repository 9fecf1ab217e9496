"""The users' install is pinned: hashed locks of every runtime dependency (`make lock`), which the image and the
cluster files install through (`scripts/install.sh --locked`), and images pinned to digests by
scripts/pin_images.sh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers import REPO

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

LOCK = REPO / "requirements" / "lock-py311-linux.txt"
CPU_LOCK = REPO / "requirements" / "lock-py311-linux-cpu.txt"
# The platform the locks are for (the image's): markers of requirements are evaluated for it.
PLATFORM = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython"}
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s*\\\n\s+--hash=\S+)*)", re.M)
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def pins(lock) -> dict[str, tuple[str, list[str]]]:
    """name → (version, sha256 hashes) of every entry of a lock."""
    text = lock.read_text()
    entries = {canonicalize_name(m[1]): (m[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", m[3]))
               for m in ENTRY.finditer(text)}
    requirement_lines = [line for line in text.splitlines() if line and not line[0].isspace() and line[0] != "#"]
    assert len(entries) == len(requirement_lines), "every requirement of a lock is name==version"
    return entries


def runtime_requirements() -> list[Requirement]:
    return [Requirement(d) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]]


@pytest.mark.parametrize("lock", [LOCK, CPU_LOCK], ids=["cuda", "cpu"])
def test_the_lock_pins_every_runtime_dependency_with_hashes(lock):
    """Every requirement of pyproject.toml, and every requirement of theirs that pip resolves for Linux x86_64 and
    Python 3.11 (read from the installed packages' metadata where they are installed here at the locked
    version), is in the lock at a version its specifier allows, each with at least one sha256."""
    locked = pins(lock)
    assert all(hashes for _, hashes in locked.values()), [n for n, (_, h) in locked.items() if not h]
    queue, seen, read = runtime_requirements(), set(), 0
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is needed but not in {lock.name}"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), f"{lock.name}: {name}=={version} " \
                                                                          f"does not satisfy {requirement}"
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        try:
            installed = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(installed.version) != Version(version):
            continue  # its requirements at the locked version are not on this machine to read
        read += 1
        for line in installed.requires or []:
            needed = Requirement(line)
            extras = {""} | set(requirement.extras)
            if needed.marker is None or any(needed.marker.evaluate({**PLATFORM, "extra": e}) for e in extras):
                queue.append(needed)
    assert read > len(runtime_requirements())  # the walk went past the direct dependencies


def test_the_cpu_lock_is_the_cuda_lock_with_torchs_cpu_build():
    cuda, cpu = pins(LOCK), pins(CPU_LOCK)
    cuda_only = {n for n in cuda if n.startswith(("nvidia-", "cuda-")) or n == "triton"}
    assert cuda_only and not cuda_only & set(cpu)
    assert {n: v for n, (v, _) in cpu.items() if n != "torch"} == \
           {n: v for n, (v, _) in cuda.items() if n != "torch" and n not in cuda_only}
    assert cpu["torch"][0] == cuda["torch"][0] + "+cpu"
    # the torch the locks pin is the release scripts/install.sh installs, and requirements/lock.in asks for
    default = re.search(r"^torch_version=\$\{TORCH_VERSION:-(\S+)\}$", (REPO / "scripts" / "install.sh").read_text(),
                        re.M)
    assert default[1] == cuda["torch"][0]
    assert f"torch=={cuda['torch'][0]} " in (REPO / "requirements" / "lock.in").read_text()
    assert "setuptools" in cuda  # gptray's build backend: its own install fetches nothing unverified


def test_the_image_and_the_cluster_files_install_through_the_lock():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY .*requirements \./requirements$", dockerfile, re.M)
    assert re.search(r"^RUN TORCH_VARIANT=cuda scripts/install\.sh --locked python$", dockerfile, re.M)
    for name in ("aws.yaml", "gcp.yaml"):
        commands = yaml.safe_load((REPO / "cluster" / name).read_text())["setup_commands"]
        assert commands == ["TORCH_VARIANT=cuda bash ~/gptray/scripts/install.sh --locked python"], name
    for name in ("raycluster.yaml", "rayjob.yaml"):  # KubeRay runs the image built from the Dockerfile
        images = re.findall(r"^\s*image:\s*(\S+)", (REPO / "cluster" / "kuberay" / name).read_text(), re.M)
        assert images and all(re.fullmatch(r"(\S+/)?gptray:[^@\s]+(@sha256:[0-9a-f]{64})?", i) for i in images)
    install = (REPO / "scripts" / "install.sh").read_text()
    assert 'pip --require-hashes -r "$lock"' in install and "pip --no-deps --no-build-isolation -e ." in install
    assert 'scripts/install.sh --locked "$python"' in (REPO / "scripts" / "check_user_install.sh").read_text()


def test_the_locked_install_refuses_extras_it_does_not_hold(tmp_path):
    refused = subprocess.run(["bash", "scripts/install.sh", "--locked", sys.executable, "dev"], cwd=REPO,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "holds no extras ([dev])" in refused.stderr


def test_shipped_images_are_tags_or_digests_and_pin_images_pins_them(tmp_path):
    def images(root):
        found = re.findall(r"^FROM (\S+)", (root / "Dockerfile").read_text(), re.M)
        for name in ("aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
            found += re.findall(r"^\s*image:\s*(\S+)", (root / "cluster" / name).read_text(), re.M)
        return found

    for image in images(REPO):  # a tag, or a tag pinned to a well-formed digest
        assert re.fullmatch(r"[^@\s]+:[^@\s]+(@sha256:[0-9a-f]{64})?", image), image

    ours = len(images(REPO)) - 3  # the KubeRay manifests' (gptray's image); the rest are the Ray base's
    root = tmp_path / "checkout"
    (root / "cluster" / "kuberay").mkdir(parents=True)
    shutil.copy(REPO / "Dockerfile", root)
    for name in ("aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        shutil.copy(REPO / "cluster" / name, root / "cluster" / name)
    registry = tmp_path / "bin"
    registry.mkdir()
    crane = registry / "crane"  # a registry that answers `crane digest REF`: the base and gptray's image differ

    def answer(base_digest, gptray_digest):
        crane.write_text(f'#!/bin/sh\ncase "$2" in *gptray*) echo {gptray_digest};; *) echo {base_digest};; esac\n')
        crane.chmod(0o755)
        env = {**os.environ, "PATH": f"{registry}:{os.environ['PATH']}", "PIN_ROOT": str(root)}
        return subprocess.run(["bash", str(REPO / "scripts" / "pin_images.sh"), "reg.example/team/gptray:v1"],
                              env=env, capture_output=True, text=True)

    first, second = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert answer(first, second).returncode == 0
    base = re.search(r"^FROM (\S+)", (REPO / "Dockerfile").read_text(), re.M)[1].split("@")[0]
    assert images(root) == [f"{base}@{first}"] * 3 + [f"reg.example/team/gptray:v1@{second}"] * ours
    assert answer(second, first).returncode == 0  # pinned again: the digest replaced, not appended
    assert images(root) == [f"{base}@{second}"] * 3 + [f"reg.example/team/gptray:v1@{first}"] * ours
    before = {p: p.read_text() for p in root.rglob("*") if p.is_file()}
    refused = answer("not-a-digest", second)
    assert refused.returncode != 0 and "gave no digest" in refused.stderr
    assert before == {p: p.read_text() for p in root.rglob("*") if p.is_file()}
    for path in root.rglob("*.yaml"):  # still valid YAML, comments and all
        yaml.safe_load(path.read_text())
    assert all(DIGEST.search(i) for i in images(root))
    # what is not an image reference (comments, commands) is left as it was
    assert [line for line in (root / "cluster" / "kuberay" / "raycluster.yaml").read_text().splitlines()
            if line.lstrip().startswith("#")] == [line for line in (REPO / "cluster" / "kuberay" /
                                                                    "raycluster.yaml").read_text().splitlines()
                                                  if line.lstrip().startswith("#")]
