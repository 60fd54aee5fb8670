import mlx.core as mx
import numpy as np
import pytest

from conftest import build, tiny_config
from mlx_imgen.nn import rope_2d_table


def test_kv_cache_decode_matches_full_forward(causal_model):
    cfg = causal_model.config
    tokens = mx.random.randint(0, cfg.vocab_size, (2, cfg.num_tokens), key=mx.random.key(1))
    labels = mx.array([3, cfg.num_classes])
    full = causal_model(tokens[:, :-1], labels)  # (B, 1 + N - 1, V): position i predicts token i
    cache = causal_model.make_cache(2)
    steps = [causal_model(mx.zeros((2, 0), dtype=mx.int32), labels, cache=cache)[:, -1]]
    for i in range(cfg.num_tokens - 1):
        steps.append(causal_model(tokens[:, i:i + 1], cache=cache)[:, -1])
    decoded = mx.stack(steps, axis=1)
    assert full.shape == decoded.shape == (2, cfg.num_tokens, cfg.vocab_size)
    np.testing.assert_allclose(np.array(decoded), np.array(full), atol=1e-4, rtol=0)


def test_kv_cache_prefill_of_several_tokens_then_decode_matches_full_forward(causal_model):
    cfg = causal_model.config
    tokens = mx.random.randint(0, cfg.vocab_size, (1, 8), key=mx.random.key(2))
    labels = mx.array([1])
    full = causal_model(tokens, labels)
    cache = causal_model.make_cache(1)
    first = causal_model(tokens[:, :5], labels, cache=cache)   # prefix + 5 tokens at once
    rest = causal_model(tokens[:, 5:], cache=cache)             # 3 tokens after an offset
    np.testing.assert_allclose(np.array(mx.concatenate([first, rest], axis=1)), np.array(full),
                               atol=1e-4, rtol=0)


def _changed_tail(model, position):
    cfg = model.config
    tokens = mx.random.randint(0, cfg.vocab_size, (1, cfg.num_tokens), key=mx.random.key(3))
    changed = mx.concatenate([tokens[:, :position + 1],
                              (tokens[:, position + 1:] + 1) % cfg.vocab_size], axis=1)
    return tokens, changed


def test_causal_output_ignores_later_tokens(causal_model):
    position = 6
    tokens, changed = _changed_tail(causal_model, position)
    labels = mx.array([2])
    a, b = causal_model(tokens, labels), causal_model(changed, labels)
    # output index position + 1 has seen tokens 0..position (plus the class prefix)
    np.testing.assert_array_equal(np.array(a[:, :position + 2]), np.array(b[:, :position + 2]))
    assert not np.allclose(np.array(a[:, position + 2:]), np.array(b[:, position + 2:]))


def test_bidirectional_output_depends_on_later_tokens(masked_model):
    position = 6
    tokens, changed = _changed_tail(masked_model, position)
    labels = mx.array([2])
    a, b = masked_model(tokens, labels), masked_model(changed, labels)
    assert not np.allclose(np.array(a[:, :position + 1]), np.array(b[:, :position + 1]))


def test_rope_table_holds_zeros_or_identity_at_prefix_positions():
    cos, sin = rope_2d_table(4, 16, prefix_tokens=1, prefix="zeros")
    assert np.all(np.array(cos[0]) == 0) and np.all(np.array(sin[0]) == 0)
    cos, sin = rope_2d_table(4, 16, prefix_tokens=1, prefix="identity")
    assert np.all(np.array(cos[0]) == 1) and np.all(np.array(sin[0]) == 0)
    # grid position (row 1, col 2): first half of the pairs turns with the row, second with the col
    cos_grid = np.array(cos[1 + 1 * 4 + 2])
    assert np.isclose(cos_grid[0], np.cos(1.0)) and np.isclose(cos_grid[4], np.cos(2.0))


def test_bidirectional_output_drops_prefix_and_register_positions(masked_model):
    cfg = masked_model.config
    out = masked_model(mx.zeros((2, cfg.num_tokens), dtype=mx.int32), mx.array([0, 1]))
    assert out.shape == (2, cfg.num_tokens, cfg.vocab_size)


def test_patch_model_returns_latent_shaped_prediction(flow_model):
    x = mx.random.normal((2, 8, 8, 4))
    out = flow_model(x, mx.array([0, 1]), mx.array([10.0, 500.0]))
    assert out.shape == (2, 8, 8, 8)


def test_unpatchify_inverts_patch_layout(flow_model):
    # a head that copies each patch's pixels must reproduce the input latent exactly
    cfg = flow_model.config
    x = mx.random.normal((1, 8, 8, 4))
    patches = x.reshape(1, 4, 2, 4, 2, 4).transpose(0, 1, 3, 2, 4, 5)  # (1, gh, gw, p, p, C)
    padded = mx.concatenate([patches, mx.zeros(patches.shape)], axis=-1)  # 8 output channels
    restored = flow_model.unpatchify(padded.reshape(1, 16, 2 * 2 * 8))
    np.testing.assert_array_equal(np.array(restored[..., :4]), np.array(x))
    assert cfg.patch_size == 2


@pytest.mark.parametrize("bad", [dict(depth=0), dict(width=30, heads=4), dict(grid_size=0)])
def test_config_rejects_impossible_shapes(bad):
    with pytest.raises(ValueError):
        tiny_config(**bad)


def test_attention_inner_width_may_differ_from_model_width():
    # Halton-MaskGIT small: 512 wide, 6 heads of 85, so q/k/v project 512 -> 510
    model = build(tiny_config(width=32, heads=3, head_dim=10, conditioning="adaln",
                              mask_token=True, positions="learned"))
    assert model.blocks[0].attn.qkv.weight.shape == (90, 32)
    out = model(mx.zeros((1, 16), dtype=mx.int32), mx.array([1]))
    assert out.shape == (1, 16, 24)


def test_cross_attention_reads_the_text_sequence():
    model = build(tiny_config(conditioning="adaln", mask_token=True, positions="learned",
                              context_dim=12))
    tokens, labels = mx.zeros((1, 16), dtype=mx.int32), mx.array([1])
    a = model(tokens, labels, context=mx.random.normal((1, 5, 12), key=mx.random.key(1)))
    b = model(tokens, labels, context=mx.random.normal((1, 5, 12), key=mx.random.key(2)))
    assert a.shape == (1, 16, 24) and not np.allclose(np.array(a), np.array(b))
