"""The one attention layer: self or cross, fused or split q/k/v, optional qk-norm, RoPE, KV cache;
softmax attention, or Sana's ReLU linear attention."""

import mlx.core as mx
import mlx.nn as nn

from .activations import softmax_fused, use_fast_cpu_softmax
from .norms import make_norm
from .positions import Rope1D, apply_rope


class KVCache:
    """Preallocated keys and values of one layer, filled left to right during decoding."""

    def __init__(self, batch: int, heads: int, head_dim: int, max_length: int,
                 dtype: mx.Dtype = mx.float32):
        self.keys = mx.zeros((batch, heads, max_length, head_dim), dtype=dtype)
        self.values = mx.zeros((batch, heads, max_length, head_dim), dtype=dtype)
        self.offset = 0

    @property
    def max_length(self) -> int:
        return self.keys.shape[2]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        end = self.offset + keys.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; cannot write up to {end}")
        self.keys[:, :, self.offset:end] = keys
        self.values[:, :, self.offset:end] = values
        self.offset = end
        return self.keys[:, :, :end], self.values[:, :, :end]


KERNELS = ("softmax", "relu_linear")


def relu_linear_attention(q: mx.array, k: mx.array, v: mx.array,
                          eps: float = 1e-15) -> mx.array:
    """Sana's linear attention on (B, heads, N, head_dim) q, k, v: with the ReLU feature map
    phi, each query gets phi(q) (phi(K)^T V) / (phi(q) . sum_j phi(k_j) + eps). Keys and
    values meet first, in a head_dim x head_dim matrix, so the cost is linear in N. Computed in
    float32 whatever the inputs (half-precision sums over N overflow and lose digits); the
    result comes back in v's dtype."""
    dtype = v.dtype
    q = mx.maximum(q, 0).astype(mx.float32)
    k = mx.maximum(k, 0).astype(mx.float32)
    kv = k.swapaxes(-1, -2) @ v.astype(mx.float32)
    normaliser = q @ k.sum(axis=2, keepdims=True).swapaxes(-1, -2)
    return ((q @ kv) / (normaliser + eps)).astype(dtype)


def attention_cpu(q: mx.array, k: mx.array, v: mx.array, scale: float,
                  mask: mx.array | str | None = None) -> mx.array:
    """`mx.fast.scaled_dot_product_attention` as two matmuls around a fused softmax: MLX's CPU
    kernel for it runs a scalar exp; this one vectorises (see activations)."""
    scores = (q * scale) @ k.swapaxes(-1, -2)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask {mask!r}; use 'causal' or an array")
        queries, keys = scores.shape[-2:]
        mask = mx.arange(keys)[None] <= mx.arange(keys - queries, keys)[:, None]
    if mask is not None and mask.dtype == mx.bool_:
        scores = mx.where(mask, scores, mx.array(-mx.inf, scores.dtype))
    elif mask is not None:
        scores = scores + mask.astype(scores.dtype)
    return softmax_fused(scores).astype(v.dtype) @ v


class Attention(nn.Module):
    """Multi-head attention through `mx.fast.scaled_dot_product_attention`.

    `kv_dims` makes it a cross-attention over a context sequence of that width; cross-attention
    always projects q, k and v separately. `head_dim` defaults to dims // heads; the inner width
    heads * head_dim may differ from dims. qk-norm acts on each head, or on the whole projection
    before the head split when `qk_norm_per_head` is False (then it has no learned scale).

    `kernel="relu_linear"` swaps the softmax for Sana's ReLU linear attention (no mask, RoPE
    or cache; `scale` unused). It is an option of this class, not a class of its own, because
    only the step between the head split and the output projection differs: projections,
    qk-norm, head layout and the checkpoints' key maps stay the same.
    """

    def __init__(self, dims: int, heads: int, *, head_dim: int | None = None,
                 kv_dims: int | None = None, fused_qkv: bool = True, qkv_bias: bool = False,
                 out_bias: bool = False, qk_norm: str | None = None, qk_norm_eps: float = 1e-6,
                 qk_norm_per_head: bool = True, kernel: str = "softmax"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown attention kernel {kernel!r}; "
                             f"use one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self.heads = heads
        self.head_dim = head_dim or dims // heads
        inner = heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.fused = fused_qkv and kv_dims is None
        if self.fused:
            self.qkv = nn.Linear(dims, 3 * inner, bias=qkv_bias)
        else:
            self.q = nn.Linear(dims, inner, bias=qkv_bias)
            self.k = nn.Linear(kv_dims or dims, inner, bias=qkv_bias)
            self.v = nn.Linear(kv_dims or dims, inner, bias=qkv_bias)
        self.out = nn.Linear(inner, dims, bias=out_bias)
        self.qk_norm_per_head = qk_norm_per_head
        if qk_norm:
            norm_dims = self.head_dim if qk_norm_per_head else inner
            self.q_norm = make_norm(qk_norm, norm_dims, qk_norm_eps, affine=qk_norm_per_head)
            self.k_norm = make_norm(qk_norm, norm_dims, qk_norm_eps, affine=qk_norm_per_head)

    def _heads(self, x: mx.array) -> mx.array:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def __call__(self, x: mx.array, *, context: mx.array | None = None,
                 mask: mx.array | str | None = None,
                 rope: tuple[mx.array, mx.array] | Rope1D | None = None,
                 cache: KVCache | None = None) -> mx.array:
        if self.fused:
            q, k, v = mx.split(self.qkv(x), 3, axis=-1)
        else:
            source = x if context is None else context
            q, k, v = self.q(x), self.k(source), self.v(source)
        has_qk_norm = "q_norm" in self
        if has_qk_norm and not self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if has_qk_norm and self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        if isinstance(rope, Rope1D):
            q, k = rope(q), rope(k)
        elif rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.kernel == "relu_linear":
            return self._relu_linear(q, k, v, mask=mask, rope=rope, cache=cache)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        # One-token decode steps keep sdpa: their score rows are tiny, and a compiled softmax
        # would retrace for every new key length.
        if q.shape[2] > 1 and use_fast_cpu_softmax():
            out = attention_cpu(q, k, v, self.scale, mask)
        else:
            out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        batch, _, length, _ = out.shape
        return self.out(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))

    def _relu_linear(self, q: mx.array, k: mx.array, v: mx.array, *,
                     mask, rope, cache) -> mx.array:
        if mask is not None or rope is not None or cache is not None:
            raise ValueError("relu_linear attention takes no mask, RoPE or KV cache; "
                             "use kernel='softmax' for those")
        out = relu_linear_attention(q, k, v)
        batch, _, length, _ = out.shape
        out = self.out(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))
        # a float16 projection of float32-accurate sums can pass float16's largest finite value
        return mx.clip(out, -65504, 65504) if out.dtype == mx.float16 else out
