"""`ray job submit` entrypoint: evaluate a checkpoint (HellaSwag, perplexity) over a Ray Data actor pool, to MLflow.

    ray job submit --working-dir . -- python pipelines/evaluate.py --checkpoint /shared/runs/gpt2 --task hellaswag

Takes the same arguments as `gptray eval` (run with --help to list them). The checkpoint must be on
storage every node sees: each actor loads it.
"""

import os
import sys

# As in pipelines/pretrain.py: this directory off sys.path, the project root (the job's working dir) first.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from gptray.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
