"""aMUSEd's VQ-GAN (diffusers-vq) against diffusers' own VQModel, built by diffusers from
tiny random configs."""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch

from diffusers_vq_files import TINY_VQ, save_vqvae, tiny_vq
from mlx_imgen.autoencoders import AUTOENCODERS
from mlx_imgen.autoencoders.diffusers_vq import DiffusersVQConfig, decode_flops
from mlx_imgen.weights.readers import read_state_dict

KIND = AUTOENCODERS["diffusers-vq"]
GRID = 4


def convert(folder, weights="diffusion_pytorch_model.safetensors"):
    config = json.loads((folder / "config.json").read_text())
    state = read_state_dict(folder / weights)
    model = KIND.model(KIND.infer_config(state, config=config))
    model.load_weights(list(KIND.weights_from_upstream(state).items()), strict=True)
    return model


def diffusers_decode(reference, codes: np.ndarray) -> np.ndarray:
    """AmusedPipeline's decode: lookup from the codebook, no quantisation, clipped to [0, 1]."""
    b, g, _ = codes.shape
    shape = (b, g, g, reference.config.vq_embed_dim or reference.config.latent_channels)
    with torch.no_grad():
        out = reference.decode(torch.tensor(codes).long(), force_not_quantize=True,
                               shape=shape).sample.clip(0, 1)
    return out.numpy().transpose(0, 2, 3, 1)


def relative_error(ours, expected) -> float:
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("mid_attention", [False, True])
def test_decode_codes_matches_diffusers(tmp_path, mid_attention):
    reference = tiny_vq(seed=5, mid_block_add_attention=mid_attention)
    model = convert(save_vqvae(reference, tmp_path, fp16_variant=False))
    assert model.config.mid_attention is mid_attention
    codes = np.random.default_rng(0).integers(0, TINY_VQ["num_vq_embeddings"], (2, GRID, GRID))
    expected = diffusers_decode(reference, codes)
    ours = np.array(model.decode_codes(mx.array(codes, dtype=mx.int32)))
    assert ours.shape == expected.shape == (2, 4 * GRID, 4 * GRID, 3)
    # both clip ends are exercised, so the [0, 1] -> [-1, 1] map is checked at its ends too
    assert (expected == 0).any() and (expected == 1).any() and ((expected > 0) & (expected < 1)).any()
    assert relative_error((ours + 1) / 2, expected) < 1e-4


def test_encoder_is_dropped_and_the_fp16_variant_converts(tmp_path):
    reference = tiny_vq(seed=2)
    folder = save_vqvae(reference, tmp_path)
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors")
    assert any(k.startswith("encoder.") for k in state) and "quant_conv.weight" in state
    weights = KIND.weights_from_upstream(state)
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in weights)
    half = convert(folder, "diffusion_pytorch_model.fp16.safetensors")
    full = convert(folder)
    codes = mx.array(np.random.default_rng(3).integers(0, 32, (1, GRID, GRID)), dtype=mx.int32)
    assert half.dtype == mx.float16
    # fp16 rounding of the weights only: the tiny decoder stays far from float16's range
    np.testing.assert_allclose(np.array(half.decode_codes(codes)).astype(np.float32),
                               np.array(full.decode_codes(codes)), atol=2e-2)


def test_non_finite_decode_raises_one_sentence_naming_dtype_and_fix(tmp_path):
    model = convert(save_vqvae(tiny_vq(seed=1), tmp_path, fp16_variant=False))
    model.set_dtype(mx.float16)
    # each factor fits float16, their product (the post_quant_conv's output) does not
    model.quantize.embedding.weight = model.quantize.embedding.weight * 300
    model.post_quant_conv.weight = model.post_quant_conv.weight * 300
    codes = mx.zeros((1, GRID, GRID), dtype=mx.int32)
    with pytest.raises(ValueError) as error:
        model.decode_codes(codes)
    message = str(error.value)
    assert "float16" in message and "--dtype float32" in message
    assert message.count(". ") == 0 and "\n" not in message


def test_defaults_are_amuseds_vqgan():
    cfg = DiffusersVQConfig()
    assert cfg.block_out_channels == (128, 256, 256, 512, 768)
    assert (cfg.layers_per_block, cfg.latent_channels, cfg.num_vq_embeddings) == (2, 64, 8192)
    assert (cfg.vq_embed_dim, cfg.norm_groups, cfg.mid_attention) == (64, 32, False)
    assert cfg.downsample == 16
    assert DiffusersVQConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("change, named", [
    ({"norm_type": "spatial"}, "norm_type"),
    ({"up_block_types": ["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D"]},
     "up_block_types"),
    ({"act_fn": "gelu"}, "act_fn"),
    ({"num_vq_embeddings": 64}, "codebook"),
])
def test_unsupported_configs_are_refused_in_one_sentence(tmp_path, change, named):
    folder = save_vqvae(tiny_vq(), tmp_path, fp16_variant=False)
    config = {**json.loads((folder / "config.json").read_text()), **change}
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=named) as error:
        KIND.infer_config(state, config=config)
    assert str(error.value).count(". ") == 0


def test_a_weights_file_without_its_config_is_refused(tmp_path):
    folder = save_vqvae(tiny_vq(), tmp_path, fp16_variant=False)
    state = read_state_dict(folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="config.json"):
        KIND.infer_config(state)


def test_decode_flops_count_every_conv_of_a_known_config():
    # one level, no attention: post_quant 1x1, conv_in 3x3, mid 2 resnets, one up level of
    # 2 resnets (layers_per_block 1 + 1), conv_out 3x3, at 2x2 and with widths 4 -> 8
    cfg = DiffusersVQConfig(block_out_channels=(8,), layers_per_block=1, latent_channels=4,
                            vq_embed_dim=2, norm_groups=4, mid_attention=False)
    pixels = 4
    conv3 = 2 * pixels * 9 * 8 * 8
    expected = (2 * pixels * 2 * 4 + 2 * pixels * 9 * 4 * 8 + 4 * 2 * conv3
                + 2 * pixels * 9 * 8 * 3)
    assert decode_flops(cfg, 2, 2) == expected
