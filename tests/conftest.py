import mlx.core as mx
import pytest

from mlx_imgen.backbone import BackboneConfig, Transformer


def tiny_config(**overrides) -> BackboneConfig:
    values = dict(depth=2, width=32, heads=4, grid_size=4, vocab_size=24, num_classes=10,
                  mlp="swiglu", mlp_hidden=64, norm="rms", qkv_bias=False, out_bias=False)
    values.update(overrides)
    return BackboneConfig(**values)


def build(cfg: BackboneConfig, seed: int = 0) -> Transformer:
    mx.random.seed(seed)
    model = Transformer(cfg)
    # zero-initialised layers (registers, adaLN) would hide bugs: give every weight a value
    from mlx.utils import tree_flatten, tree_unflatten
    params = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    model.update(tree_unflatten([(k, mx.random.normal(v.shape, key=kk) * 0.2)
                                 for (k, v), kk in zip(params, keys)]))
    mx.eval(model.parameters())
    return model


def randomize_autoencoder(model, seed: int = 0, fan_in_ndims: tuple[int, ...] = (4,)):
    """Every parameter drawn at random: weights of the given ranks scaled by fan-in (activations
    of order 1 through many layers), codebooks unit normal, norm scales near 1, the rest small."""
    from mlx.utils import tree_flatten, tree_unflatten
    params = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    drawn = []
    for (name, value), key in zip(params, keys):
        noise = mx.random.normal(value.shape, key=key)
        if value.ndim in fan_in_ndims:
            value = noise * (value[0].size ** -0.5)
        elif "embedding" in name:
            value = noise
        elif "norm" in name and name.endswith("weight"):
            value = 1 + 0.2 * noise
        else:
            value = 0.1 * noise
        drawn.append((name, value))
    model.update(tree_unflatten(drawn))
    mx.eval(model.parameters())
    return model


@pytest.fixture
def causal_model():
    return build(tiny_config(causal=True, positions="rope2d", rope_prefix="zeros"))


@pytest.fixture
def masked_model():
    return build(tiny_config(conditioning="adaln", positions="learned", mask_token=True,
                             head_bias=True, registers=1, qk_norm="rms", qk_norm_per_head=False))


@pytest.fixture
def flow_model():
    return build(tiny_config(input="patches", conditioning="adaln", timestep=True,
                             positions="sincos2d", in_channels=4, patch_size=2, out_channels=8,
                             mlp="gelu_tanh", norm="layer", norm_affine=False,
                             final_norm_affine=False, head_bias=True))


@pytest.fixture(autouse=True, scope="session")
def _autoencoder_store(tmp_path_factory):
    """Conversions store autoencoders in a test cache, never in the user's."""
    import os
    os.environ["MLX_IMGEN_CACHE"] = str(tmp_path_factory.mktemp("mlx-imgen-cache"))


def assert_refused(result, phrase: str) -> None:
    """A CLI run refused as the project refuses bad input: exit 2, no traceback, one `error:`
    sentence that names `phrase`."""
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and message.startswith("error:")
    assert phrase in message
