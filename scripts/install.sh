#!/usr/bin/env bash
# Install gptray and its dependencies into a Python environment: `make setup`, CI, the Docker image and the
# cluster files all run this, so they install the same way.
#
#   scripts/install.sh PYTHON [EXTRAS]       e.g. scripts/install.sh .venv/bin/python dev
#   scripts/install.sh --locked PYTHON       the users' install from the hashed lock (the image, the clusters)
#
# --locked installs every dependency at the version and sha256 the lock names (`pip install --require-hashes`:
# a file whose hash is not in the lock is refused), then gptray itself with --no-deps and --no-build-isolation
# (its build backend, setuptools, is in the lock too, so nothing is fetched unverified). The lock is for
# Linux x86_64 and Python 3.11: requirements/lock-py311-linux.txt with the CUDA torch, or
# requirements/lock-py311-linux-cpu.txt with the CPU one (`make lock` writes both). It holds no extras.
#
# Otherwise pip resolves pyproject.toml's ranges, torch first, as a CPU build where there is no NVIDIA GPU (PyPI's
# default Linux wheel is the multi-GB CUDA one); `make setup` installs this way (the dev extra is not locked).
# TORCH_VARIANT=cuda|cpu overrides the detection (a `docker build` sees no GPU); without internet, pip's
# configured local wheels are used as they are.
set -euo pipefail
locked=
if [ "${1:-}" = --locked ]; then locked=1; shift; fi
python=${1:?usage: scripts/install.sh [--locked] PYTHON [EXTRAS]}
extras=${2:-}
torch_version=${TORCH_VERSION:-2.13.0}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
variant=${TORCH_VARIANT:-auto}
cd "$(dirname "$0")/.."

pip() { "$python" -m pip install --quiet "$@"; }

if [ "$variant" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then variant=cuda; else variant=cpu; fi
fi

if [ -n "$locked" ]; then
  lock=requirements/lock-py311-linux.txt
  if [ "$variant" = cpu ]; then lock=requirements/lock-py311-linux-cpu.txt; fi
  if [ -n "$extras" ]; then
    echo "install: the lock is the users' install and holds no extras ([$extras]); install without --locked" >&2
    exit 2
  fi
  if ! "$python" -c 'import platform, sys; sys.exit(sys.version_info[:2] != (3, 11) or sys.platform != "linux"
                     or platform.machine() != "x86_64")'; then
    echo "install: $lock is for Linux x86_64 and Python 3.11, not $("$python" -c 'import platform, sys
print(sys.platform, platform.machine(), platform.python_version())'); install without --locked" >&2
    exit 2
  fi
  echo "install: dependencies from $lock (pip --require-hashes)"
  pip --require-hashes -r "$lock"
  pip --no-deps --no-build-isolation -e .
  exit 0
fi

if "$python" -c "import torch" 2>/dev/null; then
  echo "torch already installed: $("$python" -c 'import torch; print(torch.__version__)')"
elif [ "$variant" = cuda ]; then
  pip "torch==$torch_version"
elif "$python" -c "import urllib.request as u; u.urlopen('$cpu_index/', timeout=5)" 2>/dev/null; then
  pip "torch==$torch_version" --index-url "$cpu_index"
else
  pip "torch==$torch_version"   # offline: the local wheel pip is configured with
fi
pip -e ".${extras:+[$extras]}"
