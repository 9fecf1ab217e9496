"""An elastic run (ray.num_workers: [1, 2]) on a local multi-node cluster trains the fixed 2-worker run's batches.

The scenario is benchmarks/elastic_resize.py's, run here as BENCHMARKS.md documents it with --smoke: in a
process of its own (a multi-node cluster cannot share this session's single-node Ray), the run starts on one
worker, grows to two when a node joins, shrinks back to one when that node is killed, and trains to step 12;
then a fixed 2-worker group resumes its final checkpoint for 2 more steps.
"""

from __future__ import annotations

import json

import pytest
from test_benchmarks import documented_arguments, load

from gptray.core.storage import Storage
from gptray.tracking.history import read_history

STEPS = 12  # the benchmark's --smoke


@pytest.mark.slow
@pytest.mark.multinode  # about 5 minutes on 2 cores: `make test-multinode`, not in the default suite
def test_an_elastic_run_grows_and_shrinks_along_the_fixed_runs_batches(shakespeare_dataset, reference_run, tmp_path,
                                                                       capsys):
    reference_config, _ = reference_run
    reference = read_history(Storage(reference_config.run_dir))
    load("elastic_resize").main(documented_arguments("elastic_resize") +
                                ["--smoke", "--dataset", shakespeare_dataset.dataset_dir, "--root", str(tmp_path)])
    assert "digests equal the data order's at every step: yes" in capsys.readouterr().out
    record = json.loads((tmp_path / "round0" / "scenario.json").read_text())
    rows = {int(s): v for s, v in record["rows"].items()}
    first = {int(s): v for s, v in record["first_run_rows"].items()}
    sizes = [first[s]["train/world_size"] for s in range(1, STEPS + 1)]
    assert sizes == [1, 1, 2, 2] + [1] * (STEPS - 4), sizes  # grew at step 2, shrank back at step 4
    for step in range(1, STEPS + 1):  # every step the batch the fixed 2-worker run read, at any world size
        assert first[step]["data/batch_digest"] == reference["data/batch_digest"][step], step
        assert first[step]["train/loss"] == pytest.approx(reference["train/loss"][step], abs=2e-3), step
    # the final checkpoint, resumed by a fixed 2-worker group, continues along the reference
    assert record["resumed"] == {"start_step": STEPS, "final_step": STEPS + 2}
    for step in (STEPS + 1, STEPS + 2):
        assert rows[step]["train/world_size"] == 2
        assert rows[step]["data/batch_digest"] == reference["data/batch_digest"][step]
        assert rows[step]["train/loss"] == pytest.approx(reference["train/loss"][step], abs=2e-3)
