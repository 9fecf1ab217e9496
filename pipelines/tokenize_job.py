"""`ray job submit` entrypoint: tokenize corpora into Parquet token shards + manifest.json on Ray Data.

The job reads, tokenizes and writes shards as one fused Ray Data operator (one Ray task per read
task of the plan); the driver, here, plans and writes only manifest.json.

    ray job submit --working-dir . -- python -m pipelines.tokenize_job --config configs/quickstart.yaml [key=value ...]

Takes the same arguments as `gptray tokenize` (run with --help to list them). Run as a module from the
project root (the job's working dir), so that the gptray package beside it is the one imported.
"""

import sys

from gptray.cli.main import run

if __name__ == "__main__":
    run(["tokenize", *sys.argv[1:]])
