"""Declarative key maps from upstream checkpoints to mlx-imgen modules, and strict shape checks.

A map is a list of `Rule(source regex or regexes, target template, transform)`; each upstream
key must match exactly one rule or an `ignore` pattern. Transforms run once, at conversion time. A lazy map
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
    """Upstream key(s) -> one target key. `source` is one regex, or a tuple of regexes with the
    same groups whose tensors `transform` combines, in that order (diffusers' to_q, to_k and
    to_v into one qkv); the target template is expanded with the groups."""
    source: str | tuple[str, ...]
    target: str
    transform: Callable | None = None

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)


@dataclass(frozen=True)
class Copy:
    """Keys that repeat another key's tensor (diffusers copies DiT's embedders into every
    block): each must equal its `original` (a template of its groups) and is then dropped;
    otherwise `message` (expanded with the groups) is raised."""
    source: str
    original: str
    message: str


@dataclass(frozen=True)
class KeyMap:
    """One checkpoint layout's map: rules, keys ignored (rebuilt at run time), copies."""
    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()
    copies: tuple[Copy, ...] = ()

    def apply(self, weights: dict, *, lazy: bool = False, load: Callable | None = None) -> dict:
        weights = drop_copies(weights, self.copies)
        return map_keys(weights, self.rules, self.ignore, load=load or as_mlx, lazy=lazy)


def conv_weight(w: mx.array) -> mx.array:
    """PyTorch conv weights (O, I, kH, kW) to MLX layout (O, kH, kW, I)."""
    return w.transpose(0, 2, 3, 1) if w.ndim == 4 else w


def _conv_weight_shape(shape: tuple) -> tuple:
    return (shape[0], shape[2], shape[3], shape[1]) if len(shape) == 4 else shape


def conv_transpose_weight(w: mx.array) -> mx.array:
    """PyTorch transposed-conv weights (I, O, kH, kW) to MLX's ConvTranspose2d layout
    (O, kH, kW, I)."""
    return w.transpose(1, 2, 3, 0)


def pointwise_conv_as_linear(w: mx.array) -> mx.array:
    """A 1x1 conv weight, in either layout, as the Linear weight (O, I) it is over channels."""
    return w.reshape(w.shape[0], -1)


def concatenate_rows(arrays: list) -> mx.array:
    """Several tensors stacked along dim 0 (q, k and v into one qkv)."""
    return mx.concatenate(arrays)


def _concatenated_shape(shapes: list[tuple]) -> tuple:
    if any(s[1:] != shapes[0][1:] for s in shapes):
        raise KeyMismatchError(f"cannot concatenate tensors of shapes {', '.join(map(str, shapes))}")
    return (sum(s[0] for s in shapes), *shapes[0][1:])


# the shape each transform gives (from the list of source shapes for a multi-source rule), so
# target shapes are known before any tensor is read; a transform missing here is a bug the
# key-and-shape pass reports at once
SHAPE_RULES: dict[Callable, Callable] = {
    conv_weight: _conv_weight_shape,
    conv_transpose_weight: lambda shape: (shape[1], shape[2], shape[3], shape[0]),
    pointwise_conv_as_linear: lambda shape: (shape[0], math.prod(shape[1:])),
    concatenate_rows: _concatenated_shape,
}

# wrappers that training code puts around a model: DDP's and torch.compile's
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class Deferred:
    """A tensor not loaded yet: calling it loads it; `shape` is known without loading."""

    def __init__(self, load: Callable[[], mx.array], shape: tuple):
        self.load, self.shape = load, tuple(shape)

    def __call__(self) -> mx.array:
        return self.load()


def shape_of(value) -> tuple:
    """The shape of a stored tensor (LazyTensor, Deferred, numpy or mx array), without loading."""
    return tuple(int(n) for n in value.shape)


def strip_prefixes(weights: dict, prefixes: Iterable[str] = WRAPPER_PREFIXES) -> dict:
    """Remove wrapper prefixes such as DDP's `module.` and torch.compile's `_orig_mod.`."""
    pattern = re.compile("|".join(re.escape(p) for p in prefixes))
    return {pattern.sub("", key): value for key, value in weights.items()}


def count_blocks(keys: Iterable[str], pattern: str) -> int:
    """The depth of a stack: 1 + the largest block index that `pattern`'s first group captures."""
    return 1 + max(int(m.group(1)) for k in keys if (m := re.match(pattern, k)))


def as_mlx(value) -> mx.array:
    """A stored tensor (LazyTensor from a .pt, numpy array, mx.array, or a zero-argument
    callable that produces one) as an mx.array."""
    if callable(value):
        return as_mlx(value())
    if hasattr(value, "to_mlx"):
        return value.to_mlx()
    return value if isinstance(value, mx.array) else mx.array(np.asarray(value))


def drop_copies(weights: dict, copies: Iterable[Copy]) -> dict:
    """`weights` without the keys of `copies`, each checked equal to its original first."""
    compiled = [(re.compile(c.source + r"\Z"), c) for c in copies]
    if not compiled:
        return weights
    out = {}
    for key, value in weights.items():
        for pattern, copy in compiled:
            match = pattern.match(key)
            if match:
                original = weights.get(match.expand(copy.original))
                if original is None or not mx.array_equal(as_mlx(value), as_mlx(original)):
                    raise ValueError(match.expand(copy.message))
                break
        else:
            out[key] = value
    return out


def _load(values: list, load: Callable, transform: Callable | None, fused: bool) -> mx.array:
    arrays = [load(v) for v in values]
    if fused:
        return transform(arrays)
    return transform(arrays[0]) if transform else arrays[0]


def _target_shape(values: list, transform: Callable | None, fused: bool) -> tuple:
    shapes = [shape_of(v) for v in values]
    if fused:
        return SHAPE_RULES[transform](shapes)
    return SHAPE_RULES[transform](shapes[0]) if transform else shapes[0]


def _key_from_pattern(pattern: str, groups: tuple) -> str:
    """The key a source regex names for these group values (for a missing-key message)."""
    values = iter(groups)
    key = re.sub(r"\((?:[^()]|\([^()]*\))*\)", lambda _: next(values, "?"), pattern)
    return re.sub(r"\\(.)", r"\1", key)


def map_keys(weights: dict, rules: Iterable[Rule], ignore: Iterable[str] = (), *,
             load: Callable = as_mlx, lazy: bool = False) -> dict:
    """Rename and transform upstream weights; `load` turns a stored value into an mx.array.
    With `lazy`, each value is a Deferred that loads and transforms it. Every key must match a
    rule or an `ignore` pattern; a multi-source rule needs all of its sources."""
    compiled = [([re.compile(s + r"\Z") for s in rule.sources], rule) for rule in rules]
    ignored = [re.compile(p + r"\Z") for p in ignore]
    found: dict[str, tuple] = {}  # target key -> (rule, groups, [source value or None])
    unexpected = []
    for key, value in weights.items():
        for patterns, rule in compiled:
            slot, match = next(((i, m) for i, p in enumerate(patterns) if (m := p.match(key))),
                               (None, None))
            if match is not None:
                target = match.expand(rule.target)
                entry = found.setdefault(target, (rule, match.groups(), [None] * len(patterns)))
                entry[2][slot] = value
                break
        else:
            if not any(p.match(key) for p in ignored):
                unexpected.append(key)
    if unexpected:
        raise KeyMismatchError(_listing("The checkpoint has keys this family does not know",
                                        unexpected))
    out = {}
    for target, (rule, groups, values) in found.items():
        missing = [_key_from_pattern(s, groups) for s, v in zip(rule.sources, values) if v is None]
        if missing:
            raise KeyMismatchError(f"The checkpoint lacks {', '.join(missing)}, which {target} "
                                   "is made from; pass a complete checkpoint")
        fused = len(values) > 1
        thunk = partial(_load, values, load, rule.transform, fused)
        out[target] = Deferred(thunk, _target_shape(values, rule.transform, fused)) \
            if lazy else thunk()
    return out


def check_weights(model: nn.Module, weights: dict[str, mx.array], what: str = "checkpoint") -> None:
    """Raise KeyMismatchError listing missing, unexpected and mis-shaped keys, if any."""
    check_shapes(model, {k: v.shape for k, v in weights.items()}, what)


def check_shapes(model: nn.Module, shapes: dict[str, tuple], what: str = "checkpoint") -> None:
    """check_weights from the weights' shapes alone (the model's parameters stay unevaluated)."""
    expected = {k: v.shape for k, v in tree_flatten(model.parameters())}
    check_names(expected, shapes, what, "model")


def check_names(expected: dict[str, tuple], shapes: dict[str, tuple], source: str,
                target: str) -> None:
    """Raise KeyMismatchError listing the names the `source` lacks, those the `target` lacks and
    those whose shapes differ, given each side's name -> shape."""
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    misshaped = sorted(f"{k}: {tuple(shapes[k])} in the {source}, {tuple(expected[k])} in the "
                       f"{target}" for k in set(expected) & set(shapes)
                       if tuple(shapes[k]) != tuple(expected[k]))
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(_listing("missing", missing))
        if unexpected:
            parts.append(_listing("unexpected", unexpected))
        if misshaped:
            parts.append(_listing("wrong shape", misshaped))
        raise KeyMismatchError(f"The {source} does not fit the {target}: " + "; ".join(parts))


def _listing(title: str, keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{title} ({len(keys)}): {shown}{more}"


def load_checked(model: nn.Module, weights: dict[str, mx.array], what: str = "checkpoint") -> None:
    check_weights(model, weights, what)
    model.load_weights(list(weights.items()), strict=True)
