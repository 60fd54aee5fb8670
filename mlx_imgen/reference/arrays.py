"""The sampling loops' array namespace (`paradigms.arrays.OPERATIONS`) on torch tensors, with
mlx.core's names and signatures, on one device: the loops run unchanged in torch."""

import math

import numpy as np

from . import require_torch

torch = require_torch()


class TorchArrays:
    ids = torch.long
    float32 = torch.float32
    inf = math.inf

    def __init__(self, device):
        self.device = device

    def concatenate(self, arrays, axis=0):
        return torch.cat(list(arrays), dim=axis)

    def split(self, x, parts: int, axis=0):
        return x.chunk(parts, dim=axis)

    def full(self, shape, value, dtype=None):
        return torch.full(tuple(shape), value, dtype=dtype, device=self.device)

    def zeros(self, shape, dtype=None):
        return torch.zeros(tuple(shape), dtype=dtype, device=self.device)

    def arange(self, n: int):
        return torch.arange(n, device=self.device)

    def asarray(self, values):
        tensor = torch.as_tensor(np.asarray(values), device=self.device)
        return tensor.long() if not tensor.is_floating_point() else tensor

    def sort(self, x, axis=-1):
        return torch.sort(x, dim=axis).values

    def argsort(self, x, axis=-1):
        return torch.argsort(x, dim=axis, stable=True)

    def topk(self, x, k: int, axis=-1):
        return torch.topk(x, k, dim=axis).values

    def min(self, x, axis=None, keepdims=False):
        return torch.amin(x, dim=axis, keepdim=keepdims)

    def take(self, x, indices):
        return x.reshape(-1)[indices]

    def take_along_axis(self, x, indices, axis):
        return torch.gather(x, axis, indices)

    def put_along_axis(self, x, indices, values, axis):
        return x.scatter(axis, indices, values)

    def argmax(self, x, axis=None):
        return torch.argmax(x, dim=axis)

    def softmax(self, x, axis=-1):
        return torch.softmax(x, dim=axis)

    def log_softmax(self, x, axis=-1):
        return torch.log_softmax(x, dim=axis)

    def logsumexp(self, x, axis=-1, keepdims=False):
        return torch.logsumexp(x, dim=axis, keepdim=keepdims)

    def cumsum(self, x, axis):
        return torch.cumsum(x, dim=axis)

    def mean(self, x, axis=None):
        return torch.mean(x) if axis is None else torch.mean(x, dim=axis)

    @staticmethod
    def astype(x, dtype):
        return x.to(dtype)

    @staticmethod
    def eval(*arrays):
        """Nothing to do: torch runs eagerly, and the profiler synchronises the device."""

    async_eval = eval
    where = staticmethod(torch.where)
    zeros_like = staticmethod(torch.zeros_like)
    abs = staticmethod(torch.abs)
    maximum = staticmethod(torch.maximum)
    sqrt = staticmethod(torch.sqrt)
    square = staticmethod(torch.square)
