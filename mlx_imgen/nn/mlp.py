"""Feed-forward layers: two linears around a GELU (tanh approximation, exact, or CLIP's quick
GELU), SwiGLU, and GEGLU."""

import mlx.core as mx
import mlx.nn as nn

from .activations import gelu_tanh, quick_gelu, silu_gate

GELUS = {"gelu_tanh": gelu_tanh, "gelu": nn.gelu, "quick_gelu": quick_gelu}


class GeluMLP(nn.Module):
    """fc1, a GELU, fc2; `out_dims` (default `dims`) makes it a projector between widths."""

    def __init__(self, dims: int, hidden: int, bias: bool = True, activation: str = "gelu_tanh",
                 out_dims: int | None = None):
        super().__init__()
        if activation not in GELUS:
            raise ValueError(f"unknown GELU {activation!r}; use one of {', '.join(GELUS)}")
        # the name, not the function: mlx.nn.gelu is a compiled function, which does not pickle,
        # and the torch reference's child process receives the model pickled
        self.activation = activation
        self.fc1 = nn.Linear(dims, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, out_dims or dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(GELUS[self.activation](self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, dims: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(dims, hidden, bias=bias)
        self.up = nn.Linear(dims, hidden, bias=bias)
        self.down = nn.Linear(hidden, dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down(silu_gate(self.gate(x), self.up(x)))


class GEGLU(nn.Module):
    """diffusers' GEGLU feed-forward: one Linear to twice the hidden width (the value, then the
    gate: one matmul instead of two), value * exact GELU(gate), then the Linear back."""

    def __init__(self, dims: int, hidden: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dims, 2 * hidden, bias=bias)
        self.out = nn.Linear(hidden, dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        value, gate = mx.split(self.proj(x), 2, axis=-1)
        return self.out(value * nn.gelu(gate))


def swiglu_hidden(dims: int, multiple_of: int = 256, multiplier: float | None = None) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4*dims, scaled, rounded up to a multiple."""
    hidden = int(2 * 4 * dims / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * -(-hidden // multiple_of)


def make_mlp(kind: str, dims: int, hidden: int, bias: bool) -> nn.Module:
    if kind in GELUS:
        return GeluMLP(dims, hidden, bias, activation=kind)
    if kind == "swiglu":
        return SwiGLU(dims, hidden, bias)
    if kind == "geglu":
        return GEGLU(dims, hidden, bias)
    raise ValueError(f"unknown MLP {kind!r}; use one of "
                     f"{', '.join(map(repr, [*GELUS, 'swiglu', 'geglu']))}")
