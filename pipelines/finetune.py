"""`ray job submit` entrypoint: fine-tune a gptray or Hugging Face GPT-2 checkpoint with Ray Train, tracked in MLflow.

    ray job submit --working-dir . -- python pipelines/finetune.py --config configs/finetune.yaml [key=value ...]

Takes the same arguments as `gptray finetune` (run with --help to list them).
"""

import os
import sys

# Take this directory off sys.path before importing anything: as its first entry it would make
# pipelines/tokenize.py shadow the standard library's `tokenize` module. The project root goes
# first instead, so the gptray package beside this file (the job's uploaded working dir) is the
# one imported, not whatever version is installed on the cluster.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

from gptray.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
