"""Evaluating checkpoints: HellaSwag, perplexity and lm-evaluation-harness tasks, in process, over a Ray Data actor
pool, or during training.

Import from the modules (`gptray.eval.evaluate`, `gptray.eval.report`): this package imports nothing, so that
training, which imports `gptray.eval.training`, does not import the harness (lm_eval, seconds to import).
"""
