"""The array operations the sampling loops call, under mlx.core's names and signatures.

Every loop body takes such a namespace `xp`: `MLX` here, or the PyTorch reference's
`TorchArrays`, which implements the same OPERATIONS on torch tensors. One loop body thus
serves both frameworks, and the reference times the same algorithm in torch.
"""

import math

import mlx.core as mx

OPERATIONS = (
    "concatenate", "split", "full", "zeros", "zeros_like", "arange", "asarray", "astype",
    "argmax", "argsort", "sort", "topk", "min", "take", "take_along_axis", "put_along_axis",
    "where", "softmax", "log_softmax", "logsumexp", "cumsum", "abs", "maximum", "sqrt", "mean",
    "square",
    "eval", "async_eval",
)


class MLXArrays:
    """mlx.core as a loop namespace: `ids` is the token id dtype; `astype` and `log_softmax`,
    which mlx.core spells otherwise, are functions here."""

    ids = mx.int32
    float32 = mx.float32
    inf = math.inf

    def __init__(self):
        for name in OPERATIONS:
            if hasattr(mx, name):
                setattr(self, name, getattr(mx, name))
        self.asarray = mx.array

    @staticmethod
    def astype(x: mx.array, dtype) -> mx.array:
        return x.astype(dtype)

    @staticmethod
    def log_softmax(x: mx.array, axis: int = -1) -> mx.array:
        return x - mx.logsumexp(x, axis=axis, keepdims=True)


MLX = MLXArrays()


def rms(x, xp=MLX) -> float:
    """Root mean square of all elements, in float32."""
    return float(xp.sqrt(xp.mean(xp.square(xp.astype(x, xp.float32)))))
