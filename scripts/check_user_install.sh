#!/usr/bin/env bash
# Install gptray as a user's machine does, then tokenize and train a few steps with it: the check that CI
# (.ci/run) makes of what `make test` cannot see, since the test venv has the dev extra.
#
#   scripts/check_user_install.sh [PYTHON]        PYTHON: the interpreter to make the venv with (python3)
#
# The venv is made the way the Docker image and the cluster files install: `scripts/install.sh --locked`, every
# dependency by version and sha256 from the hashed lock, no extras (here, without a GPU, the CPU lock:
# requirements/lock-py311-linux-cpu.txt, the image's versions with torch's CPU build). In it, the job
# entrypoints `ray job submit` runs (python -m pipelines.…) learn the default byte-level BPE from
# tinyshakespeare, tokenize with it and train the nano GPT for a few steps on one local Ray worker.
# Offline as CI is: TIKTOKEN_CACHE_DIR and GPTRAY_CORPORA as .ci/run sets them. About two minutes.
set -euo pipefail
base_python=${1:-python3}
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/gptray-user-install-XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$SECONDS

echo "user install: venv in $work/venv (scripts/install.sh --locked, no extras)"
"$base_python" -m venv "$work/venv"
python="$work/venv/bin/python"
"$python" -m pip install --quiet --upgrade pip
scripts/install.sh --locked "$python"
"$python" -m pip check  # the lock is complete and consistent: every installed package's requirements are met
if "$python" -c "import transformers" 2>/dev/null; then
  echo "user install: transformers (the dev extra) is installed: this is not a user's install" >&2
  exit 1
fi
echo "user install: installed in $((SECONDS - started)) s"

# Every path under $work; a tiny run: one worker on a local Ray of 2 CPUs, 6 steps, a checkpoint at the end.
overrides=(
  "out_dir=$work/runs" "name=user-install"
  "data.dataset_dir=$work/data/tinyshakespeare-bpe" "data.tokenizer=$work/data/tokenizers/tinyshakespeare"
  "tokenizer.vocab_size=1024"
  "ray.address=local" "ray.num_cpus=2" "ray.num_workers=1"
  "train.max_steps=6" "train.log_interval=2" "train.eval_interval=6" "checkpoint.interval=6"
  "generate.max_new_tokens=16"
)
export XDG_CACHE_HOME="$work/cache" RAY_USAGE_STATS_ENABLED=0
step=$SECONDS
"$python" -m pipelines.tokenize_job "${overrides[@]}"
echo "user install: tokenized in $((SECONDS - step)) s"
step=$SECONDS
"$python" -m pipelines.pretrain_job "${overrides[@]}"
echo "user install: trained in $((SECONDS - step)) s"
test -f "$work/runs/user-install/config.yaml"
echo "user install: passed in $((SECONDS - started)) s"
