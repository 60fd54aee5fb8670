"""DepthwiseConv2d's CPU form (k*k shifted multiply-adds in one compiled kernel) must give
mx.conv2d(groups=C)'s result, and keep nn.Conv2d's parameters so checkpoints load unchanged."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_imgen.nn import DepthwiseConv2d, depthwise_conv2d
from mlx_imgen.nn import depthwise as depthwise_module

CHANNELS = 40


def _relative_error(ours: mx.array, expected: mx.array) -> float:
    ours, expected = np.array(ours.astype(mx.float32)), np.array(expected.astype(mx.float32))
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


def _random_conv(kernel: int, bias: bool) -> DepthwiseConv2d:
    conv = DepthwiseConv2d(CHANNELS, kernel, bias=bias)
    # a random bias too (nn.Conv2d starts it at zero, which would hide a wrong bias path)
    conv.update({name: mx.random.normal(value.shape) for name, value in conv.parameters().items()})
    return conv


def test_the_cpu_is_the_device_under_test():
    # the fast form only runs on the CPU: the tests below exercise it
    assert mx.default_device().type == mx.cpu


def test_other_devices_take_the_grouped_conv(monkeypatch):
    # on Metal or CUDA the module is nn.Conv2d's own call (the device is faked: the branch is
    # what is checked, and the grouped conv then still runs on the CPU)
    def no_shifted_sum(*args):
        raise AssertionError("the shifted-sum form ran off the CPU")

    monkeypatch.setattr(depthwise_module, "depthwise_conv2d", no_shifted_sum)
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu))
    conv = _random_conv(3, True)
    x = mx.random.normal((2, 5, 6, CHANNELS))
    np.testing.assert_array_equal(np.array(conv(x)), np.array(nn.Conv2d.__call__(conv, x)))


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("height, width", [(7, 11), (6, 4), (1, 9)])
def test_equals_a_grouped_conv(kernel, bias, height, width):
    mx.random.seed(kernel * 100 + height)
    conv = _random_conv(kernel, bias)
    x = mx.random.normal((2, height, width, CHANNELS))
    expected = mx.conv2d(x, conv.weight, padding=kernel // 2, groups=CHANNELS)
    if bias:
        expected = expected + conv.bias
    out = conv(x)
    assert out.shape == x.shape and out.dtype == mx.float32
    assert _relative_error(out, expected) < 1e-5
    # the function the module calls, on its own
    direct = depthwise_conv2d(x, conv.weight, conv.bias if bias else None)
    assert _relative_error(direct, expected) < 1e-5


def test_a_border_pixel_sees_only_the_map():
    # one nonzero pixel in a corner: the output is the kernel's window around it, clipped
    conv = DepthwiseConv2d(1, 3, bias=False)
    conv.weight = mx.arange(1, 10, dtype=mx.float32).reshape(1, 3, 3, 1)
    x = mx.zeros((1, 4, 5, 1)).at[0, 0, 0, 0].add(1.0)
    out = np.array(conv(x))[0, :, :, 0]
    expected = np.zeros((4, 5))
    # out[y, x] = sum w[i, j] in[y + i - 1, x + j - 1]: the pixel at (0, 0) reaches (y, x) via
    # i = 1 - y, j = 1 - x
    expected[0, 0], expected[0, 1], expected[1, 0], expected[1, 1] = 5, 4, 2, 1
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_half_inputs_keep_their_dtype_and_sum_in_float32(dtype):
    mx.random.seed(1)
    conv = _random_conv(3, True)
    x = mx.random.normal((2, 8, 8, CHANNELS))
    half = {name: value.astype(dtype) for name, value in conv.parameters().items()}
    conv.update(half)
    exact = mx.conv2d(x.astype(dtype).astype(mx.float32), conv.weight.astype(mx.float32),
                      padding=1, groups=CHANNELS) + conv.bias.astype(mx.float32)
    out = conv(x.astype(dtype))
    assert out.dtype == dtype
    # one rounding to the half dtype at the end: within its epsilon of the float32 sum
    assert _relative_error(out, exact) < {mx.bfloat16: 8e-3, mx.float16: 1e-3}[dtype]


@pytest.mark.parametrize("bias", [True, False])
def test_parameters_are_a_grouped_conv2ds(bias):
    ours = DepthwiseConv2d(12, 5, bias=bias)
    theirs = nn.Conv2d(12, 12, 5, padding=2, groups=12, bias=bias)
    shapes = lambda module: [(k, v.shape, v.dtype) for k, v in tree_flatten(module.parameters())]
    assert shapes(ours) == shapes(theirs)
    assert ours.weight.shape == (12, 5, 5, 1)
    # a grouped conv's weights load into it strictly, and give that conv's output
    ours.load_weights(list(tree_flatten(theirs.parameters())), strict=True)
    x = mx.random.normal((2, 6, 3, 12))
    assert _relative_error(ours(x), theirs(x)) < 1e-5


def test_an_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd, not 4"):
        DepthwiseConv2d(8, 4)
