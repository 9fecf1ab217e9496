"""`ray job submit` entrypoint: train a GPT on token shards with Ray Train's TorchTrainer (DDP), tracked in MLflow.

    ray job submit --working-dir . -- python pipelines/pretrain.py --config configs/quickstart.yaml [key=value ...]

Takes the same arguments as `gptray pretrain` (run with --help to list them).
"""

import sys
from pathlib import Path

# Use the gptray package shipped beside this file (the job's uploaded working dir),
# not whatever version happens to be installed on the cluster.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptray.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
