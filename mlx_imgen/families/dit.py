"""DiT and SiT class-to-image (diffusion): adaLN-Zero configurations of the backbone with learned
sigma, and the key maps of DiT's `models.py` checkpoints (SiT's share them) and of diffusers'
`DiTTransformer2DModel`. DiT samples with DDPM or DDIM on epsilon; SiT integrates a velocity.
"""

import math
import re
from types import SimpleNamespace

import mlx.core as mx
import numpy as np

from mlx_imgen.backbone import BackboneConfig
from mlx_imgen.convert.keymap import (KeyMismatchError, Rule, as_mlx, concatenated, conv_weight,
                                     map_keys)
from mlx_imgen.nn import sincos_2d

FAMILY = "dit"
PARADIGM = "diffusion"
AUTOENCODER = "kl"
LICENSE = "CC-BY-NC-4.0"
# DiT_models in upstream models.py: depth, width, heads; each comes with patch 2, 4 or 8
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
HEADS_BY_WIDTH = {width: heads for _, width, heads in SIZES.values()}
VAE_DOWNSAMPLE = 8  # the Stable Diffusion VAE's, which every published DiT and SiT uses
ORIGINAL_KEYS = ("x_embedder.proj.weight", "final_layer.linear.weight")
DIFFUSERS_KEYS = ("pos_embed.proj.weight", "proj_out_2.weight")
SIGNATURE = tuple(f"{a} (or diffusers' {b})" for a, b in zip(ORIGINAL_KEYS, DIFFUSERS_KEYS))
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# DiT's and SiT's sample.py load a training checkpoint's "ema" weights (find_model)
SAMPLES_FROM = ("ema", "model")

ORIGINAL_RULES = [
    Rule(r"x_embedder\.proj\.weight", "patch_embed.proj.weight", conv_weight),
    Rule(r"x_embedder\.proj\.bias", "patch_embed.proj.bias"),
    Rule(r"t_embedder\.mlp\.0\.(weight|bias)", r"time_embed.linear1.\1"),
    Rule(r"t_embedder\.mlp\.2\.(weight|bias)", r"time_embed.linear2.\1"),
    Rule(r"y_embedder\.embedding_table\.weight", "class_embed.weight"),
    Rule(r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    Rule(r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.out.\2"),
    Rule(r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    Rule(r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.modulation.\2"),
    Rule(r"final_layer\.adaLN_modulation\.1\.(weight|bias)", r"final_modulation.\1"),
    Rule(r"final_layer\.linear\.(weight|bias)", r"head.\1"),
]
_BLOCK = r"transformer_blocks\.(\d+)\."
_EMBEDDER = r"transformer_blocks\.0\.norm1\.emb\."
DIFFUSERS_RULES = [
    Rule(r"pos_embed\.proj\.weight", "patch_embed.proj.weight", conv_weight),
    Rule(r"pos_embed\.proj\.bias", "patch_embed.proj.bias"),
    # diffusers copies the embedders into every block; they are checked equal to block 0's
    Rule(_EMBEDDER + r"timestep_embedder\.linear_1\.(weight|bias)", r"time_embed.linear1.\1"),
    Rule(_EMBEDDER + r"timestep_embedder\.linear_2\.(weight|bias)", r"time_embed.linear2.\1"),
    Rule(_EMBEDDER + r"class_embedder\.embedding_table\.weight", "class_embed.weight"),
    Rule(_BLOCK + r"norm1\.linear\.(weight|bias)", r"blocks.\1.modulation.\2"),
    Rule(_BLOCK + r"attn1\.to_qkv\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    Rule(_BLOCK + r"attn1\.to_out\.0\.(weight|bias)", r"blocks.\1.attn.out.\2"),
    Rule(_BLOCK + r"ff\.net\.0\.proj\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    Rule(_BLOCK + r"ff\.net\.2\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    Rule(r"proj_out_1\.(weight|bias)", r"final_modulation.\1"),
    Rule(r"proj_out_2\.(weight|bias)", r"head.\1"),
]
# the fixed sin-cos table is rebuilt at run time (checked against the file's in infer_config);
# diffusers' conversion script left the original's copy in its files
IGNORE = [r"pos_embed", r"transformer_blocks\.\d+\.norm1\.emb\..+"]
CLASS_TABLE = "transformer_blocks.0.norm1.emb.class_embedder.embedding_table.weight"


def backbone_config(depth: int, width: int, heads: int, *, hidden: int | None = None,
                    patch_size: int = 2, latent_size: int = 32, in_channels: int = 4,
                    out_channels: int = 8, num_classes: int = 1000, timestep_freq_shift: float = 0.0,
                    mlp_norm_eps: float | None = None) -> BackboneConfig:
    """DiT's block: non-affine LayerNorms (eps 1e-6), GELU-tanh MLP, fused qkv with biases,
    adaLN-Zero from class + timestep, fixed sin-cos positions, a linear head per patch."""
    if latent_size % patch_size:
        raise ValueError(f"the latent size {latent_size} is not a multiple of the patch size "
                         f"{patch_size}; choose an image size that is a multiple of "
                         f"{patch_size * VAE_DOWNSAMPLE} px")
    return BackboneConfig(
        depth=depth, width=width, heads=heads, mlp="gelu_tanh", mlp_hidden=hidden or 4 * width,
        norm="layer", norm_eps=1e-6, mlp_norm_eps=mlp_norm_eps, norm_affine=False,
        final_norm_affine=False, fused_qkv=True, qkv_bias=True, out_bias=True,
        input="patches", grid_size=latent_size // patch_size, in_channels=in_channels,
        patch_size=patch_size, out_channels=out_channels, conditioning="adaln",
        num_classes=num_classes, timestep=True, timestep_freq_shift=timestep_freq_shift,
        positions="sincos2d", head_bias=True)


def config_for(size: str, image_size: int) -> BackboneConfig:
    """A published size ("XL/2", "B/4", ...) at an image size, with learned sigma."""
    name, _, patch = size.partition("/")
    if name not in SIZES or patch not in ("2", "4", "8"):
        raise ValueError(f"unknown DiT size {size!r}; use S, B, L or XL with /2, /4 or /8")
    depth, width, heads = SIZES[name]
    return backbone_config(depth, width, heads, patch_size=int(patch),
                           latent_size=_latent_from_pixels(image_size))


def _strip(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def _is_diffusers(keys) -> bool:
    return all(k in keys for k in DIFFUSERS_KEYS)


def is_checkpoint(state: dict) -> bool:
    keys = {_strip(k) for k in state}
    return all(k in keys for k in ORIGINAL_KEYS) or _is_diffusers(keys)


def _latent_from_pixels(image_size: int) -> int:
    if image_size % VAE_DOWNSAMPLE:
        raise ValueError(f"the image size {image_size} is not a multiple of "
                         f"{VAE_DOWNSAMPLE}, the VAE's downsampling")
    return image_size // VAE_DOWNSAMPLE


def _latent_size(hints: dict, trained: int | None) -> int:
    """The latent side: the trained one, unless the hints ask for a different one (refused)."""
    asked = hints.get("latent_size")
    if asked is None and hints.get("image_size") is not None:
        asked = _latent_from_pixels(hints["image_size"])
    if trained is not None and asked is not None and asked != trained:
        raise ValueError(f"this checkpoint was trained at {trained * VAE_DOWNSAMPLE} px (a "
                         f"{trained}x{trained} latent) and cannot sample at "
                         f"{asked * VAE_DOWNSAMPLE} px: its positions are fixed to that grid")
    latent = trained if trained is not None else asked
    if latent is None:
        raise ValueError("cannot tell the image size this checkpoint was trained at; pass "
                         "--config '{\"image_size\": 256}' (or 512)")
    return latent


def _heads(width: int, hints: dict, given: int | None = None) -> int:
    heads = given or hints.get("heads") or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise ValueError(f"cannot tell the head count of a {width}-wide DiT; pass "
                         "--config '{\"heads\": N}'")
    if width % heads:
        raise ValueError(f"{heads} heads do not divide the width {width}; fix --config heads")
    return heads


def _depth(keys, pattern: str) -> int:
    return 1 + max(int(m.group(1)) for k in keys if (m := re.match(pattern, k)))


def infer_config(state: dict, hints: dict) -> BackboneConfig:
    """Shapes give widths, depth, channels, patch and classes. The trained grid comes from the
    file's fixed positions (original) or from config.json's sample_size (diffusers, passed in
    `hints["config_json"]`); heads from config.json, `hints` or upstream's size table."""
    state = {_strip(k): v for k, v in state.items()}
    if _is_diffusers(state):
        return _diffusers_config(state, hints.get("config_json") or {}, hints)
    width, in_channels, patch, _ = state["x_embedder.proj.weight"].shape
    trained = None
    if "pos_embed" in state:
        tokens = state["pos_embed"].shape[1]
        trained = math.isqrt(tokens) * patch
    cfg = backbone_config(
        _depth(state, r"blocks\.(\d+)\."), width, _heads(width, hints),
        hidden=state["blocks.0.mlp.fc1.weight"].shape[0], patch_size=patch,
        latent_size=_latent_size(hints, trained), in_channels=in_channels,
        out_channels=state["final_layer.linear.weight"].shape[0] // (patch * patch),
        num_classes=state["y_embedder.embedding_table.weight"].shape[0] - 1,
        timestep_freq_shift=hints.get("timestep_freq_shift", 0.0),
        mlp_norm_eps=hints.get("mlp_norm_eps"))
    if "pos_embed" in state:
        _check_positions(as_mlx(state["pos_embed"]), cfg)
    return cfg


def _check_positions(stored: mx.array, cfg: BackboneConfig) -> None:
    expected = np.array(sincos_2d(cfg.width, cfg.grid_size))
    stored = np.array(stored.astype(mx.float32)).reshape(expected.shape)
    # a float16 copy of the table is off by up to ~5e-4
    error = float(np.abs(stored - expected).max())
    if error > 1e-3:
        raise ValueError(f"the checkpoint's pos_embed differs from DiT's fixed sin-cos table by "
                         f"{error:.3g}; mlx-imgen rebuilds that table and cannot load learned "
                         "positions")


def _diffusers_config(state: dict, config: dict, hints: dict) -> BackboneConfig:
    """diffusers' DiT port: the same network, but its timestep frequencies use half - 1 in
    their exponent and its MLP norm eps is config.json's norm_eps (1e-5 by default)."""
    if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
        raise ValueError(f"the transformer's norm_type is {config['norm_type']}; only DiT's "
                         "ada_norm_zero is supported")
    if config.get("activation_fn", "gelu-approximate") != "gelu-approximate":
        raise ValueError(f"the transformer's activation is {config['activation_fn']}; only "
                         "gelu-approximate (DiT's) is supported")
    width, in_channels, patch, _ = state["pos_embed.proj.weight"].shape
    heads = _heads(width, hints, config.get("num_attention_heads"))
    head_dim = config.get("attention_head_dim")
    if head_dim is not None and heads * head_dim != width:
        raise ValueError(f"config.json's {heads} heads of {head_dim} do not make the width "
                         f"{width} of the weights")
    trained = config.get("sample_size")
    if trained is None and "pos_embed" in state:
        trained = math.isqrt(state["pos_embed"].shape[1]) * patch
    return backbone_config(
        _depth(state, _BLOCK), width, heads,
        hidden=state["transformer_blocks.0.ff.net.0.proj.weight"].shape[0], patch_size=patch,
        latent_size=_latent_size(hints, trained), in_channels=in_channels,
        out_channels=state["proj_out_2.weight"].shape[0] // (patch * patch),
        num_classes=state[CLASS_TABLE].shape[0] - 1,
        timestep_freq_shift=hints.get("timestep_freq_shift", 1.0),
        mlp_norm_eps=hints.get("mlp_norm_eps", config.get("norm_eps", 1e-5)))


def _diffusers_weights(state: dict) -> dict:
    """Check the per-block embedder copies against block 0's and fuse q, k, v into one matrix."""
    out = {}
    for key, value in state.items():
        copy = re.fullmatch(r"transformer_blocks\.(\d+)\.norm1\.emb\.(.+)", key)
        if copy and copy.group(1) != "0":
            reference = state.get(f"transformer_blocks.0.norm1.emb.{copy.group(2)}")
            if reference is None or not mx.array_equal(as_mlx(value), as_mlx(reference)):
                raise ValueError(f"transformer block {copy.group(1)} has its own timestep and "
                                 "class embedder, unlike block 0's; the backbone shares one, so "
                                 "this model cannot be converted")
            continue
        split = re.fullmatch(_BLOCK + r"attn1\.to_([qkv])\.(weight|bias)", key)
        if split is None:
            out[key] = value
            continue
        if split.group(2) != "q":
            continue
        block, kind = split.group(1), split.group(3)
        names = [f"transformer_blocks.{block}.attn1.to_{n}.{kind}" for n in "qkv"]
        missing = [n for n in names if n not in state]
        if missing:
            raise KeyMismatchError(f"The checkpoint lacks {', '.join(missing)}")
        # loaded when the map loads it, so a lazy map holds no float copy
        out[f"transformer_blocks.{block}.attn1.to_qkv.{kind}"] = concatenated(
            [state[n] for n in names])
    for key in state:
        split = re.fullmatch(_BLOCK + r"attn1\.to_([kv])\.(weight|bias)", key)
        if split and f"transformer_blocks.{split.group(1)}.attn1.to_q.{split.group(3)}" not in state:
            raise KeyMismatchError(f"The checkpoint has {key} but no matching to_q")
    return out


def weights_from_upstream(state: dict, lazy: bool = False) -> dict:
    """Backbone weights, or with `lazy` zero-argument callables that load them one by one."""
    state = {_strip(k): v for k, v in state.items()}
    if _is_diffusers(state):
        return map_keys(_diffusers_weights(state), DIFFUSERS_RULES, IGNORE, lazy=lazy)
    return map_keys(state, ORIGINAL_RULES, IGNORE, lazy=lazy)


# ---------------------------------------------------------------- sampling

def _guided_channels(config: BackboneConfig, sampling: dict) -> int:
    """Upstream guides the first 3 of the 4 latent channels ("for exact reproducibility" of
    its training-time code); "all" guides every latent channel, as diffusers' pipeline does."""
    value = sampling.get("cfg_channels", 3)
    if value == "all":
        return config.in_channels
    if not isinstance(value, int) or not 1 <= value <= config.in_channels:
        raise ValueError(f"cfg_channels must be 'all' or 1..{config.in_channels}, got {value!r}")
    return value


# upstream sample.py: 250 DDPM steps, cfg 4.0; the published FID uses cfg 1.5 and the EMA VAE
SAMPLING = {"sampler": "ddpm", "steps": 250, "cfg": 4.0, "cfg_channels": 3}
SAMPLERS = ("ddpm", "ddim")


def make_plan(config: BackboneConfig, sampling: dict):
    """A GaussianPlan: `sampler` ddpm or ddim, `steps` respaced steps, `cfg`, `cfg_channels`,
    and `eta` for DDIM."""
    from mlx_imgen.paradigms import GaussianPlan

    sampler = sampling.get("sampler") or "ddpm"
    if sampler not in SAMPLERS:
        raise ValueError(f"DiT samples with {' or '.join(SAMPLERS)}, not {sampler!r}")
    learned = (config.out_channels or config.in_channels) == 2 * config.in_channels
    return GaussianPlan(steps=sampling.get("steps") or 250, sampler=sampler,
                        cfg_scale=sampling["cfg"], eta=sampling.get("eta", 0.0),
                        variance="learned-range" if learned else "fixed-large",
                        guided_channels=_guided_channels(config, sampling))


# SiT: upstream sample.py's defaults; the SDE is the sampler of the published FID (2.06)
SIT_SAMPLING = {"sampler": "sde", "cfg": 4.0, "cfg_channels": 3}
SIT_SAMPLERS = ("sde", "euler", "heun", "dopri5")


def make_sit_plan(config: BackboneConfig, sampling: dict):
    """SiT's velocity on its linear interpolant, t = 0 noise to t = 1 data, t fed unscaled.
    `steps` (250 by default) counts solver steps; upstream's --num-sampling-steps N counts
    grid points, i.e. N - 1 ODE steps, and N model calls of the SDE (its last step included).
    dopri5 picks its own steps within `atol` and `rtol`."""
    from mlx_imgen.paradigms import Dopri5Plan, FlowPlan, SDEPlan

    sampler = sampling.get("sampler") or "sde"
    common = dict(cfg_scale=sampling["cfg"], guided_channels=_guided_channels(config, sampling))
    if sampler == "dopri5":
        if sampling.get("steps") is not None:
            raise ValueError("dopri5 chooses its own steps; leave out --steps, or pick "
                             "--sampler euler, heun or sde")
        return Dopri5Plan(atol=sampling.get("atol", 1e-6), rtol=sampling.get("rtol", 1e-3),
                          time_scale=1.0, t_noise=0.0, **common)
    steps = sampling.get("steps") or 250
    if sampler == "sde":
        return SDEPlan(steps=steps, **common)
    if sampler in ("euler", "heun"):
        return FlowPlan(steps=steps, solver=sampler, time_scale=1.0, t_noise=0.0, **common)
    raise ValueError(f"SiT samples with {', '.join(SIT_SAMPLERS)}, not {sampler!r}")


# SiT is DiT's network and key layout (its forward drops the sigma channels) with a flow sampler
SIT = SimpleNamespace(
    FAMILY="sit", PARADIGM=PARADIGM, AUTOENCODER=AUTOENCODER, LICENSE="MIT", SIZES=SIZES,
    SIGNATURE=SIGNATURE, SAMPLES_FROM=SAMPLES_FROM, is_checkpoint=is_checkpoint, infer_config=infer_config,
    weights_from_upstream=weights_from_upstream, config_for=config_for,
    SAMPLING=SIT_SAMPLING, make_plan=make_sit_plan)
