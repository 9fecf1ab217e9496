"""gptray as an lm-evaluation-harness model (`--model gptray --model_args pretrained=CHECKPOINT`): any gptray
checkpoint, whole or sharded, every variant and tokenizer, scored by gptray's own GPT, decoder and KV cache.

Requests become self-contained units (token ids, cut from the left to the model's window as the harness's
own models cut them); a scorer turns units into results: `LocalScorer` in this process, or the Ray Data
actor pool of `harness_pool.RayScorer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from gptray.checkpoint.files import find_checkpoint, local_checkpoint
from gptray.eval.harness_scoring import (
    generate_units,
    generation_unit,
    loglikelihood_unit,
    score_loglikelihoods,
)
from gptray.generation.loading import checkpoint_tokenizer, load_model, resolve_device

log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256  # the harness's own default for generation tasks
GPT2_TOKENIZER = "gpt2"  # a checkpoint whose run names no tokenizer was trained on GPT-2's


@dataclass
class LocalScorer:
    """Scores units with a model held in this process, `batch_size` units per forward pass (longest first,
    so a batch pads little)."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    batch_size: int = 4
    precision: str = "fp32"
    seed: int = 0

    def loglikelihoods(self, units: list[dict]) -> list[dict]:
        ordered = sorted(units, key=lambda u: -len(u["tokens"]))
        results = []
        for i in range(0, len(ordered), self.batch_size):
            results += score_loglikelihoods(self.model, ordered[i : i + self.batch_size], self.device, self.precision)
        return sorted(results, key=lambda r: r["index"])

    def generations(self, units: list[dict]) -> list[dict]:
        results = []
        for i in range(0, len(units), self.batch_size):
            results += generate_units(self.model, self.tokenizer, units[i : i + self.batch_size], self.device,
                                      self.precision, self.seed)
        return sorted(results, key=lambda r: r["index"])


@register_model("gptray")
class GptrayLM(TemplateLM):
    """The harness's view of a gptray model. Build it from a checkpoint (`pretrained`: a checkpoint or run
    directory, local or on an object store), or from a loaded model and tokenizer (`from_model`)."""

    def __init__(self, pretrained: str | None = None, device: str = "auto", batch_size: int | str = 4,
                 precision: str = "fp32", max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, seed: int = 0,
                 scorer=None, tokenizer=None, block_size: int | None = None, **unused):
        super().__init__()
        if unused:
            log.warning("gptray harness model: ignoring arguments %s", ", ".join(sorted(unused)))
        if scorer is None:
            if pretrained is None:
                raise ValueError("the gptray harness model needs `pretrained`: a checkpoint or run directory")
            where = resolve_device(device)
            model, directory = load_model(local_checkpoint(find_checkpoint(pretrained)), where)
            tokenizer = checkpoint_tokenizer(directory, GPT2_TOKENIZER)
            scorer = LocalScorer(model, tokenizer, where, _batch_size(batch_size), precision, seed)
            block_size = model.config.block_size
        self.scorer, self.tokenizer, self.block_size = scorer, tokenizer, int(block_size)
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def from_model(cls, model, tokenizer, device: torch.device, batch_size: int = 4, precision: str = "fp32",
                   seed: int = 0, **options) -> GptrayLM:
        scorer = LocalScorer(model.eval(), tokenizer, device, batch_size, precision, seed)
        return cls(scorer=scorer, tokenizer=tokenizer, block_size=model.config.block_size, **options)

    # What TemplateLM needs to tokenize requests.
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_token

    @property
    def max_length(self) -> int:
        return self.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.tokenizer.decode(list(tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        units = [loglikelihood_unit(i, context, continuation, self.block_size)
                 for i, (_, context, continuation) in enumerate(requests)]
        results = self.scorer.loglikelihoods(units)
        answers = [(r["logprob"], r["greedy"]) for r in results]
        for (key, _, _), answer in zip(requests, answers):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood over disjoint windows of the model's length, each window read with as
        much of the text before it as fits (the harness's own rolling windows), all windows in one pass."""
        pairs, owners = [], []
        for r, (text,) in enumerate(req.args for req in requests):
            windows = lm_utils.get_rolling_token_windows(token_list=self.tok_encode(text),
                                                         prefix_token=self.prefix_token_id,
                                                         max_seq_len=self.block_size, context_len=1)
            for context, continuation in map(lm_utils.make_disjoint_window, windows):
                pairs.append((None, context, continuation))
                owners.append(r)
        scores = self._loglikelihood_tokens(pairs)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        units = []
        for i, req in enumerate(requests):
            context, options = req.args
            options = dict(options or {})
            until = options.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen_toks = int(options.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(options.pop("temperature", 0.0)) if options.pop("do_sample", False) else 0.0
            units.append(generation_unit(i, self.tok_encode(context) or [self.eot_token_id], until, max_gen_toks,
                                         temperature, self.block_size))
        texts = [r["text"] for r in self.scorer.generations(units)]
        for req, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts


def _batch_size(value: int | str) -> int:
    """The harness passes model_args as strings; "auto" is the default of 4 (gptray does not probe memory)."""
    return 4 if value == "auto" else int(value)
