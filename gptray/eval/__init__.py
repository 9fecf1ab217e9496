"""Evaluating checkpoints: HellaSwag and perplexity, in process, over a Ray Data actor pool, or during training."""

from gptray.eval.evaluate import EvalReport, evaluate_checkpoint
from gptray.eval.report import format_table, log_report
from gptray.eval.tasks import TASKS, prepare

__all__ = ["TASKS", "EvalReport", "evaluate_checkpoint", "format_table", "log_report", "prepare"]
