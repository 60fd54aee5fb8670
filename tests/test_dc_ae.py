"""Sana's DC-AE decoder (dc-ae) against diffusers' own AutoencoderDC, built by diffusers from a
tiny random config in the published layout."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch

from dc_ae_files import TINY_DC_AE, save_vae, tiny_dc_ae
from mlx_imgen.autoencoders import AUTOENCODERS
from mlx_imgen.autoencoders.dc_ae import DCAEConfig
from mlx_imgen.weights.readers import read_state_dict

KIND = AUTOENCODERS["dc-ae"]
STRIDE = 8  # the tiny decoder's 4 stages


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(diffusers' model, its vae folder, ours converted from that folder)."""
    reference = tiny_dc_ae(seed=3)
    folder = save_vae(reference, tmp_path_factory.mktemp("sana"))
    return reference, folder, convert(folder)


def read(folder):
    return (json.loads((folder / "config.json").read_text()),
            read_state_dict(folder / "diffusion_pytorch_model.safetensors"))


def convert(folder, config=None):
    stored, state = read(folder)
    model = KIND.model(KIND.infer_config(state, config=config or stored))
    model.load_weights(list(KIND.weights_from_upstream(state).items()), strict=True)
    return model


def diffusers_decode(reference, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = reference.decode(torch.tensor(z.transpose(0, 3, 1, 2))).sample
    return out.numpy().transpose(0, 2, 3, 1)


def relative_error(ours, expected) -> float:
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


def latents(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# 3x5: linear attention in diffusers too; 1x2: at most head_dim pixels in the EfficientViT
# stages, where diffusers takes the quadratic form of the same sum
@pytest.mark.parametrize("grid", [(3, 5), (1, 2)])
def test_decode_matches_diffusers(converted, grid):
    reference, _, model = converted
    z = latents((2, *grid, TINY_DC_AE["latent_channels"]))
    expected = diffusers_decode(reference, z)
    ours = np.array(model.decode(mx.array(z)))
    assert ours.shape == expected.shape == (2, STRIDE * grid[0], STRIDE * grid[1], 3)
    assert relative_error(ours, expected) < 1e-4


def test_decode_latents_divides_by_the_scaling_factor_as_sanas_pipeline(converted):
    reference, _, model = converted
    scale = model.config.scaling_factor
    assert scale == TINY_DC_AE["scaling_factor"] != 1
    sampled = latents((3, 2, 3, 4), seed=1)  # what the sampler returns: z * scaling_factor
    expected = diffusers_decode(reference, sampled / scale)
    whole = np.array(model.decode_latents(mx.array(sampled)))
    one_by_one = np.array(model.decode_latents(mx.array(sampled), batch_size=1))
    assert relative_error(whole, expected) < 1e-4
    np.testing.assert_allclose(one_by_one, whole, rtol=0, atol=1e-5)


def test_encoder_keys_are_dropped_and_the_config_round_trips(converted):
    _, folder, model = converted
    _, state = read(folder)
    assert any(k.startswith("encoder.") for k in state)
    assert not any(k.startswith("encoder.") for k in KIND.weights_from_upstream(state))
    assert DCAEConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    assert model.config.downsample == STRIDE


def test_default_config_is_sanas_f32c32_decoder():
    cfg = KIND.config()
    assert (cfg.downsample, cfg.latent_channels, cfg.scaling_factor) == (32, 32, 0.41407)
    assert cfg.decoder_qkv_multiscales == ((), (), (), (5,), (5,), (5,))


@pytest.mark.parametrize("change, words", [
    (dict(decoder_layers_per_block=[1, 2, 1, 1]), "does not fit its weights"),
    (dict(decoder_block_out_channels=[8, 16, 16, 32]), "does not fit its weights"),
    (dict(attention_head_dim=16), "does not fit its weights"),
    (dict(upsample_block_type="pixel_shuffle"), "only interpolate"),
    (dict(decoder_norm_types="batch_norm"), "only rms_norm"),
    (dict(decoder_block_types=["ResBlock"] * 3), "3 entries for 4 stages"),
    # absent, diffusers' default applies: pixel_shuffle
    (dict(upsample_block_type=None), "is pixel_shuffle; only interpolate"),
])
def test_a_config_that_does_not_fit_is_refused_in_one_sentence(converted, change, words):
    _, folder, _ = converted
    stored, state = read(folder)
    config = {k: v for k, v in {**stored, **change}.items() if v is not None}
    with pytest.raises(ValueError) as error:
        KIND.infer_config(state, config=config)
    message = str(error.value)
    assert words in message
    assert "\n" not in message and message.count(". ") == 0 and "; " in message


def test_non_finite_decodes_are_refused_in_one_sentence(converted):
    _, _, model = converted
    bad = mx.array(latents((1, 2, 2, 4))).at[0, 1, 1, 2].add(float("nan"))
    with pytest.raises(ValueError, match="latents to decode hold NaN") as error:
        model.decode_latents(bad)
    assert "\n" not in str(error.value)
    broken = KIND.model(model.config)
    broken.update(model.parameters())
    broken.decoder.conv_out.bias = mx.array([np.inf, 0, 0], dtype=mx.float32)
    with pytest.raises(ValueError, match="from finite latents in mlx.core.float32"):
        broken.decode_latents(mx.array(latents((1, 2, 2, 4))))


def test_decode_flops_count_diffusers_decode_but_the_ones_row(converted):
    """FlopCounterMode counts diffusers' decode; diffusers gets the attention's normaliser by
    appending a row of ones to V, so each head's two matmuls carry 2 x (2 N head_dim) FLOPs
    where ours compute q . sum(k) once (2 N head_dim)."""
    from torch.utils.flop_counter import FlopCounterMode

    reference, _, model = converted
    cfg, h, w = model.config, 3, 5
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        reference.decode(torch.zeros(1, cfg.latent_channels, h, w))
    ones_row = 0.0
    for i, width in enumerate(cfg.decoder_block_out_channels):
        if cfg.decoder_block_types[i] == "EfficientViTBlock":
            size = 2 ** (len(cfg.decoder_block_out_channels) - 1 - i)
            heads = width // cfg.attention_head_dim * (1 + len(cfg.decoder_qkv_multiscales[i]))
            ones_row += (cfg.decoder_layers_per_block[i] * heads
                         * 2.0 * (h * size) * (w * size) * cfg.attention_head_dim)
    assert ones_row > 0
    assert KIND.decode_flops(cfg, h, w) + ones_row == counter.get_total_flops()


def test_the_autoencoder_store_converts_the_vae_folder(converted):
    """The converter's path: config and weights checked from shapes alone, then stored; what it
    stores loads strictly and decodes as the directly converted model."""
    from convert.autoencoder_store import convert_state

    _, folder, model = converted
    stored, _ = read(folder)
    config, weights = convert_state("dc-ae", folder / "diffusion_pytorch_model.safetensors",
                                    stored)
    loaded = KIND.model(KIND.config.from_dict(config))
    loaded.load_weights(list(weights.items()), strict=True)
    z = mx.array(latents((1, 2, 2, 4), seed=4))
    np.testing.assert_array_equal(np.array(loaded.decode(z)), np.array(model.decode(z)))
