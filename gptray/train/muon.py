"""torch.optim.Muon, with FSDP2's sharded matrices gathered whole for their orthogonalization.

Muon replaces a matrix's momentum by the nearest (semi-)orthogonal matrix, computed by Newton–Schulz
iterations on the whole matrix: no rank can orthogonalize its rows alone. Under DDP every rank holds
every whole matrix and its (all-reduced) gradient, and torch.optim.Muon runs as it is: each rank
orthogonalizes every matrix itself, the same on all ranks.

Under FSDP2 the parameters, gradients and momentum buffers are DTensors sharded by rows.
torch.optim.Muon does not special-case them: it runs on DTensor's implicit redistribution, which
(measured on 2 ranks, torch 2.13) costs ~13 collectives per matrix per step (the iterate gathered and
its Gram matrices all-reduced, in bf16, at each of the 5 iterations) and drifts from the unsharded
result (6e-3 in the weights after 3 steps of a 2-matrix test, where this class agrees bit for bit,
uneven shards included). Here instead the momentum stays sharded (each rank updates its own rows) and only the update
is gathered: one all-gather per hidden matrix per optimizer step, after which every rank runs
torch's own Newton–Schulz on the whole matrix, as the unsharded optimizer does, and keeps its rows.

The cost: the all-gather moves each hidden matrix once in fp32, as much as one of FSDP's own
all-gathers of those weights. FSDP moves them 2k + 1 times an optimizer step of k micro-batches (an
all-gather for each forward and each backward, one gradient reduce-scatter), so Muon adds at most a
third (k = 1) to the traffic of the hidden matrices, and nothing for the rest (embeddings, head,
norms, on AdamW). The redundant Newton–Schulz on every rank is
~5·(4m²n + 2m³) FLOPs for an m×n matrix (m ≤ n): ~1.5 TFLOP a step for GPT-2 124M, about 3e-5 of
a 524,288-token step's training FLOPs on each of 8 ranks. Memory: one whole matrix (and its bf16
iterates) at a time. (modded-nanogpt splits the matrices among the ranks and all-gathers the
results instead, which saves that compute at about the same traffic; at these ratios it is not worth
the code.)
"""

from __future__ import annotations

import torch

# torch.optim.Muon is new in torch 2.9; on an older torch, build_optimizers refuses optimizer.name=muon.
_Muon = getattr(torch.optim, "Muon", torch.optim.Optimizer)


class GatheredMuon(_Muon):
    """torch.optim.Muon; on DTensor (FSDP2) parameters, each matrix's update is gathered whole, orthogonalized
    by torch's Newton–Schulz on every rank, and applied to the rank's own rows. Its state (one
    `momentum_buffer` per matrix, sharded like the matrix) is torch.optim.Muon's, so checkpoints reshard
    between DDP and FSDP and across world sizes."""

    @torch.no_grad()
    def step(self, closure=None):
        from torch.distributed.tensor import DTensor, Replicate

        # The Newton–Schulz iteration and the per-shape lr scaling are torch.optim.Muon's own (private, so
        # a torch upgrade may move them; tests/unit/test_optimizers.py runs this path under FSDP).
        from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz

        if not any(isinstance(p, DTensor) for group in self.param_groups for p in group["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                # torch.optim.Muon's momentum and Nesterov step, on this rank's rows (elementwise)
                grad, buf = p.grad.to_local(), state["momentum_buffer"].to_local()
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                whole = DTensor.from_local(update, p.device_mesh, p.placements, run_check=False,
                                           shape=p.shape, stride=p.stride()).full_tensor()  # the all-gather
                orthogonal = _zeropower_via_newtonschulz(whole, group["ns_coefficients"], group["ns_steps"],
                                                         group["eps"])
                mine = DTensor.from_local(orthogonal, p.device_mesh, [Replicate()] * p.device_mesh.ndim,
                                          run_check=False).redistribute(p.device_mesh, p.placements).to_local()
                rows = p.to_local()
                rows.mul_(1 - lr * group["weight_decay"])
                rows.add_(mine, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
