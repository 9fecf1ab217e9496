"""HellaSwag, completion style: a context and four endings; the model picks the ending its loss likes best.

Each ending is scored by the cross-entropy of its own tokens after the context (as in build-nanogpt and
the GPT-2 paper's completion style): `acc` picks the lowest total loss, `acc_norm` the lowest mean loss
per token, which does not favour short endings. GPT-2 124M scores acc_norm 0.2955 this way on the
10,042 validation examples.

Examples are read from the official jsonl format (`ctx`, `endings`, `label` per line), from a local
file or a URL (downloaded once into the cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gptray.config.schema import HELLASWAG_VAL_URL  # eval.hellaswag's default
from gptray.core.errors import DataError
from gptray.core.paths import cache_home, hash_file
from gptray.data.global_order import IGNORE_INDEX

log = logging.getLogger(__name__)

PROBLEMS_SHOWN = 5


def cache_dir() -> Path:
    return cache_home("eval")


# Files whose content is known, by URL: the git blob id the rowanz/hellaswag repository records for
# data/hellaswag_val.jsonl (SHA-1 of "blob <size>\0" + content; the file has not changed since its first
# commit). A download from these URLs, or the cached copy of one, must have it.
KNOWN_BLOBS = {
    HELLASWAG_VAL_URL: "0f5ee25d72216f12317d5d8a7b92deafa423d81e",
    "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl":
        "0f5ee25d72216f12317d5d8a7b92deafa423d81e",
}


def git_blob_id(path: Path) -> str:
    """The id git gives the file's content (what `git hash-object` prints)."""
    header = f"blob {path.stat().st_size}\0".encode()
    return hash_file(path, hashlib.sha1(header, usedforsecurity=False)).hexdigest()


def _check_known(source: str, path: Path) -> None:
    expected = KNOWN_BLOBS.get(source)
    if expected is not None and (found := git_blob_id(path)) != expected:
        raise DataError(f"{path} (from {source}) is not the file that URL names: its git blob id is {found}, "
                        f"expected {expected}. Delete it to download it again")


def locate(source: str) -> Path:
    """A local jsonl file as it is; a URL is downloaded once into the cache (`file://` URLs too), and a
    file whose content is known (KNOWN_BLOBS) is checked, downloaded or cached."""
    if "://" not in source:
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"no HellaSwag file at {path} (give the path of hellaswag_val.jsonl, or its URL)")
        return path
    target = cache_dir() / "hellaswag" / Path(urllib.request.urlparse(source).path).name
    if target.is_file():
        _check_known(source, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", source, target)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with urllib.request.urlopen(source, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not download {source} ({type(exc).__name__}: {exc}). Without internet, fetch "
                        "hellaswag_val.jsonl elsewhere and pass its path: eval.hellaswag=/path/to/hellaswag_val.jsonl"
                        ) from None
    try:
        _check_known(source, tmp)
    except DataError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return target


@dataclass
class Examples:
    """Parsed examples, and the lines that were not examples (counted, the first few kept)."""

    items: list[dict]
    source: str
    skipped: int = 0
    problems: list[str] = field(default_factory=list)


def read_examples(source: str, limit: int | None = None) -> Examples:
    """The first `limit` well-formed examples of a HellaSwag jsonl file (all of them by default)."""
    path = locate(source)
    examples = Examples(items=[], source=str(path))
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if limit is not None and len(examples.items) >= limit:
                break
            try:
                examples.items.append(_parse(line))
            except ValueError as exc:
                examples.skipped += 1
                if len(examples.problems) < PROBLEMS_SHOWN:
                    examples.problems.append(f"line {number}: {exc}")
    if examples.skipped:
        log.warning("%s: skipped %d malformed line(s): %s", path, examples.skipped, "; ".join(examples.problems))
    if not examples.items:
        raise DataError(f"{path} holds no HellaSwag examples" +
                        (f" ({examples.skipped} malformed line(s): {'; '.join(examples.problems)})"
                         if examples.skipped else ""))
    return examples


def _parse(line: str) -> dict:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    ctx, endings, label = item.get("ctx"), item.get("endings"), item.get("label")
    if not isinstance(ctx, str) or not ctx:
        raise ValueError("no 'ctx' text")
    if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) and e for e in endings):
        raise ValueError("'endings' is not a list of at least two texts")
    if label is None:
        raise ValueError("no 'label' (HellaSwag's test split has none: use the validation split)")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(endings):
        raise ValueError(f"'label' {label!r} is not the index of an ending")
    return {"ctx": ctx, "endings": endings, "label": label}


def encode_examples(examples: Examples, tokenizer, vocab_size: int) -> list[dict]:
    """Token ids of each example: the context, and each ending with the space that joins it to the context."""
    units = []
    for index, item in enumerate(examples.items):
        context = tokenizer.encode(item["ctx"])
        endings = [tokenizer.encode(" " + ending) for ending in item["endings"]]
        bad = [t for t in [*context, *(t for e in endings for t in e)] if t >= vocab_size]
        if bad:
            raise DataError(f"HellaSwag example {index} ({examples.source}) has token {bad[0]}, outside the model's "
                            f"vocabulary of {vocab_size}: the model cannot read this tokenizer's text")
        units.append({"index": index, "label": item["label"], "context": context, "endings": endings})
    return units


def fit(context: list[int], ending: list[int], block_size: int) -> tuple[list[int], int, bool]:
    """Context + ending in at most block_size + 1 tokens (inputs and targets of one window), cut from
    the left; the index of the first scored ending token; whether anything was cut."""
    tokens = context + ending
    start = len(context)
    cut = max(len(tokens) - (block_size + 1), 0)
    return tokens[cut:], max(start - cut, 1), cut > 0


def score(model, units: list[dict], device: torch.device) -> list[dict]:
    """One forward pass over every ending of `units`: per example its prediction by total loss (`pred`)
    and by mean loss per token (`pred_norm`), and the losses themselves."""
    rows, starts, owners, truncated = [], [], [], set()
    for u, unit in enumerate(units):
        for ending in unit["endings"]:
            tokens, start, cut = fit(list(unit["context"]), list(ending), model.config.block_size)
            rows.append(tokens)
            starts.append(start)
            owners.append(u)
            if cut:
                truncated.add(u)
    width = max(len(r) for r in rows) - 1
    x = torch.zeros(len(rows), width, dtype=torch.long)
    y = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, (tokens, start) in enumerate(zip(rows, starts)):
        x[r, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        y[r, start - 1 : len(tokens) - 1] = torch.tensor(tokens[start:])  # the ending's tokens only
    logits, _ = model(x.to(device), prefix_len=model.scoring_prefix(y))  # a prefix-LM reads the context whole
    losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                             ignore_index=IGNORE_INDEX, reduction="none").view(len(rows), width)
    sums = losses.sum(dim=1).double().cpu().numpy()
    counts = (y != IGNORE_INDEX).sum(dim=1).numpy()
    results = []
    for u, unit in enumerate(units):
        mine = [r for r, owner in enumerate(owners) if owner == u]
        total, mean = sums[mine], sums[mine] / counts[mine]
        results.append({"index": int(unit["index"]), "label": int(unit["label"]), "pred": int(np.argmin(total)),
                        "pred_norm": int(np.argmin(mean)), "losses": total.tolist(), "truncated": u in truncated})
    return results


def totals(results: list[dict]) -> np.ndarray:
    """[examples, right by total loss, right by mean loss, truncated]: sums that add across workers."""
    return np.array([len(results), sum(r["pred"] == r["label"] for r in results),
                     sum(r["pred_norm"] == r["label"] for r in results), sum(r["truncated"] for r in results)],
                    dtype=np.float64)


def metrics(sums: np.ndarray) -> dict[str, float]:
    n = max(sums[0], 1)
    return {"acc": sums[1] / n, "acc_norm": sums[2] / n, "examples": sums[0], "truncated": sums[3]}
