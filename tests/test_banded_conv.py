"""BandedConv2d runs a large map in bands of rows on the CPU and must give nn.Conv2d's result."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_imgen.nn import BandedConv2d, conv as conv_module


@pytest.mark.parametrize("kernel, bias, height", [(3, True, 13), (3, False, 8), (5, True, 11),
                                                  (1, True, 7)])
def test_bands_give_the_whole_maps_result(monkeypatch, kernel, bias, height):
    mx.random.seed(0)
    banded = BandedConv2d(6, 5, kernel, bias=bias)
    plain = nn.Conv2d(6, 5, kernel, padding=kernel // 2, bias=bias)
    plain.update(banded.parameters())
    x = mx.random.normal((2, height, 9, 6))
    # a band budget of about three rows, so the map is cut into several bands (one ragged)
    row_bytes = 2 * 9 * kernel * kernel * 6 * 4
    monkeypatch.setattr(conv_module, "BAND_BYTES", 3 * row_bytes)
    assert banded._band_rows(x) == 3
    np.testing.assert_allclose(np.array(banded(x)), np.array(plain(x)), rtol=1e-5, atol=1e-5)


def test_an_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd"):
        BandedConv2d(4, 4, 2)
