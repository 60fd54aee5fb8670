"""nn.GroupNorm against torch's GroupNorm in float64: channels-last input, affine and not, and a
large group (a 512 px feature map's) whose values sit away from zero, where one running float32
sum (mlx.nn.GroupNorm's on the CPU) loses digits."""

import mlx.core as mx
import mlx.nn
import numpy as np
import pytest
import torch

from mlx_imgen.nn import GroupNorm


def torch_group_norm(x: np.ndarray, groups: int, weight=None, bias=None, eps=1e-6) -> np.ndarray:
    nchw = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
    w = None if weight is None else torch.from_numpy(weight.astype(np.float64))
    b = None if bias is None else torch.from_numpy(bias.astype(np.float64))
    return torch.nn.functional.group_norm(nchw, groups, w, b, eps).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("shape, groups", [((2, 5, 7, 12), 3), ((1, 4, 4, 8), 8),
                                           ((3, 6, 6, 4), 1)])
def test_small_maps_match_torch(shape, groups):
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, shape).astype(np.float32)
    norm = GroupNorm(groups, shape[-1], eps=1e-6)
    norm.weight = mx.array(rng.normal(1, 0.2, shape[-1]).astype(np.float32))
    norm.bias = mx.array(rng.normal(0, 0.2, shape[-1]).astype(np.float32))
    ours = np.array(norm(mx.array(x)))
    theirs = torch_group_norm(x, groups, np.array(norm.weight), np.array(norm.bias))
    assert np.abs(ours - theirs).max() < 1e-5
    plain = np.array(GroupNorm(groups, shape[-1], eps=1e-6, affine=False)(mx.array(x)))
    assert np.abs(plain - torch_group_norm(x, groups)).max() < 1e-5


def test_a_large_group_keeps_float32_accuracy():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 1.0, (1, 512, 512, 8)).astype(np.float32)  # two groups of 1M values
    theirs = torch_group_norm(x, 2)
    ours = np.array(GroupNorm(2, 8, eps=1e-6, affine=False)(mx.array(x)))
    # mlx.nn.GroupNorm was 1.2e-3 off here with MLX 0.32's CPU backend
    assert np.abs(ours - theirs).max() < 2e-5


def test_the_weights_load_under_mlx_groupnorms_keys():
    assert set(dict(GroupNorm(2, 8).parameters())) == \
        set(dict(mlx.nn.GroupNorm(2, 8, pytorch_compatible=True).parameters()))
