"""The KL VAE against diffusers' own AutoencoderKL, built by diffusers from a tiny config."""

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch

from dit_files import save_vae, tiny_vae
from mlx_imgen.autoencoders import AUTOENCODERS
from mlx_imgen.autoencoders.kl import AutoencoderKL, KLConfig, decode_flops
from mlx_imgen.weights.readers import read_state_dict

KIND = AUTOENCODERS["kl"]


def convert(folder):
    config = json.loads((folder / "config.json").read_text())
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors")
    model = KIND.model(KIND.infer_config(state, config=config))
    model.load_weights(list(KIND.weights_from_upstream(state).items()), strict=True)
    return model


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    reference = tiny_vae(seed=3)
    return reference, convert(save_vae(reference, root / "vae"))


def nhwc(x: np.ndarray) -> mx.array:
    return mx.array(x.transpose(0, 2, 3, 1))


def test_decode_matches_diffusers(vaes):
    reference, model = vaes
    z = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = reference.decode(torch.tensor(z)).sample.numpy()
    out = np.array(model.decode(nhwc(z))).transpose(0, 3, 1, 2)
    assert out.shape == expected.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_encode_mean_and_logvar_match_diffusers(vaes):
    reference, model = vaes
    images = np.random.default_rng(1).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        posterior = reference.encode(torch.tensor(images)).latent_dist
    mean, logvar = model.encode(nhwc(images))
    np.testing.assert_allclose(np.array(mean).transpose(0, 3, 1, 2), posterior.mean.numpy(),
                               atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(logvar).transpose(0, 3, 1, 2), posterior.logvar.numpy(),
                               atol=1e-4, rtol=0)


def test_legacy_attention_names_convert_to_the_same_weights(vaes, tmp_path):
    reference, model = vaes
    legacy = convert(save_vae(reference, tmp_path / "legacy", legacy_names=True))
    keys = read_state_dict(tmp_path / "legacy" / "diffusion_pytorch_model.safetensors")
    assert any(".query." in k for k in keys) and not any(".to_q." in k for k in keys)
    z = mx.random.normal((1, 8, 8, 4), key=mx.random.key(2))
    np.testing.assert_array_equal(np.array(legacy.decode(z)), np.array(model.decode(z)))


def test_decoding_in_batches_gives_the_same_images_and_undoes_the_scale(vaes):
    _, model = vaes
    latents = mx.random.normal((5, 8, 8, 4), key=mx.random.key(4))
    whole = model.decode_latents(latents)
    np.testing.assert_allclose(np.array(model.decode_latents(latents, batch_size=2)),
                               np.array(whole), atol=1e-6)
    np.testing.assert_allclose(np.array(whole), np.array(model.decode(latents / 0.18215)),
                               atol=1e-6)
    images = mx.random.uniform(-1, 1, (1, 16, 16, 3), key=mx.random.key(5))
    np.testing.assert_allclose(np.array(model.encode_latents(images)),
                               np.array(model.encode(images)[0] * 0.18215), atol=1e-6)


def test_a_config_without_scaling_factor_gets_diffusers_default(tmp_path):
    # the Stable Diffusion VAEs' config.json predates the field; diffusers loads it as 0.18215
    folder = save_vae(tiny_vae(), tmp_path / "old", scaling_factor=False)
    config = json.loads((folder / "config.json").read_text())
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors")
    assert KIND.infer_config(state, config=config).scaling_factor == 0.18215
    assert KIND.infer_config(state, config={**config, "scaling_factor": 0.13}).scaling_factor == 0.13


def test_default_config_is_the_stable_diffusion_vae():
    cfg = KLConfig()
    assert cfg.downsample == 8 and cfg.scaling_factor == 0.18215
    model = AutoencoderKL(cfg)  # parameters stay lazy: only shapes are read
    count = sum(v.size for _, v in nn.utils.tree_flatten(model.parameters()))
    assert count == 83_653_863  # diffusers' AutoencoderKL for sd-vae-ft-mse


def test_decode_flops_equal_a_walk_over_the_decoder():
    cfg = KLConfig(block_out_channels=(8, 16), layers_per_block=1, norm_groups=4)
    model = AutoencoderKL(cfg)  # lazy: only shapes are read
    side = 4

    def conv(layer, res):
        out_ch, kh, kw, in_ch = layer.weight.shape
        return 2.0 * res * res * out_ch * kh * kw * in_ch

    def resnet(r, res):
        return conv(r.conv1, res) + conv(r.conv2, res) + \
            (conv(r.conv_shortcut, res) if "conv_shortcut" in r else 0.0)

    d, c = model.decoder, cfg.block_out_channels[-1]
    total = conv(model.post_quant_conv, side) + conv(d.conv_in, side)
    total += sum(resnet(r, side) for r in d.mid_block.resnets)
    total += 4 * 2.0 * side * side * c * c + 2 * 2.0 * (side * side) ** 2 * c  # q, k, v, out; QK^T, AV
    for block in d.up_blocks:  # each level runs at the resolution its upsampler leaves
        total += sum(resnet(r, side) for r in block.resnets)
        if "upsamplers" in block:
            side *= 2
            total += conv(block.upsamplers[0].conv, side)
    total += conv(d.conv_out, side)
    assert decode_flops(cfg, 4, 4) == pytest.approx(total, rel=1e-12)


def test_a_folder_converted_with_diffusers_attention_names_still_loads(vaes):
    # before the attention block became nn's Attention, the converter kept diffusers' names
    reference, model = vaes
    old = {k: mx.array(v.permute(0, 2, 3, 1).numpy() if v.ndim == 4 else v.numpy())
           for k, v in reference.state_dict().items()}
    assert "decoder.mid_block.attentions.0.group_norm.weight" in old
    loaded = AutoencoderKL(model.config)
    loaded.load_weights(list(old.items()), strict=True)
    z = mx.random.normal((1, 8, 8, 4), key=mx.random.key(5))
    np.testing.assert_array_equal(np.array(loaded.decode(z)), np.array(model.decode(z)))
    assert set(model.upstream_layout()) == set(old)
