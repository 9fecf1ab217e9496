#!/usr/bin/env bash
# Install gptray and its dependencies into a Python environment: `make setup`, CI and the Docker
# image all run this, so they install the same way.
#
#   scripts/install.sh PYTHON [EXTRAS]       e.g. scripts/install.sh .venv/bin/python dev
#
# torch comes first, as a CPU build where there is no NVIDIA GPU (PyPI's default Linux wheel is
# the multi-GB CUDA one). TORCH_VARIANT=cuda|cpu overrides the detection (a `docker build` sees no
# GPU); without internet, pip's configured local wheels are used as they are.
set -euo pipefail
python=${1:?usage: scripts/install.sh PYTHON [EXTRAS]}
extras=${2:-}
torch_version=${TORCH_VERSION:-2.13.0}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
variant=${TORCH_VARIANT:-auto}
cd "$(dirname "$0")/.."

pip() { "$python" -m pip install --quiet "$@"; }

if [ "$variant" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then variant=cuda; else variant=cpu; fi
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
