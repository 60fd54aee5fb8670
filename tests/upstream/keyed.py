"""Torch modules grown from a checkpoint's key table, and the few layer functions the reference
models in this folder share.

A published checkpoint is a flat map from dotted keys to tensors. The reference models declare
that map (key -> shape, in the file's order) and compute their forward pass from it as a flat
dict, so the only thing they share with the code that trained the checkpoint is its format. The
module tree below exists because torch's `state_dict`, `parameters()` and optimisers want one.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class KeyedModule(nn.Module):
    """Parameters named exactly as `shapes` lists them, nested on the dots, in that order.

    `frozen` keys hold fixed tables (saved, never trained); `tied` maps a key to the key whose
    tensor it shares, so both names appear in `state_dict()` and the tensor trains once."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], frozen: frozenset[str] = frozenset(),
                 tied: dict[str, str] | None = None):
        super().__init__()
        tied = tied or {}
        for key, shape in shapes.items():
            *path, leaf = key.split(".")
            owner = self
            for part in path:
                if part not in owner._modules:
                    owner.add_module(part, nn.Module())
                owner = owner._modules[part]
            if key in tied:
                tensor = self.get_parameter(tied[key])
            else:
                tensor = nn.Parameter(torch.zeros(shape), requires_grad=key not in frozen)
            owner.register_parameter(leaf, tensor)

    def weights(self) -> dict[str, torch.Tensor]:
        """Every key, tied ones included, as the live parameters (gradients flow through)."""
        return self.state_dict(keep_vars=True)


def affine(w: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """x @ W.T (+ b) with the `name.weight` / `name.bias` pair; a missing bias adds nothing."""
    return F.linear(x, w[name + ".weight"], w.get(name + ".bias"))


def swiglu(w: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """Llama's gated MLP, w2(SiLU(w1 x) * w3 x), under the names both token GPTs use."""
    return affine(w, name + ".w2", F.silu(affine(w, name + ".w1", x)) * affine(w, name + ".w3", x))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Softmax attention of (B, S, H, D) heads at scale 1/sqrt(D) -> (B, S, H * D)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        later = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(later, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)
