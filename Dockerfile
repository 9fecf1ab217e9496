# gptray's image: the official Ray image for the Ray and Python versions the project pins, plus
# this project and every dependency at the version and sha256 of the hashed lock
# (scripts/install.sh --locked: requirements/lock-py311-linux.txt, written by `make lock`).
# The KubeRay manifests in cluster/ run on it.
#
#   docker build -t gptray:2.60.0-py311-gpu .
#
# The base is named by its tag; `scripts/pin_images.sh`, run where the registry is reachable, pins it
# to the digest the registry serves (FROM rayproject/ray:2.60.0-py311-gpu@sha256:…), as
# `crane digest rayproject/ray:2.60.0-py311-gpu` prints it.
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /app
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users scripts ./scripts
COPY --chown=ray:users requirements ./requirements
COPY --chown=ray:users gptray ./gptray
COPY --chown=ray:users pipelines ./pipelines
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users benchmarks ./benchmarks

# GPUs are not visible during `docker build`: ask for the CUDA lock (PyPI's CUDA torch) explicitly.
# Packages the base image already has at a locked version are kept as they are (pip: already satisfied).
RUN TORCH_VARIANT=cuda scripts/install.sh --locked python

# Offline nodes: put tiktoken's GPT-2 files here (or mount them) and tiktoken reads them from disk.
ENV TIKTOKEN_CACHE_DIR=/app/tiktoken_cache
