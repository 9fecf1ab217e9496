"""A sweep's data, made before its first trial: tokenizers to train, token datasets to write, FLOPs budgets.

A tokenizer ablation's trials name tokenizers and datasets that do not exist yet (configs/sweeps/
vocab.yaml): a tokenizer.json path that is missing is learned from the trial's data.sources with its
`tokenizer` settings (gptray tokenizer train), and a dataset_dir without a manifest is tokenized
(gptray tokenize), each once however many trials share it. Then a FLOPs budget turns into each trial's
steps, with the vocabulary its dataset gives it.
"""

from __future__ import annotations

import logging

from gptray.core.storage import Storage
from gptray.data.bpe_training import learn_missing_tokenizer
from gptray.data.manifest import MANIFEST_NAME, Manifest
from gptray.data.tokenize_job import tokenize_corpus
from gptray.data.tokenizer_loading import dataset_tokenizer
from gptray.tune.spec import Sweep, budget_steps, with_steps

log = logging.getLogger(__name__)


def prepare_sweep_data(sweep: Sweep) -> Sweep:
    """Train the missing tokenizers and tokenize the missing datasets the trials name; set FLOPs budgets."""
    tokenized: set[str] = set()
    for trial in sweep.trials:
        config = trial.config
        if learn_missing_tokenizer(config) is not None:  # once: the next trial naming it finds the file
            log.info("sweep %s: learned the tokenizer %s for %s", sweep.base.name, config.data.tokenizer,
                     trial.label)
        dataset = config.data.dataset_dir
        if dataset not in tokenized and not Storage(dataset).exists(MANIFEST_NAME):
            log.info("sweep %s: tokenizing %s for %s", sweep.base.name, dataset, trial.label)
            tokenize_corpus(config)
        tokenized.add(dataset)
    if sweep.spec.budget_flops is None:
        return sweep
    trials = []
    for trial in sweep.trials:
        config = trial.config
        manifest = Manifest.load(config.data.dataset_dir)
        tokenizer = dataset_tokenizer(Storage(config.data.dataset_dir), manifest)
        model = config.model.for_dataset(tokenizer.vocab_size, tokenizer.eot_token)
        trials.append(with_steps(sweep, trial, budget_steps(model, config, sweep.spec)))
    sweep.trials = trials
    return sweep
