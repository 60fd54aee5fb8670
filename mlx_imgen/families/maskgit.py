"""Halton-MaskGIT class-to-image (masked-token): a bidirectional adaLN configuration of the
backbone and the key map from valeoai/Halton-MaskGIT's checkpoints (LlamaGen's VQ-16 codes)."""

import math
import re

from mlx_imgen.backbone import BackboneConfig
from mlx_imgen.convert.keymap import Rule, map_keys
from mlx_imgen.nn import swiglu_hidden

FAMILY = "maskgit"
PARADIGM = "masked-token"
AUTOENCODER = "vq"
# Trainer.transformer_size upstream: depth, width, heads
SIZES = {"tiny": (6, 384, 6), "small": (12, 512, 6), "base": (12, 768, 12),
         "large": (24, 1024, 16), "xlarge": (28, 1152, 16)}
HEADS_BY_WIDTH = {width: heads for _, width, heads in SIZES.values()}
SIGNATURE = ("tok_emb.weight", "cls_emb.weight", "transformer.layers.0.attn.wq.weight",
             "last_norm.norm_final.weight")

_LAYER = r"transformer\.layers\.(\d+)\."
KEY_RULES = [
    Rule(r"cls_emb\.weight", "class_embed.weight"),
    Rule(r"tok_emb\.weight", "token_embed.weight"),
    Rule(r"pos_emb\.weight", "pos_embed.weight"),
    Rule(r"reg_tokens\.weight", "register_tokens"),
    Rule(_LAYER + r"mlp\.1\.(weight|bias)", r"blocks.\1.modulation.\2"),
    Rule(_LAYER + r"ln1\.weight", r"blocks.\1.norm1.weight"),
    Rule(_LAYER + r"ln2\.weight", r"blocks.\1.norm2.weight"),
    Rule(_LAYER + r"attn\.wq\.weight", r"blocks.\1.attn.q.weight"),
    Rule(_LAYER + r"attn\.wk\.weight", r"blocks.\1.attn.k.weight"),
    Rule(_LAYER + r"attn\.wv\.weight", r"blocks.\1.attn.v.weight"),
    Rule(_LAYER + r"attn\.wo\.weight", r"blocks.\1.attn.out.weight"),
    Rule(_LAYER + r"ff\.w1\.weight", r"blocks.\1.mlp.gate.weight"),
    Rule(_LAYER + r"ff\.w3\.weight", r"blocks.\1.mlp.up.weight"),
    Rule(_LAYER + r"ff\.w2\.weight", r"blocks.\1.mlp.down.weight"),
    Rule(r"last_norm\.norm_final\.(weight|bias)", r"norm.\1"),
    Rule(r"last_norm\.mlp\.1\.(weight|bias)", r"final_modulation.\1"),
    # tied to tok_emb upstream; the file stores it under both names
    Rule(r"head\.(weight|bias)", r"head.\1"),
]
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# upstream saves the model and its EMA as separate files (current.pth, ema.pth), each under
# "model_state_dict"; a file that holds both sets converts "model"
SAMPLES_FROM = ("model", "ema")


def backbone_config(depth: int, width: int, heads: int, hidden: int, *, head_dim: int | None = None,
                    codebook_size: int = 16384, num_classes: int = 1000, grid_size: int = 16,
                    registers: int = 1) -> BackboneConfig:
    # The register goes before the image tokens here and after them upstream; without a
    # position or a mask in the blocks, attention does not see the difference.
    return BackboneConfig(
        depth=depth, width=width, heads=heads, head_dim=head_dim or width // heads,
        mlp="swiglu", mlp_hidden=hidden, mlp_bias=False, norm="rms", norm_eps=1e-5,
        norm_affine=True, final_norm_affine=True, final_norm_bias=True, fused_qkv=False,
        qkv_bias=False, out_bias=False, qk_norm="rms", qk_norm_per_head=False, qk_norm_eps=1e-5,
        causal=False, input="tokens", grid_size=grid_size, vocab_size=codebook_size,
        mask_token=True, predict_mask=True, conditioning="adaln", num_classes=num_classes,
        registers=registers, positions="learned", head_bias=True)


def config_for(size: str, image_size: int) -> BackboneConfig:
    """The published architecture of a size at an image size (for random-weight profiling)."""
    depth, width, heads = SIZES[size]
    return backbone_config(depth, width, heads, swiglu_hidden(width), grid_size=image_size // 16)


def _strip(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def is_checkpoint(state: dict) -> bool:
    keys = {_strip(k) for k in state}
    return all(k in keys for k in SIGNATURE)


def infer_config(state: dict, hints: dict) -> BackboneConfig:
    """Shapes give everything but the head count, which comes from `hints` (the alias or
    --config) or else from upstream's size table."""
    state = {_strip(k): v for k, v in state.items()}
    if "in_proj.weight" in state:
        raise ValueError("this Halton-MaskGIT checkpoint patchifies tokens (proj > 1), which no "
                         "published model does and mlx-imgen does not support")
    rows, width = state["tok_emb.weight"].shape
    codebook = rows - 1  # the last row embeds the mask token
    depth = 1 + max(int(m.group(1)) for k in state
                    if (m := re.match(r"transformer\.layers\.(\d+)\.", k)))
    inner = state["transformer.layers.0.attn.wq.weight"].shape[0]
    hidden = state["transformer.layers.0.ff.w1.weight"].shape[0]
    positions = state["pos_emb.weight"].shape[0]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(f"the checkpoint has {positions} positions, which is not a square grid")
    head_rows = state["head.weight"].shape[0] if "head.weight" in state else rows
    if head_rows != rows:
        raise ValueError(f"the head scores {head_rows} ids but the token embedding has {rows} "
                         "rows; upstream ties them, so this is not a Halton-MaskGIT checkpoint")
    heads = hints.get("heads") or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise ValueError(f"cannot tell the head count of a {width}-wide Halton-MaskGIT model; "
                         "pass --config '{\"heads\": N}'")
    if inner % heads:
        raise ValueError(f"{heads} heads do not divide the attention width {inner}; fix "
                         "--config heads")
    registers = state["reg_tokens.weight"].shape[0] if "reg_tokens.weight" in state else 0
    return backbone_config(depth, width, heads, hidden, head_dim=inner // heads,
                           codebook_size=codebook,
                           num_classes=state["cls_emb.weight"].shape[0] - 1, grid_size=grid,
                           registers=registers)


def weights_from_upstream(state: dict, lazy: bool = False) -> dict:
    """Backbone weights, or with `lazy` zero-argument callables that load them one by one."""
    state = {_strip(k): v for k, v in state.items()}
    if "head.weight" not in state and "tok_emb.weight" in state:
        state["head.weight"] = state["tok_emb.weight"]  # a file that kept the tie once
    return map_keys(state, KEY_RULES, lazy=lazy)


# Sampler presets. cfg is upstream's w: logits = (1 + w) cond - w uncond, so 0 turns guidance
# off. temperature multiplies the logits (larger is sharper), first and last step.
PRESETS = {
    # README quick start, exemple.py and app.py: the published sampling example
    "halton": dict(order="halton", steps=32, cfg=2.0, temperature=(1.0, 1.2), randomize=True),
    # Config/base_cls2img.yaml
    "halton-config": dict(order="halton", steps=32, cfg=3.0, temperature=(1.0, 1.0)),
    # launch/eval_test_to_img.sh, the FID evaluation of the large 384 px model
    "halton-eval": dict(order="halton", steps=32, cfg=0.5, temperature=(1.0, 1.0), warmup=1),
    # ConfidenceSampler with main.py's defaults (MaskGIT's confidence order)
    "confidence": dict(order="confidence", steps=12, cfg=3.0, temperature=(1.0, 1.0),
                       choice_temperature=4.5),
}
SAMPLING = {"sampler": "halton"}


def make_plan(config: BackboneConfig, sampling: dict):
    """A MaskedTokenPlan from a preset (`sampler`) and overrides `steps`, `cfg` (w),
    `temperature` (one value for every step, or a first/last pair) and `top_k`. The preset's
    step count is lowered to the token count of a smaller grid; a given `steps` is not."""
    from mlx_imgen.paradigms import MaskedTokenPlan

    name = sampling.get("sampler") or "halton"
    if name not in PRESETS:
        raise ValueError(f"unknown sampler {name!r} for Halton-MaskGIT; choose one of "
                         f"{', '.join(PRESETS)}")
    if sampling.get("top_p") not in (None, 1.0):
        raise ValueError("Halton-MaskGIT's samplers have no top-p; use --top-k instead")
    preset = PRESETS[name]
    w = sampling.get("cfg", preset["cfg"])
    temperature = sampling.get("temperature", preset["temperature"])
    steps = sampling.get("steps")
    if steps is None:  # each step fixes at least one token
        steps = min(preset["steps"], config.num_tokens)
    elif steps > config.num_tokens:
        raise ValueError(f"--steps {steps} exceeds this model's {config.num_tokens} tokens "
                         f"(each step fixes at least one); use at most {config.num_tokens}")
    common = dict(num_tokens=config.num_tokens, steps=steps,
                  cfg_scale=1.0 + w, temperature=temperature, temperature_mode="multiply",
                  top_k=sampling.get("top_k") or 0, schedule="arccos")
    if preset["order"] == "halton":
        # only this step's slice is written (upstream main since commit fcdc837)
        return MaskedTokenPlan(**common, order="halton", progress="after",
                               randomize_order=preset.get("randomize", False),
                               temperature_warmup=preset.get("warmup", 0))
    # upstream's confidence sampler ramps w from 0, counts from linspace(0, 1, steps), and
    # writes the fresh sample over the revealed tokens it keeps selected
    return MaskedTokenPlan(**common, order="confidence", progress="linspace", cfg_ramp=True,
                           choice_temperature=preset["choice_temperature"],
                           rewrite_revealed=True)
