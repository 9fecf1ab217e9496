"""Key/value cache for incremental decoding: each layer's keys and values, with the positions, padding
and document ids of the tokens they belong to, so masks can be built for new queries against old keys.

A cache holds up to `capacity` tokens per sequence (at most the model's block_size). Sequences of a
batch may be left-padded to a common length: pad slots get negative positions and are never attended
to, so each sequence computes what it would alone. Use a cache for one decoding run and discard it;
a forward pass that raises leaves it half-written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptray.config.model import ModelConfig


@dataclass
class CacheStep:
    """What a forward pass over new tokens needs to know: their positions against the cached ones."""

    past: int  # tokens already cached (per sequence, padding included)
    q_positions: torch.Tensor  # (B, T) position of each new token; negative for padding
    q_valid: torch.Tensor  # (B, T) False for padding
    k_positions: torch.Tensor  # (B, past + T)
    k_valid: torch.Tensor  # (B, past + T)
    q_documents: torch.Tensor | None  # (B, T) document ids, with document masking
    k_documents: torch.Tensor | None  # (B, past + T)
    prefix: torch.Tensor | None = None  # (B,) model.attention=prefix: the first chunk's tokens seen bidirectionally


class LayerCache:
    """One attention layer's view of the cache: append this step's keys and values, get all of them."""

    def __init__(self, cache: KVCache, layer: int):
        self.cache = cache
        self.layer = layer

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, H, T, head_dim) keys and values after the cached ones; return (B, H, past + T, head_dim)."""
        return self.cache._extend(self.layer, k, v)


class KVCache:
    def __init__(self, config: ModelConfig, batch: int, capacity: int | None = None,
                 device: torch.device | str = "cpu", padding: torch.Tensor | list[int] | None = None):
        """A cache for `batch` sequences of up to `capacity` tokens (default: block_size). `padding[i]`
        is how many pad tokens sequence i's first chunk starts with (left padding)."""
        capacity = config.block_size if capacity is None else capacity
        if not 0 < capacity <= config.block_size:
            raise ValueError(f"cache capacity must be in [1, block_size={config.block_size}] (got {capacity})")
        self.config = config
        self.batch = batch
        self.capacity = capacity
        self.device = torch.device(device)
        self.length = 0  # slots filled in every sequence (padding included)
        self.keys: list[torch.Tensor | None] = [None] * config.n_layer  # allocated on first use, in k's dtype
        self.values: list[torch.Tensor | None] = [None] * config.n_layer
        self.positions = torch.zeros(batch, capacity, dtype=torch.long, device=self.device)
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool, device=self.device)
        self.documents = torch.zeros(batch, capacity, dtype=torch.long, device=self.device)
        pad = torch.zeros(batch, dtype=torch.long) if padding is None else torch.as_tensor(padding, dtype=torch.long)
        if pad.shape != (batch,) or (pad < 0).any():
            raise ValueError(f"padding must hold one non-negative count per sequence (got {pad.tolist()})")
        self.padded = bool((pad > 0).any())
        # The next token's position: pad tokens count up through negative positions to the first real one at 0.
        self.next_position = (-pad).to(self.device)
        self.eot_count = torch.zeros(batch, dtype=torch.long, device=self.device)  # ends of documents seen
        self.prefix: torch.Tensor | None = None  # (B,) prefix lengths under model.attention=prefix
        self.layers = [LayerCache(self, i) for i in range(config.n_layer)]

    @property
    def remaining(self) -> int:
        return self.capacity - self.length

    def begin(self, idx: torch.Tensor, prefix: torch.Tensor | None = None) -> CacheStep:
        """Record the new tokens' positions, validity and documents; the layers then extend their keys.
        Under model.attention=prefix the first chunk sets each sequence's prefix: `prefix` (B,) real
        tokens, by default all of them (the prompt); it cannot change later."""
        B, T = idx.shape
        if B != self.batch:
            raise ValueError(f"the cache holds {self.batch} sequence(s), not {B}")
        if T > self.remaining:
            raise ValueError(f"{T} new token(s) do not fit the cache: {self.length} of {self.capacity} slots used")
        start, end = self.length, self.length + T
        if prefix is not None and start > 0:
            raise ValueError("a prefix is set by the first chunk a cache sees, not a later one")
        q_positions = self.next_position[:, None] + torch.arange(T, device=self.device)
        q_valid = q_positions >= 0
        self.positions[:, start:end] = q_positions
        self.valid[:, start:end] = q_valid
        q_documents = k_documents = None
        if self.config.document_mask:
            # An end-of-text token closes its own document: a token's id is the count of EOTs before it.
            is_eot = ((idx == self.config.eot_token) & q_valid).long()
            q_documents = self.eot_count[:, None] + torch.cumsum(is_eot, dim=1) - is_eot
            self.documents[:, start:end] = q_documents
            self.eot_count += is_eot.sum(dim=1)
            k_documents = self.documents[:, :end]
        if self.config.attention == "prefix" and start == 0:
            self.prefix = q_valid.sum(dim=1) if prefix is None else prefix.to(self.device)
        self.next_position += T
        return CacheStep(past=start, q_positions=q_positions, q_valid=q_valid, k_positions=self.positions[:, :end],
                         k_valid=self.valid[:, :end], q_documents=q_documents, k_documents=k_documents,
                         prefix=self.prefix)

    def _extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys[layer] is None:
            shape = (self.batch, k.size(1), self.capacity, k.size(3))
            self.keys[layer] = torch.zeros(shape, dtype=k.dtype, device=k.device)
            self.values[layer] = torch.zeros(shape, dtype=v.dtype, device=v.device)
        keys, values = self.keys[layer], self.values[layer]
        end = self.length + k.size(2)
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]

    def commit(self, new_tokens: int) -> None:
        """Called by the model once every layer has extended its keys and values."""
        self.length += new_tokens

    def select(self, rows: torch.Tensor | list[int]) -> None:
        """Keep (and reorder, repeat) sequences by index: beams that survive, sequences still decoding."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        for store in (self.keys, self.values):
            for i, tensor in enumerate(store):
                if tensor is not None:
                    store[i] = tensor.index_select(0, rows.to(tensor.device))
        self.positions = self.positions.index_select(0, rows)
        self.valid = self.valid.index_select(0, rows)
        self.documents = self.documents.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
        self.eot_count = self.eot_count.index_select(0, rows)
        if self.prefix is not None:
            self.prefix = self.prefix.index_select(0, rows)
        self.batch = len(rows)
