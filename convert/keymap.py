"""Declarative key maps from upstream checkpoints to mlx-imgen modules, and strict shape checks.

A map is a list of `Rule(source regex, target template, transform)`; each upstream key must match
exactly one rule or an `ignore` pattern. Transforms run once, at conversion time. A lazy map
gives `Deferred` values that load and transform one tensor each, so a converter can hold one
float tensor at a time; each also knows its target shape without loading anything, so a wrong
file is refused from its shapes alone.
"""

import math
import re
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten


class KeyMismatchError(ValueError):
    """Checkpoint keys or shapes that do not fit the model; the message lists them."""


@dataclass(frozen=True)
class Rule:
    source: str
    target: str
    transform: Callable[[mx.array], mx.array] | None = None


def conv_weight(w: mx.array) -> mx.array:
    """PyTorch conv weights (O, I, kH, kW) to MLX layout (O, kH, kW, I)."""
    return w.transpose(0, 2, 3, 1) if w.ndim == 4 else w


def _conv_weight_shape(shape: tuple) -> tuple:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape


def pointwise_conv_as_linear(w: mx.array) -> mx.array:
    """A 1x1 conv weight, in either layout, as the Linear weight (O, I) it is over channels."""
    return w.reshape(w.shape[0], -1)


# the shape each transform gives, so that target shapes are known before any tensor is read;
# a transform missing here is a bug the key-and-shape pass reports at once
SHAPE_RULES: dict[Callable, Callable[[tuple], tuple]] = {
    conv_weight: _conv_weight_shape,
    pointwise_conv_as_linear: lambda shape: (shape[0], math.prod(shape[1:])),
}


class Deferred:
    """A tensor not loaded yet: calling it loads it; `shape` is known without loading."""

    def __init__(self, load: Callable[[], mx.array], shape: tuple):
        self.load, self.shape = load, tuple(shape)

    def __call__(self) -> mx.array:
        return self.load()


def shape_of(value) -> tuple:
    """The shape of a stored tensor (LazyTensor, Deferred, numpy or mx array), without loading."""
    return tuple(int(n) for n in value.shape)


def concatenated(values: list) -> Deferred:
    """The concatenation along dim 0 of stored tensors (q, k and v into one qkv), deferred."""
    shapes = [shape_of(v) for v in values]
    if any(s[1:] != shapes[0][1:] for s in shapes):
        raise KeyMismatchError(f"cannot concatenate tensors of shapes {', '.join(map(str, shapes))}")
    shape = (sum(s[0] for s in shapes), *shapes[0][1:])
    return Deferred(partial(_concatenate, values), shape)


def _concatenate(values: list) -> mx.array:
    return mx.concatenate([as_mlx(v) for v in values])


def strip_prefixes(weights: dict, prefixes: Iterable[str]) -> dict:
    """Remove wrapper prefixes such as DDP's `module.` and torch.compile's `_orig_mod.`."""
    pattern = re.compile("|".join(re.escape(p) for p in prefixes))
    return {pattern.sub("", key): value for key, value in weights.items()}


def as_mlx(value) -> mx.array:
    """A stored tensor (LazyTensor from a .pt, numpy array, mx.array, or a zero-argument
    callable that produces one) as an mx.array."""
    if callable(value):
        return as_mlx(value())
    if hasattr(value, "to_mlx"):
        return value.to_mlx()
    return value if isinstance(value, mx.array) else mx.array(np.asarray(value))


def _load(value, load: Callable, transform: Callable | None) -> mx.array:
    array = load(value)
    return transform(array) if transform else array


def _target_shape(value, transform: Callable | None) -> tuple:
    shape = shape_of(value)
    return SHAPE_RULES[transform](shape) if transform else shape


def map_keys(weights: dict, rules: list[Rule], ignore: Iterable[str] = (), *,
             load: Callable = as_mlx, lazy: bool = False) -> dict:
    """Rename and transform upstream weights; `load` turns a stored value into an mx.array.
    With `lazy`, each value is a Deferred that loads and transforms it."""
    compiled = [(re.compile(rule.source + r"\Z"), rule) for rule in rules]
    ignored = [re.compile(p + r"\Z") for p in ignore]
    out, unexpected = {}, []
    for key, value in weights.items():
        for pattern, rule in compiled:
            match = pattern.match(key)
            if match:
                thunk = partial(_load, value, load, rule.transform)
                out[match.expand(rule.target)] = \
                    Deferred(thunk, _target_shape(value, rule.transform)) if lazy else thunk()
                break
        else:
            if not any(p.match(key) for p in ignored):
                unexpected.append(key)
    if unexpected:
        raise KeyMismatchError(_listing("The checkpoint has keys this family does not know",
                                        unexpected))
    return out


def check_weights(model: nn.Module, weights: dict[str, mx.array], what: str = "checkpoint") -> None:
    """Raise KeyMismatchError listing missing, unexpected and mis-shaped keys, if any."""
    check_shapes(model, {k: v.shape for k, v in weights.items()}, what)


def check_shapes(model: nn.Module, shapes: dict[str, tuple], what: str = "checkpoint") -> None:
    """check_weights from the weights' shapes alone (the model's parameters stay unevaluated)."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    misshaped = sorted(f"{k}: {tuple(shapes[k])} in the {what}, {tuple(expected[k].shape)} "
                       f"in the model" for k in set(expected) & set(shapes)
                       if tuple(shapes[k]) != tuple(expected[k].shape))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(_listing("missing", missing))
        if unexpected:
            parts.append(_listing("unexpected", unexpected))
        if misshaped:
            parts.append(_listing("wrong shape", misshaped))
        raise KeyMismatchError(f"The {what} does not fit the model: " + "; ".join(parts))


def _listing(title: str, keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}): {shown}{more}"


def load_checked(model: nn.Module, weights: dict[str, mx.array], what: str = "checkpoint") -> None:
    check_weights(model, weights, what)
    model.load_weights(list(weights.items()), strict=True)
