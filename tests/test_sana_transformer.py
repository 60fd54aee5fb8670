"""Sana's transformer against diffusers' SanaTransformer2DModel: flow predictions of tiny random
models through the sana family's key map and config inference (square and non-square latents,
padded captions, batch 2), the key map's completeness, config refusals."""

import json
import re

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from mlx_imgen.families import detect, get
from mlx_imgen.families.sana import KEYMAP, config_from_json
from mlx_imgen.sana import SanaConfig, SanaTransformer
from sana_files import inputs, save_transformer, tiny_config, tiny_sana

SANA = get("sana")


def _load(folder) -> tuple[dict, dict]:
    transformer = folder / "transformer"
    state = mx.load(str(transformer / "diffusion_pytorch_model.safetensors"))
    return state, json.loads((transformer / "config.json").read_text())


def _converted(state: dict, config_json: dict) -> SanaTransformer:
    config = SANA.infer_config(state, {"config_json": config_json})
    model = SanaTransformer(config)
    model.load_weights(list(SANA.weights_from_upstream(state).items()), strict=True)
    return model


def _ours(model: SanaTransformer, args: dict, *, mask: bool = True) -> np.ndarray:
    out = model(mx.array(args["hidden_states"].permute(0, 2, 3, 1).numpy()),
                timesteps=mx.array(args["timestep"].numpy()),
                context=mx.array(args["encoder_hidden_states"].numpy()),
                context_mask=mx.array(args["encoder_attention_mask"].numpy()) if mask else None)
    return np.array(out.astype(mx.float32)).transpose(0, 3, 1, 2)  # NCHW, as diffusers'


def _theirs(reference, args: dict, *, mask: bool = True) -> np.ndarray:
    if not mask:
        args = {k: v for k, v in args.items() if k != "encoder_attention_mask"}
    with torch.no_grad():
        return reference(**args).sample.numpy()


def _relative_error(ours, theirs) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("height,width", [(4, 4), (4, 6)], ids=["square", "4x6"])
@pytest.mark.parametrize("patch_size", [1, 2])
def test_flow_prediction_matches_diffusers(tmp_path, height, width, patch_size):
    reference = tiny_sana(seed=3, patch_size=patch_size)
    state, config_json = _load(save_transformer(reference, tmp_path).parent)
    assert detect(state) == "sana"
    model = _converted(state, config_json)
    args = inputs(tiny_config(), height=height * patch_size, width=width * patch_size, seed=1)
    # row 0 is all tokens, row 1 half padding: the mask reaches the cross-attention
    assert args["encoder_attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    ours, theirs = _ours(model, args), _theirs(reference, args)
    assert ours.shape == theirs.shape == (2, 8, height * patch_size, width * patch_size)
    error = _relative_error(ours, theirs)
    assert error < 1e-4, error
    # the two samples differ, and the padding changes the padded row only
    assert np.abs(theirs[0] - theirs[1]).max() > 1e-2 * np.abs(theirs).max()
    unmasked = _theirs(reference, args, mask=False)
    assert np.abs(unmasked[0] - theirs[0]).max() < 1e-6 * np.abs(theirs).max()
    assert np.abs(unmasked[1] - theirs[1]).max() > 1e-3 * np.abs(theirs).max()
    assert _relative_error(_ours(model, args, mask=False), unmasked) < 1e-4


def test_a_caption_of_padding_only_attends_to_all_positions_as_upstream(tmp_path):
    """diffusers adds -10000 to padded keys' scores rather than removing them, so a row with no
    token is an average over all positions, not NaN."""
    reference = tiny_sana(seed=5)
    model = _converted(*_load(save_transformer(reference, tmp_path).parent))
    args = inputs(tiny_config(), lengths=(0, 2), seed=2)
    ours, theirs = _ours(model, args), _theirs(reference, args)
    assert np.isfinite(ours).all() and _relative_error(ours, theirs) < 1e-4


def test_every_upstream_key_is_used_exactly_once():
    for overrides in ({}, {"attention_bias": True, "patch_size": 2}):
        reference = tiny_sana(**overrides)
        keys = list(reference.state_dict())
        patterns = [re.compile(source + r"\Z") for rule in KEYMAP.rules for source in rule.sources]
        for key in keys:
            assert sum(bool(p.match(key)) for p in patterns) == 1, key
        mapped = SANA.weights_from_upstream({k: v.numpy() for k, v in
                                             reference.state_dict().items()})
        model = SanaTransformer(config_from_json(dict(reference.config)))
        assert set(mapped) == {k for k, _ in tree_flatten(model.parameters())}
        # self-attention's q, k and v fuse into one weight (and bias): three sources, one target
        fused = reference.config.num_layers * (2 if overrides else 1)
        assert len(mapped) == len(keys) - 2 * fused


@pytest.mark.parametrize("change,phrase", [
    ({"mlp_ratio": 3.0}, ".mlp."),
    ({"num_layers": 3}, "names 3 layers but the weights hold 2"),
    ({"num_cross_attention_heads": 4}, ".cross_attn."),
    ({"attention_bias": True}, "the config needs blocks.0.attn.qkv.bias"),
    ({"caption_channels": 16}, "caption_projection.linear_1.weight is (32, 24)"),
])
def test_a_config_of_other_weights_is_refused_in_one_sentence(tmp_path, change, phrase):
    state, config_json = _load(save_transformer(tiny_sana(), tmp_path).parent)
    with pytest.raises(ValueError) as error:
        SANA.infer_config(state, {"config_json": {**config_json, **change}})
    message = str(error.value)
    assert phrase in message and "\n" not in message and ". " not in message


@pytest.mark.parametrize("change,phrase", [
    ({"interpolation_scale": 1.0}, "sin-cos position embedding"),
    ({"guidance_embeds": True}, "guidance scale"),
    ({"qk_norm": "rms_norm_across_heads"}, "qk_norm"),
    ({"timestep_scale": 0.5}, "scales its timesteps"),
    ({"norm_elementwise_affine": True}, "norm_elementwise_affine"),
    ({"cross_attention_dim": None}, "without cross-attention"),
    ({"cross_attention_dim": 48}, "differs from the model width 32"),
    ({"flux": 1}, "no field 'flux'"),
])
def test_unsupported_configs_are_refused_in_one_sentence(change, phrase):
    with pytest.raises(ValueError) as error:
        config_from_json({**tiny_config(), **change})
    message = str(error.value)
    assert phrase in message and "\n" not in message


def test_missing_config_json_is_refused(tmp_path):
    state, _ = _load(save_transformer(tiny_sana(), tmp_path).parent)
    with pytest.raises(ValueError, match="transformer/config.json"):
        SANA.infer_config(state, {})


def test_an_image_size_hint_sets_the_trained_latent_size(tmp_path):
    state, config_json = _load(save_transformer(tiny_sana(), tmp_path).parent)
    assert SANA.infer_config(state, {"config_json": config_json,
                                     "image_size": 256}).grid_size == 8
    with pytest.raises(ValueError, match="multiple of 32"):
        SANA.infer_config(state, {"config_json": config_json, "image_size": 200})


def test_published_sizes_and_the_interface():
    config = SANA.config_for("0.6b", 512)
    assert SanaConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (config.width, config.grid_size, config.num_tokens, config.input,
            config.in_channels, config.patch_size) == (1152, 16, 256, "patches", 32, 1)
    backbone = config.backbone()
    assert (backbone.depth, backbone.heads, backbone.dims_per_head, backbone.cross_heads,
            backbone.cross_head_dim, backbone.hidden) == (28, 36, 32, 16, 72, 2880)
    assert (backbone.modulation, backbone.mlp, backbone.attention_kernel,
            backbone.cross_norm) == ("single", "mixffn", "relu_linear", False)
    large = SANA.config_for("1.6b", 1024)
    assert (large.num_layers, large.width, large.sample_size, large.num_cross_attention_heads,
            large.cross_attention_head_dim) == (20, 2240, 32, 20, 112)


def test_bad_calls_are_refused():
    model = SanaTransformer(config_from_json(tiny_config(patch_size=2)))
    context = mx.zeros((1, 3, 24))
    with pytest.raises(ValueError, match="not divisible by the patch size 2"):
        model(mx.zeros((1, 4, 5, 8)), timesteps=mx.array([1.0]), context=context)
    with pytest.raises(ValueError, match="no pooled"):
        model(mx.zeros((1, 4, 4, 8)), timesteps=mx.array([1.0]), context=context,
              pooled=mx.zeros((1, 4)))


# DPMSolverMultistepScheduler as Sana's hub scheduler config sets it (the fields that matter)
SANA_DPM = dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                final_sigmas_type="zero", lower_order_final=True, euler_at_final=False,
                timestep_spacing="linspace", num_train_timesteps=1000)
GUIDANCE = 4.5


def _diffusers_loop(reference, scheduler, args: dict, null: dict, steps: int) -> np.ndarray:
    """Final NCHW latents of SanaPipeline's denoising loop: CFG on a batch [uncond, cond],
    caption masks included, timestep_scale 1."""
    scheduler.set_timesteps(steps)
    latents = args["hidden_states"].clone()
    states = torch.cat([null["encoder_hidden_states"], args["encoder_hidden_states"]])
    mask = torch.cat([null["encoder_attention_mask"], args["encoder_attention_mask"]])
    with torch.no_grad():
        for t in scheduler.timesteps:
            batch = torch.cat([latents] * 2)
            prediction = reference(batch, encoder_hidden_states=states,
                                   encoder_attention_mask=mask,
                                   timestep=t.expand(batch.shape[0]) * 1.0).sample.float()
            uncond, cond = prediction.chunk(2)
            latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents,
                                     return_dict=False)[0]
    return latents.numpy()


@pytest.mark.parametrize("solver", ["euler", "dpm"])
# diffusers' own DPM set_timesteps builds a numpy array from a torch tensor (numpy 2 warns)
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_sampling_with_padded_captions_follows_sanas_pipeline_loop(tmp_path, solver):
    from diffusers import schedulers

    from mlx_imgen.paradigms import DPMSolverPlan, FlowPlan, diffusion
    from mlx_imgen.paradigms.conditions import CrossAttentionText

    reference = tiny_sana(seed=7)
    model = _converted(*_load(save_transformer(reference, tmp_path).parent))
    args = inputs(tiny_config(), seed=3, lengths=(6, 4))
    null = inputs(tiny_config(), seed=4, lengths=(1, 1))  # the empty prompt: one token
    if solver == "euler":
        scheduler = schedulers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        plan = FlowPlan(steps=4, solver="euler", schedule="discrete", shift=3.0,
                        cfg_scale=GUIDANCE, time_scale=1000)
    else:
        scheduler = schedulers.DPMSolverMultistepScheduler(**SANA_DPM)
        plan = DPMSolverPlan(steps=4, shift=3.0, cfg_scale=GUIDANCE)
    theirs = _diffusers_loop(reference, scheduler, args, null, steps=4)
    as_mx = lambda t: mx.array(t.numpy())  # noqa: E731
    text = CrossAttentionText(as_mx(args["encoder_hidden_states"]), None,
                              as_mx(null["encoder_hidden_states"]), None,
                              mask=as_mx(args["encoder_attention_mask"]),
                              null_mask=as_mx(null["encoder_attention_mask"]))
    noise = mx.array(args["hidden_states"].permute(0, 2, 3, 1).numpy())
    ours = np.array(diffusion.generate(model, text, plan, noise=noise)).transpose(0, 3, 1, 2)
    error = _relative_error(ours, theirs)
    assert error < 1e-3, error
    # the run moved the latents far from the noise it started at
    assert np.abs(theirs - args["hidden_states"].numpy()).max() > 0.1 * np.abs(theirs).max()
