#!/usr/bin/env bash
# Compile the hashed locks of the users' install (`make lock`): every runtime dependency of gptray, direct and
# transitive, pinned `==` with the sha256 of each of its files on PyPI, for Linux x86_64 and Python 3.11 (the
# image's platform). `scripts/install.sh --locked` installs from them with `pip install --require-hashes`.
#
#   scripts/lock.sh [UV PIP COMPILE ARGS...]    e.g. scripts/lock.sh --upgrade   (make lock LOCK_ARGS=--upgrade)
#
#   requirements/lock-py311-linux.txt      PyPI's torch (its Linux wheel is the CUDA build): the image, the clusters
#   requirements/lock-py311-linux-cpu.txt  the same versions, torch's CPU build: machines without a GPU
#
# Without --upgrade the pins already in a lock are kept (uv reads the output file as its preferences) and only
# what pyproject.toml or requirements/*.in changed is resolved again. The CPU build of torch comes from
# TORCH_CPU_FIND_LINKS (download.pytorch.org's torch page; where that is unreachable, pip's find-links, whose
# wheel must be the one download.pytorch.org publishes). uv comes from $UV, PATH, or a venv of its own made
# from requirements/tools.txt by hash.
set -euo pipefail
cd "$(dirname "$0")/.."
platform=(--python-version 3.11 --python-platform x86_64-manylinux_2_28)
cuda_lock=requirements/lock-py311-linux.txt
cpu_lock=requirements/lock-py311-linux-cpu.txt
cpu_links=${TORCH_CPU_FIND_LINKS:-https://download.pytorch.org/whl/cpu/torch/}

uv=${UV:-$(command -v uv || true)}
if [ -z "$uv" ]; then
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/gptray/lock-tools"
  if [ ! -x "$tools/bin/uv" ]; then
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --require-hashes -r requirements/tools.txt
  fi
  uv="$tools/bin/uv"
fi
if [[ $cpu_links == http* ]] && ! python3 -c "import urllib.request as u; u.urlopen('$cpu_links', timeout=5)" 2>/dev/null; then
  local_links=${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}
  [ -n "$local_links" ] || { echo "lock: $cpu_links is unreachable; set TORCH_CPU_FIND_LINKS" >&2; exit 1; }
  echo "lock: $cpu_links is unreachable; torch's CPU build from pip's find-links: $local_links" >&2
  cpu_links=$local_links
fi

header() {  # what a lock is for, above uv's own header (uv keeps it out of the pins it reads back)
  local lock=$1 what=$2 tmp
  tmp=$(mktemp)
  { echo "# gptray's users' install, $what: Linux x86_64, CPython 3.11. Regenerate: make lock."
    echo "# Install: scripts/install.sh --locked PYTHON (pip install --require-hashes -r this, then gptray --no-deps)."
    grep -v '^# gptray.s users. install\|^# Install: scripts/install.sh --locked' "$lock"; } > "$tmp"
  mv "$tmp" "$lock"
}

compile=("$uv" pip compile --quiet --generate-hashes "${platform[@]}" --custom-compile-command "make lock")
"${compile[@]}" pyproject.toml requirements/lock.in -o "$cuda_lock" "$@"
header "$cuda_lock" "PyPI's torch (the CUDA build)"
# The CPU lock holds the CUDA lock's versions (its pins as constraints; torch==2.13.0 admits 2.13.0+cpu).
"${compile[@]}" pyproject.toml requirements/lock-cpu.in -c "$cuda_lock" --find-links "$cpu_links" -o "$cpu_lock" "$@"
header "$cpu_lock" "torch's CPU build"
echo "lock: wrote $cuda_lock and $cpu_lock"
