"""An elastic run (ray.num_workers: [1, 2]) on a local multi-node cluster trains the fixed 2-worker run's batches.

The scenario is benchmarks/elastic_resize.py's, run here as BENCHMARKS.md documents it with --smoke: in a
process of its own (a multi-node cluster cannot share this session's single-node Ray), the run starts on one
worker, grows to two when a node joins, and shrinks back to one when that node is reclaimed as a spot node is:
drained with reason PREEMPTION and a deadline, the workers checkpoint on Ray Train's notice, and the node is
killed; the 1-worker group resumes from that checkpoint and trains to step 12; then a fixed 2-worker group
resumes its final checkpoint for 2 more steps.
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
    assert sizes == [1] * 4 + [2] * 3 + [1] * (STEPS - 7), sizes  # grew at step 4, the node reclaimed at step 7
    # Ray Train's notice reached the workers (checkpoint.preemption_check_interval=1): they checkpointed at
    # each check from it on, so the 1-worker group resumed at step 7, not at step 4's scheduled checkpoint
    # (checkpoint.interval=4), and no step was trained twice
    preempted = [s for s in range(1, STEPS + 1) if first[s].get("train/preemption_checkpoint")]
    assert 7 in preempted and set(preempted) <= {5, 6, 7}, preempted
    trained = [s for s in record["trained_steps"] if s <= STEPS]  # rank 0's progress lines, every step logged
    assert sorted(trained) == list(range(1, STEPS + 1)), trained
    log = (tmp_path / "round0" / "scenario.log").read_text()
    assert "step 7: preemption checkpoint stored" in log and "are about to be preempted" in log
    for step in range(1, STEPS + 1):  # every step the batch the fixed 2-worker run read, at any world size
        assert first[step]["data/batch_digest"] == reference["data/batch_digest"][step], step
        assert first[step]["train/loss"] == pytest.approx(reference["train/loss"][step], abs=2e-3), step
    # the final checkpoint, resumed by a fixed 2-worker group, continues along the reference
    assert record["resumed"] == {"start_step": STEPS, "final_step": STEPS + 2}
    for step in (STEPS + 1, STEPS + 2):
        assert rows[step]["train/world_size"] == 2
        assert rows[step]["data/batch_digest"] == reference["data/batch_digest"][step]
        assert rows[step]["train/loss"] == pytest.approx(reference["train/loss"][step], abs=2e-3)
