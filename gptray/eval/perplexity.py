"""Perplexity of a token stream with a sliding window, as in Hugging Face's perplexity guide.

Windows of `max_length` input tokens start every `stride` tokens. Each window scores only the targets
the previous one did not, so every token after the first is predicted exactly once, with at least
max_length − stride tokens of context (fewer only at the start). stride = max_length gives disjoint
windows (fast, less context); a smaller stride approaches the model's full-context loss.

Beside loss and perplexity it reports bits per byte (gptray/data/token_bytes.py): each window carries
the UTF-8 bytes of its scored targets, so over a text file the bytes are the file's own, less its first
token's (the one target no window predicts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptray.core.errors import DataError
from gptray.data.global_order import IGNORE_INDEX
from gptray.data.token_bytes import bits_per_byte


def sliding_windows(num_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) for a stream of num_tokens: inputs tokens[begin:end], targets
    tokens[begin+1:end+1], of which the last `scored` are counted."""
    if num_tokens < 2:
        return []
    windows, scored_until = [], 0  # targets up to this token index are scored already
    last_target = num_tokens - 1
    begin = 0
    while True:
        end = min(begin + max_length, last_target)
        windows.append((begin, end, end - scored_until))
        scored_until = end
        if end == last_target:
            return windows
        begin += stride


def stream_units(tokens: np.ndarray, max_length: int, stride: int, source: int = 0,
                 token_bytes: np.ndarray | None = None) -> list[dict]:
    """The windows of one token stream as self-contained units (their tokens travel with them); with
    `token_bytes` (the bytes of each token id), each also carries the UTF-8 bytes of its scored targets."""
    windows = sliding_windows(len(tokens), max_length, stride)
    units = [{"source": source, "begin": begin, "tokens": tokens[begin : end + 1].astype(np.int64).tolist(),
              "scored": scored} for begin, end, scored in windows]
    if token_bytes is not None and windows:
        # bytes of tokens[:i] at i: a window's scored targets are tokens[end - scored + 1 : end + 1]
        before = np.concatenate([[0], np.cumsum(token_bytes[np.asarray(tokens, dtype=np.int64)])])
        for unit, (_, end, scored) in zip(units, windows):
            unit["bytes"] = int(before[end + 1] - before[end + 1 - scored])
    return units


def read_text_files(paths: list[str]) -> list[tuple[str, str]]:
    """(path, text) of each file, in order; a missing or unreadable file is a DataError."""
    texts = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(f"no text file at {path} (eval.text_files)")
        try:
            texts.append((str(path), path.read_text(encoding="utf-8", errors="replace")))
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
    return texts


def score(model, units: list[dict], device: torch.device) -> list[dict]:
    """One forward pass over the windows of `units`: each one's summed loss over its scored targets."""
    width = max(len(u["tokens"]) for u in units) - 1
    x = torch.zeros(len(units), width, dtype=torch.long)
    y = torch.full((len(units), width), IGNORE_INDEX, dtype=torch.long)
    for r, unit in enumerate(units):
        tokens = torch.tensor(list(unit["tokens"]), dtype=torch.long)
        n, scored = len(tokens) - 1, int(unit["scored"])
        x[r, :n] = tokens[:-1]
        y[r, n - scored : n] = tokens[n - scored + 1 :]
    logits, _ = model(x.to(device), prefix_len=model.scoring_prefix(y))  # a prefix-LM reads the context whole
    losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none").view(len(units), width)
    sums = losses.sum(dim=1).double().cpu().tolist()
    return [{"source": int(u["source"]), "begin": int(u["begin"]), "nll": nll, "tokens": int(u["scored"]),
             **({"bytes": int(u["bytes"])} if "bytes" in u else {})} for u, nll in zip(units, sums)]


def totals(results: list[dict]) -> np.ndarray:
    """[summed loss, scored tokens, windows, their targets' bytes, windows without bytes]: sums that add
    across workers."""
    unknown = sum("bytes" not in r for r in results)
    return np.array([sum(r["nll"] for r in results), sum(r["tokens"] for r in results), len(results),
                     sum(r.get("bytes", 0) for r in results), unknown], dtype=np.float64)


def metrics(sums: np.ndarray) -> dict[str, float]:
    """loss and ppl per token; bpb (bits per byte) and the bytes scored where every window knows its bytes."""
    loss = sums[0] / max(sums[1], 1)
    known = len(sums) > 4 and sums[4] == 0 and sums[2] > 0  # every window carried its bytes
    values = {"loss": loss, "ppl": float(np.exp(loss)), **({"bpb": bits_per_byte(sums[0], sums[3])} if known else {}),
              "tokens": sums[1], **({"bytes": sums[3]} if known else {}), "windows": sums[2]}
    return values
