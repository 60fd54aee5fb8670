"""Janus-Pro conversion: the VQ-16 tokenizer out of either checkpoint layout (decode parity with
transformers' JanusVQVAE), whole-repo conversion from a local hub cache in both layouts, the
left-out record, quantized conversion, and the bad inputs."""

import numpy as np
import pytest
import torch
import mlx.core as mx
from transformers.models.janus.configuration_janus import JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAE

from mlx_imgen.autoencoders.janus_vq import llamagen_name, vq_state
from mlx_imgen.autoencoders.vq import VQModel, infer_vq_config, vq_weights_from_upstream
from mlx_imgen.weights.keymap import load_checked

TINY_VQ = dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
               channel_multiplier=[1, 2], num_res_blocks=1, num_patches=4, projection_dim=32,
               image_token_embed_dim=32)


def tiny_reference_vq(seed: int = 0) -> JanusVQVAE:
    """transformers' JanusVQVAE, tiny, every parameter drawn (norm affines and biases too)."""
    torch.manual_seed(seed)
    model = JanusVQVAE(JanusVQVAEConfig(**TINY_VQ)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(0, module.weight[0].numel() ** -0.5)
                module.bias.normal_(0, 0.1)
            elif isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0, 1)
    return model


def as_original_names(transformers_vq: dict) -> dict:
    """The same tensors under LlamaGen's names, as deepseek-ai's gen_vision_model.* holds them
    (its VQ is LlamaGen's module for module), plus the usage buffer upstream also saves."""
    state = {f"gen_vision_model.{llamagen_name(k)}": v for k, v in transformers_vq.items()}
    state["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    return state


def mlx_vq(state: dict, layout: str) -> VQModel:
    upstream = {k: v.numpy() for k, v in vq_state(state, layout).items()}
    model = VQModel(infer_vq_config(upstream))
    load_checked(model, vq_weights_from_upstream(upstream))
    return model


@pytest.fixture(scope="module")
def reference_vq():
    return tiny_reference_vq()


def test_vq_decode_matches_transformers_in_both_layouts(reference_vq):
    weights = reference_vq.state_dict()
    transformers_state = {f"model.vqmodel.{k}": v for k, v in weights.items()}
    codes = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference_vq.decode(codes).permute(0, 2, 3, 1).numpy()
    grid = mx.array(codes.numpy().astype(np.int32).reshape(2, 4, 4))
    for state, layout in ((transformers_state, "transformers"),
                          (as_original_names(weights), "original")):
        out = np.array(mlx_vq(state, layout).decode_codes(grid))
        assert out.shape == expected.shape == (2, 8, 8, 3)
        np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0, err_msg=layout)
        assert np.abs(expected).max() > 0.1  # the decode is not flat


def test_transformers_vq_names_map_onto_llamagen_modules():
    assert llamagen_name("decoder.up.0.block.2.conv1.weight") == "decoder.conv_blocks.0.res.2.conv1.weight"
    assert llamagen_name("encoder.down.3.downsample.conv.bias") == "encoder.conv_blocks.3.downsample.conv.bias"
    assert llamagen_name("decoder.up.0.attn.1.proj_out.weight") == "decoder.conv_blocks.0.attn.1.proj_out.weight"
    assert llamagen_name("encoder.mid.attn_1.q.weight") == "encoder.mid.1.q.weight"
    assert llamagen_name("quantize.embedding.weight") == "quantize.embedding.weight"


def test_a_checkpoint_without_the_tokenizer_is_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"holds no image tokenizer \(no gen_vision_model\.\* keys\)"):
        vq_state({"language_model.model.embed_tokens.weight": np.zeros((4, 2))}, "original")
