"""`ray job submit` entrypoint: tokenize corpora into Parquet token shards + manifest.json (Ray Data).

    ray job submit --working-dir . -- python pipelines/tokenize.py --config configs/quickstart.yaml [key=value ...]

Takes the same arguments as `gptray tokenize` (run with --help to list them).
"""

import sys
from pathlib import Path

# Use the gptray package shipped beside this file (the job's uploaded working dir),
# not whatever version happens to be installed on the cluster.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptray.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tokenize", *sys.argv[1:]]))
