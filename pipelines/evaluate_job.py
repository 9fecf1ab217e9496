"""`ray job submit` entrypoint: evaluate a checkpoint (HellaSwag, perplexity) over a Ray Data actor pool, to MLflow.

    ray job submit --working-dir . -- python -m pipelines.evaluate_job --checkpoint /shared/runs/gpt2 --task hellaswag

Takes the same arguments as `gptray eval` (run with --help to list them). The checkpoint must be on
storage every node sees: each actor loads it. Run as a module from the project root (the job's
working dir), so that the gptray package beside it is the one imported.
"""

import sys

from gptray.cli.main import run

if __name__ == "__main__":
    run(["eval", *sys.argv[1:]])
