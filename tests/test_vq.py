import numpy as np
import pytest
import torch
import mlx.core as mx

from mlx_imgen.autoencoders.vq import (VQConfig, VQModel, decode_flops, encode_flops,
                                       vq_weights_from_upstream)
from mlx_imgen.nn import Attention
from mlx_imgen.weights.keymap import KeyMismatchError, check_weights, load_checked
from mlx_imgen.weights.torch_pickle import flatten_state_dict, load_pt
from upstream import llamagen_vq as ref
from upstream.llamagen_vq import tiny_vq_config


def randomised_reference(seed: int = 0) -> ref.VQModel:
    """The tiny torch VQ with every parameter drawn at random, norm affines included."""
    torch.manual_seed(seed)
    model = ref.VQModel(**tiny_vq_config()).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, fan_in ** -0.5)  # logits of order 1: attention is not flat
                module.bias.normal_(0, 0.1)
            elif isinstance(module, torch.nn.GroupNorm):
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0, 1)  # stored rows are not unit length upstream either
    return model


def save_checkpoint(path, state_dict):
    torch.save({"model": state_dict}, path)
    return path


def load_mlx(path) -> VQModel:
    model = VQModel(VQConfig.from_dict(tiny_vq_config()))
    load_checked(model, vq_weights_from_upstream(flatten_state_dict(load_pt(path)["model"])))
    return model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch_model = randomised_reference()
    path = save_checkpoint(tmp_path_factory.mktemp("vq") / "vq.pt", torch_model.state_dict())
    return torch_model, load_mlx(path)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def test_decode_codes_matches_upstream_decode_code(pair):
    torch_model, model = pair
    codes = torch.randint(0, 64, (2, 3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = nhwc(torch_model.decode_code(codes.flatten(1), (2, 8, 3, 5)))
    out = np.array(model.decode_codes(mx.array(codes.numpy().astype(np.int32))))
    assert out.shape == (2, 6, 10, 3)
    assert 0.3 < np.abs(expected).mean() < 3  # outputs of order 1, so 1e-4 is a tight bound
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_encode_gives_upstream_codes_and_latents(pair):
    torch_model, model = pair
    images = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        quant, indices = torch_model.encode(images)
    codes, latents = model.encode_with_latents(mx.array(nhwc(images)))
    assert codes.dtype == mx.int32 and codes.shape == (2, 4, 6)
    assert len(np.unique(indices.numpy())) > 8  # the search really discriminates codes
    np.testing.assert_array_equal(np.array(codes).reshape(-1), indices.numpy())
    np.testing.assert_allclose(np.array(latents), nhwc(quant), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.array(model.encode(mx.array(nhwc(images)))), np.array(codes))


def test_checkpoint_missing_a_key_is_rejected_naming_it(tmp_path):
    state = randomised_reference().state_dict()
    del state["decoder.mid.1.q.bias"]
    path = save_checkpoint(tmp_path / "missing.pt", state)
    with pytest.raises(KeyMismatchError, match=r"missing.*decoder\.mid\.1\.attention\.q\.bias"):
        load_mlx(path)


def test_checkpoint_with_an_unknown_key_is_rejected_naming_it(tmp_path):
    state = randomised_reference().state_dict()
    state["decoder.mid.1.extra.weight"] = torch.zeros(3)
    path = save_checkpoint(tmp_path / "extra.pt", state)
    with pytest.raises(KeyMismatchError, match=r"decoder\.mid\.1\.extra\.weight"):
        load_mlx(path)


@pytest.mark.parametrize("ch_mult", [(1, 1, 2, 2, 4), (1, 2, 2, 4)], ids=["VQ-16", "VQ-8"])
def test_full_size_upstream_layout_fits_model(ch_mult):
    # meta tensors and lazy MLX arrays: shapes only, nothing is allocated
    with torch.device("meta"):
        torch_model = ref.VQModel(ch_mult=ch_mult)
    if ch_mult == (1, 1, 2, 2, 4):  # upstream's count for VQ-16, from the spec
        assert sum(p.numel() for p in torch_model.parameters()) == 71_883_403
    weights = vq_weights_from_upstream(
        {k: mx.zeros(tuple(v.shape)) for k, v in torch_model.state_dict().items()})
    check_weights(VQModel(VQConfig(ch_mult=ch_mult)), weights)


def hooked_flops(model: ref.VQModel, run) -> float:
    """Count conv and attention-matmul FLOPs of `run()` with forward hooks on the torch model."""
    total = []

    def conv_hook(module, inputs, output):
        kh, kw = module.kernel_size
        total.append(2 * output.numel() * module.in_channels // module.groups * kh * kw)

    def attn_hook(module, inputs, output):
        b, c, h, w = inputs[0].shape
        total.append(2 * 2 * b * (h * w) ** 2 * c)  # QK^T and AV

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(conv_hook)
        elif isinstance(module, ref.AttnBlock):
            module.register_forward_hook(attn_hook)
    with torch.no_grad():
        run()
    return float(sum(total))


@pytest.mark.parametrize("config", [tiny_vq_config(), {}], ids=["tiny", "VQ-16"])
def test_decode_flops_matches_hook_count_on_reference(config):
    with torch.device("meta"):
        model = ref.VQModel(**config)
        cfg = VQConfig.from_dict(config)
        counted = hooked_flops(model, lambda: model.decode(
            torch.empty(1, cfg.codebook_embed_dim, 3, 5)))
    assert decode_flops(cfg, 3, 5) == counted


@pytest.mark.parametrize("config", [tiny_vq_config(), {}], ids=["tiny", "VQ-16"])
def test_encode_flops_matches_hook_count_plus_codebook_search(config):
    with torch.device("meta"):
        model = ref.VQModel(**config)
        cfg = VQConfig.from_dict(config)
        f = cfg.downsample
        counted = hooked_flops(model, lambda: model.quant_conv(model.encoder(
            torch.empty(1, 3, 3 * f, 5 * f))))
    search = 2 * 3 * 5 * cfg.codebook_size * cfg.codebook_embed_dim
    assert encode_flops(cfg, 3, 5) == counted + search


def test_config_round_trips_through_dict():
    cfg = VQConfig.from_dict(tiny_vq_config())
    assert VQConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.downsample == 2 and VQConfig().downsample == 16
    with pytest.raises(ValueError, match="bogus"):
        VQConfig.from_dict({"bogus": 1})


def old_converted_folder_weights(state: dict) -> dict:
    """What the converter wrote before the attention blocks became nn's Attention: upstream's
    names, convs (the attention's 1x1 ones included) in MLX's layout."""
    return {k: mx.array(v.permute(0, 2, 3, 1).numpy() if v.ndim == 4 else v.numpy())
            for k, v in state.items() if k != "quantize.codebook_used"}


def test_a_folder_converted_with_upstream_attention_names_still_loads(pair):
    torch_model, model = pair
    old = old_converted_folder_weights(torch_model.state_dict())
    assert old["decoder.mid.1.proj_out.weight"].ndim == 4
    loaded = VQModel(model.config)
    loaded.load_weights(list(old.items()), strict=True)
    codes = mx.array(np.random.default_rng(4).integers(0, 64, (1, 4, 4)), dtype=mx.int32)
    np.testing.assert_array_equal(np.array(loaded.decode_codes(codes)),
                                  np.array(model.decode_codes(codes)))


def test_attention_blocks_are_the_shared_attention_and_give_back_upstream_names(pair):
    torch_model, model = pair
    assert isinstance(model.decoder.mid[1].attention, Attention)
    upstream = model.upstream_layout()
    old = old_converted_folder_weights(torch_model.state_dict())
    assert set(upstream) == set(old)
    assert all(upstream[k].shape == old[k].shape for k in old)
