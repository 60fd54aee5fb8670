"""A depthwise k x k convolution that runs fast on MLX's CPU backend.

MLX's CPU conv runs groups=C slowly. The same result is the sum of k*k shifted views of the
zero-padded map, each times its tap's per-channel weights: one compiled kernel reads the views
and writes the output once. On a 2-core EPYC (float32, batch 2; ms, median; torch's depthwise
conv2d on 2 threads in brackets): Sana-0.6B's Mix-FFN map 16 x 16 x 5760 took 74.9 -> 16.1
(39.7), Sana-1.6B's 32 x 32 x 11200 633 -> 220 (209), aMUSEd's ConvNeXt 32 x 32 x 768 37.7 ->
8.6 (32.0); a whole Sana-0.6B transformer pass at 512 px went from 9.15 to 7.90 s
(benchmarks/cpu_kernels.py --depthwise). At 11200 channels much of the rest is page faults:
glibc maps the 100 MB padded copy and output afresh each call (with MALLOC_MMAP_THRESHOLD_
raised, 219 -> 126 ms).

Measured alternatives that lost: the map flattened to (pixels, C) with contiguous shifted
slices (2x slower), column-shifted copies of the map (1.7x), the channels in blocks of 1024
(1.3x), half the channels on a second CPU stream (1.8x), the centre tap on the unpadded map
(1.1x). Compiled per shape: shapeless compilation cannot trace the pad, and a model sees few
maps. Metal and CUDA keep mx.conv2d with groups, which is fast there.
"""

import mlx.core as mx
import mlx.nn as nn


@mx.compile
def _shifted_sum(padded: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """`padded` (B, H + k - 1, W + k - 1, C), `weight` (C, k, k, 1) -> (B, H, W, C).

    Accumulates in float32 whatever the input dtype: half inputs come out with half the
    grouped conv's error, and 3-7x faster than it (summed in their own dtype they were no
    faster than the grouped conv: the casts per term cost more than they saved)."""
    k = weight.shape[1]
    height, width = padded.shape[1] - k + 1, padded.shape[2] - k + 1
    taps = weight.astype(mx.float32)
    out = mx.zeros((), mx.float32) if bias is None else bias.astype(mx.float32)
    for i in range(k):
        for j in range(k):
            out = out + padded[:, i:i + height, j:j + width].astype(mx.float32) * taps[:, i, j, 0]
    return out.astype(padded.dtype)


def depthwise_conv2d(x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array:
    """A stride-1, "same"-padded depthwise conv of NHWC `x` with nn.Conv2d(groups=C)'s `weight`
    (C, k, k, 1) and optional `bias` (C,), as k*k shifted multiply-adds (the CPU's fast form)."""
    pad = weight.shape[1] // 2
    padded = mx.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    return _shifted_sum(padded, weight, bias)


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels):
    the same parameters and keys (weight (C, k, k, 1), bias (C,)), so checkpoints load as they
    did; on the CPU it computes through `depthwise_conv2d`."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        if kernel_size % 2 == 0:
            raise ValueError(f"a depthwise conv keeps the map's size, so its kernel is odd, "
                             f"not {kernel_size}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2,
                         groups=channels, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        if mx.default_device().type != mx.cpu:
            return super().__call__(x)
        return depthwise_conv2d(x, self.weight, self.bias if "bias" in self else None)
