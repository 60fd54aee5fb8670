"""Halton-MaskGIT class-to-image (masked-token): a bidirectional adaLN configuration of the
backbone and the key map from valeoai/Halton-MaskGIT's checkpoints (LlamaGen's VQ-16 codes)."""

import math

from mlx_imgen.backbone import BackboneConfig
from mlx_imgen.nn import swiglu_hidden
from mlx_imgen.weights.keymap import KeyMap, Rule, count_blocks

from .base import Family, Layout

# Trainer.transformer_size upstream: depth, width, heads
SIZES = {"tiny": (6, 384, 6), "small": (12, 512, 6), "base": (12, 768, 12),
         "large": (24, 1024, 16), "xlarge": (28, 1152, 16)}

_LAYER = r"transformer\.layers\.(\d+)\."
KEYMAP = KeyMap(rules=(
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
))


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


def with_tied_head(state: dict) -> dict:
    """A file that kept the head tied to the token embedding once stores it under tok_emb only."""
    if "head.weight" not in state and "tok_emb.weight" in state:
        return {**state, "head.weight": state["tok_emb.weight"]}
    return state


def infer_config(state: dict, hints: dict) -> BackboneConfig:
    """Shapes give everything but the head count, which comes from `hints` (the alias or
    --config) or else from upstream's size table."""
    if "in_proj.weight" in state:
        raise ValueError("this Halton-MaskGIT checkpoint patchifies tokens (proj > 1), which no "
                         "published model does and mlx-imgen does not support")
    rows, width = state["tok_emb.weight"].shape
    codebook = rows - 1  # the last row embeds the mask token
    inner = state["transformer.layers.0.attn.wq.weight"].shape[0]
    positions = state["pos_emb.weight"].shape[0]
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise ValueError(f"the checkpoint has {positions} positions, which is not a square grid")
    if state["head.weight"].shape[0] != rows:
        raise ValueError(f"the head scores {state['head.weight'].shape[0]} ids but the token "
                         f"embedding has {rows} rows; upstream ties them, so this is not a "
                         "Halton-MaskGIT checkpoint")
    heads = MASKGIT.heads(width, hints, attention_width=inner)
    registers = state["reg_tokens.weight"].shape[0] if "reg_tokens.weight" in state else 0
    return backbone_config(count_blocks(state, _LAYER), width, heads,
                           state["transformer.layers.0.ff.w1.weight"].shape[0],
                           head_dim=inner // heads, codebook_size=codebook,
                           num_classes=state["cls_emb.weight"].shape[0] - 1, grid_size=grid,
                           registers=registers)


MASKGIT = Family(
    name="maskgit", title="Halton-MaskGIT", paradigm="masked-token", autoencoder="vq",
    license="MIT",
    layouts=(Layout("original", ("tok_emb.weight", "cls_emb.weight",
                                 "transformer.layers.0.attn.wq.weight",
                                 "last_norm.norm_final.weight"),
                    KEYMAP, infer_config, complete=with_tied_head),),
    sizes=SIZES, config_for=config_for, preset_table="maskgit",
    # upstream saves the model and its EMA as separate files (current.pth, ema.pth), each under
    # "model_state_dict"; a file that holds both sets converts "model"
    samples_from=("model", "ema"),
    heads_by_width={width: heads for _, width, heads in SIZES.values()})
