"""A 2-D convolution that, on the CPU, runs large maps in bands of rows.

MLX's CPU convolution unfolds the whole input (every k x k window, C channels each) before one
matrix product: for a 3x3 conv over a 1024 x 1024 x 128 map that is 4.8 GB in float32, more
than the rest of a decode. Evaluated band by band, the unfolded windows of one band at a time
exist, and the product runs on cache-sized pieces: on a 2-core EPYC, 1024^2 x 128 went from
10.9 s / 5.9 GB to 5.5 s / 1.4 GB. Only the decoders' stride-1 convs use it; their forward pass
is never traced for gradients, so evaluating inside it is safe.
"""

import mlx.core as mx
import mlx.nn as nn

# the unfolded input a band may hold
BAND_BYTES = 128 * 1024 ** 2


class BandedConv2d(nn.Conv2d):
    """`nn.Conv2d` (same parameters, same results) with stride 1 and "same" padding, evaluated
    in bands of output rows where the unfolded input would pass BAND_BYTES on the CPU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 bias: bool = True):
        if kernel_size % 2 == 0:
            raise ValueError(f"a banded conv keeps the map's size, so its kernel is odd, not "
                             f"{kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         bias=bias)

    def _band_rows(self, x: mx.array) -> int:
        batch, height, width, channels = x.shape
        k = self.weight.shape[1]
        row_bytes = batch * width * k * k * channels * x.dtype.size
        return max(1, BAND_BYTES // max(row_bytes, 1))

    def __call__(self, x: mx.array) -> mx.array:
        rows = self._band_rows(x)
        if rows >= x.shape[1] or mx.default_device().type != mx.cpu:
            return super().__call__(x)
        k = self.weight.shape[1]
        pad = k // 2
        padded = mx.pad(x, [(0, 0), (pad, pad), (0, 0), (0, 0)])
        bands = []
        for start in range(0, x.shape[1], rows):
            stop = min(x.shape[1], start + rows)
            band = mx.conv2d(padded[:, start:stop + 2 * pad], self.weight, padding=(0, pad))
            if "bias" in self:
                band = band + self.bias
            mx.eval(band)  # frees this band's unfolded windows before the next is made
            bands.append(band)
        return mx.concatenate(bands, axis=1)
