# gptray's image: the official Ray image for the Ray and Python versions the project pins, plus
# this project installed the way CI installs it (scripts/install.sh). The cluster launcher YAMLs
# and the KubeRay manifests in cluster/ run on it.
#
#   docker build -t gptray:2.60.0-py311-gpu .
FROM rayproject/ray:2.60.0-py311-gpu

WORKDIR /app
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users scripts ./scripts
COPY --chown=ray:users gptray ./gptray
COPY --chown=ray:users pipelines ./pipelines
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users benchmarks ./benchmarks

# GPUs are not visible during `docker build`: ask for the CUDA build of torch explicitly.
RUN TORCH_VARIANT=cuda scripts/install.sh python

# Offline nodes: put tiktoken's GPT-2 files here (or mount them) and tiktoken reads them from disk.
ENV TIKTOKEN_CACHE_DIR=/app/tiktoken_cache
