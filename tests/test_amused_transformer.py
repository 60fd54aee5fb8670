"""aMUSEd's U-ViT against diffusers' UVit2DModel: logits of tiny random models through the
amused family's key map and config inference, the key map's completeness, refusals."""

import json
import re

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from mlx_imgen.families import get
from mlx_imgen.families.amused import KEYMAP, config_from_json
from mlx_imgen.uvit import UVit, UVitConfig
from uvit_files import MASK_ID, inputs, save_transformer, tiny_config, tiny_uvit

AMUSED = get("amused")


def _load(folder, variant: str = "") -> tuple[dict, dict]:
    transformer = folder / "transformer"
    state = mx.load(str(transformer / f"diffusion_pytorch_model{variant}.safetensors"))
    return state, json.loads((transformer / "config.json").read_text())


def _converted(state: dict, config_json: dict) -> UVit:
    config = AMUSED.infer_config(state, {"config_json": config_json})
    model = UVit(config)
    model.load_weights(list(AMUSED.weights_from_upstream(state).items()), strict=True)
    return model


def _ours(model: UVit, args: dict) -> np.ndarray:
    out = model(mx.array(args["input_ids"].flatten(1).numpy().astype(np.int32)),
                context=mx.array(args["encoder_hidden_states"].numpy()),
                pooled=mx.array(args["pooled_text_emb"].numpy()),
                micro_conditions=mx.array(args["micro_conds"].numpy()))
    return np.array(out.astype(mx.float32))


def _theirs(reference, args: dict) -> np.ndarray:
    with torch.no_grad():
        logits = reference(**args)  # (B, codebook, h, w)
    return logits.flatten(2).transpose(1, 2).numpy()


@pytest.mark.parametrize("stages", [False, True], ids=["no-stages", "down-up"])
@pytest.mark.parametrize("use_bias", [False, True], ids=["no-bias", "bias"])
def test_logits_match_diffusers(tmp_path, stages, use_bias):
    reference = tiny_uvit(seed=3, stages=stages, use_bias=use_bias)
    state, config_json = _load(save_transformer(reference, tmp_path).parent)
    model = _converted(state, config_json)
    assert model.config.downsample == stages and model.config.use_bias == use_bias
    args = inputs(tiny_config(stages=stages), batch=2, seed=1)
    assert (args["input_ids"] == MASK_ID).any() and (args["input_ids"] != MASK_ID).any()
    ours, theirs = _ours(model, args), _theirs(reference, args)
    assert ours.shape == theirs.shape == (2, model.config.num_tokens, 8192)
    error = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert error < 1e-4, error
    # the two images of the batch differ, so a batch mix-up could not pass
    assert np.abs(theirs[0] - theirs[1]).max() > 1e-2 * np.abs(theirs).max()


def test_fp16_variant_converts_and_runs_close(tmp_path):
    reference = tiny_uvit(seed=4)
    state, config_json = _load(save_transformer(reference, tmp_path).parent, ".fp16")
    assert all(v.dtype == mx.float16 for v in state.values())
    model = _converted(state, config_json)
    model.set_dtype(mx.float32)
    args = inputs(tiny_config(), batch=1, seed=2)
    ours, theirs = _ours(model, args), _theirs(reference, args)
    # the weights were rounded to half precision; the model runs in float32
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 2e-2


@pytest.mark.parametrize("stages,use_bias", [(False, False), (True, True)])
def test_every_upstream_key_is_used_exactly_once(stages, use_bias):
    reference = tiny_uvit(stages=stages, use_bias=use_bias)
    keys = list(reference.state_dict())
    patterns = [re.compile(source + r"\Z") for rule in KEYMAP.rules for source in rule.sources]
    for key in keys:
        hits = sum(bool(p.match(key)) for p in patterns)
        assert hits == 1, (key, hits)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    mapped = AMUSED.weights_from_upstream(state)
    model = UVit(UVitConfig.from_dict(
        {("embed_vocab_size" if k == "vocab_size" else k): v
         for k, v in tiny_config(stages=stages, use_bias=use_bias).items()}))
    assert set(mapped) == {k for k, _ in tree_flatten(model.parameters())}
    # q, k and v of each self-attention fuse into one weight (and one bias): three sources, one
    # target
    fused = reference.config.num_hidden_layers * (2 if use_bias else 1)
    assert len(mapped) == len(keys) - 2 * fused


@pytest.mark.parametrize("change,phrase", [
    ({"intermediate_size": 64}, "mlp.proj.weight"),
    ({"num_hidden_layers": 3}, "names 3 layers but the weights hold 2"),
    ({"downsample": True, "upsample": True}, "the config needs down."),
])
def test_a_config_of_other_weights_is_refused_in_one_sentence(tmp_path, change, phrase):
    state, config_json = _load(save_transformer(tiny_uvit(), tmp_path).parent)
    with pytest.raises(ValueError) as error:
        AMUSED.infer_config(state, {"config_json": {**config_json, **change}})
    message = str(error.value)
    assert phrase in message and "\n" not in message and ". " not in message


def test_missing_config_json_is_refused(tmp_path):
    state, _ = _load(save_transformer(tiny_uvit(), tmp_path).parent)
    with pytest.raises(ValueError, match="transformer/config.json"):
        AMUSED.infer_config(state, {})


def test_config_round_trips_and_names_the_interface():
    config = AMUSED.config_for("512", 512)
    assert UVitConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (config.grid_size, config.num_tokens, config.mask_id, config.vocab_size,
            config.input) == (32, 1024, 8255, 8192, "tokens")
    assert config.downsample and not AMUSED.config_for("256", 256).downsample
    backbone = config.backbone()
    assert (backbone.depth, backbone.width, backbone.modulation, backbone.mlp,
            backbone.grid_size) == (22, 1024, "continuous", "geglu", 16)


@pytest.mark.parametrize("stages,use_bias", [(False, False), (True, True)])
def test_flops_match_torchs_flop_counter(stages, use_bias):
    from torch.utils.flop_counter import FlopCounterMode

    from mlx_imgen.flops import forward_flops, uvit_forward_flops

    config = tiny_config(stages=stages, use_bias=use_bias)
    reference = tiny_uvit(stages=stages, use_bias=use_bias)
    # torch's counter does not see CPU scaled_dot_product_attention; the plain processor's
    # baddbmm and bmm it counts
    reference.set_default_attn_processor()
    args = inputs(config, batch=2)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        reference(**args)
    ours = UVitConfig.from_dict({("embed_vocab_size" if k == "vocab_size" else k): v
                                 for k, v in config.items()})
    text = args["encoder_hidden_states"].shape[1]
    assert uvit_forward_flops(ours, text).total * 2 == counter.get_total_flops()
    assert forward_flops(ours).total == uvit_forward_flops(ours, 77).total


def test_the_sampler_runs_the_uvit_on_a_text_condition_and_it_quantizes():
    from mlx_imgen.paradigms import masked_token, presets
    from mlx_imgen.paradigms.masked_token import CrossAttentionText
    from mlx_imgen.quantize import quantize_model

    config = config_from_json(tiny_config(stages=True))
    model = UVit(config)
    mx.eval(model.parameters())
    plan = presets.make_plan("amused", config, {})
    rng = np.random.default_rng(0)
    text = CrossAttentionText(*(mx.array(rng.standard_normal(shape).astype(np.float32))
                                for shape in ((2, 7, 24), (2, 16), (2, 7, 24), (2, 16))))
    codes = np.array(masked_token.generate(model, text, plan, seed=0))
    assert codes.shape == (2, config.num_tokens)
    assert codes.min() >= 0 and codes.max() < config.codebook_size
    args = inputs(tiny_config(stages=True), batch=1)
    before = _ours(model, args)
    quantized = quantize_model(model, 8, 32)
    assert "blocks.0.mlp.proj" in quantized and "head.logits" not in quantized  # 16 wide
    after = _ours(model, args)
    assert 0 < np.abs(after - before).max() < 0.05 * np.abs(before).max()


@pytest.mark.parametrize("bias", [False, True])
def test_the_doubling_transposed_conv_equals_mlxs(bias):
    from mlx_imgen.uvit import DoublingTransposedConv

    layer = DoublingTransposedConv(6, bias=bias)
    if bias:
        layer.bias = mx.random.normal(layer.bias.shape)
    x = mx.random.normal((2, 3, 5, 6))
    expected = mx.conv_transpose2d(x, layer.weight, stride=2) + (layer.bias if bias else 0)
    assert layer(x).shape == (2, 6, 10, 6)
    assert mx.abs(layer(x) - expected).max().item() < 1e-5
