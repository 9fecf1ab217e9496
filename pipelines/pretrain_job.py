"""`ray job submit` entrypoint: train a GPT on token shards with Ray Train's TorchTrainer (DDP), tracked in MLflow.

    ray job submit --working-dir . -- python -m pipelines.pretrain_job --config configs/quickstart.yaml [key=value ...]

Takes the same arguments as `gptray pretrain` (run with --help to list them). Run as a module from the
project root (the job's working dir), so that the gptray package beside it is the one imported.
"""

import sys

from gptray.cli.main import run

if __name__ == "__main__":
    run(["pretrain", *sys.argv[1:]])
