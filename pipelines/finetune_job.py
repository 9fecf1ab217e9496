"""`ray job submit` entrypoint: fine-tune a gptray or Hugging Face GPT-2 checkpoint with Ray Train, tracked in MLflow.

    ray job submit --working-dir . -- python -m pipelines.finetune_job --config configs/finetune.yaml [key=value ...]

Takes the same arguments as `gptray finetune` (run with --help to list them). Run as a module from the
project root (the job's working dir), so that the gptray package beside it is the one imported.
"""

import sys

from gptray.cli.main import run

if __name__ == "__main__":
    run(["finetune", *sys.argv[1:]])
