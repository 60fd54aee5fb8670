"""Janus-Pro text-to-image (next-token): the generation path of deepseek-ai's Janus-Pro as a
text-prefixed causal configuration of the backbone, and the key maps of its two hub layouts.

The language model is a Llama (RMSNorm, SwiGLU, rotate-half 1-D RoPE); a prompt's token ids are
its prefix. Image codes embed 8 wide (`gen_embed`) and an MLP with exact GELU lifts them to the
width (`gen_aligner`); the generation head is Linear, GELU, Linear on the final-normed state
(`gen_head`). Only this path is converted: the SigLIP understanding encoder with its aligner and
the text head (`lm_head`) are left out (see LEFT_OUT), and the VQ-16 weights in the same file are
converted as the autoencoder (see VQ_PREFIXES).

Layouts: "original" is deepseek-ai/Janus-Pro-*'s `multi_modality` checkpoint (config.json with
`language_config`); "transformers" is deepseek-community/Janus-Pro-*'s (JanusForConditional-
Generation, config.json with `text_config` and `vq_config`).
"""

import re

from mlx_imgen.backbone import BackboneConfig
from mlx_imgen.text.janus import JanusPrompts
from mlx_imgen.weights.keymap import KeyMap, Rule, concatenate_rows, count_blocks

from .base import TOKEN_STRIDE, Family, Layout, grid_from_image_size

# published language models: layers, width, heads (head_dim 128); SwiGLU width
SIZES = {"1B": (24, 2048, 16), "7B": (30, 4096, 32)}
SWIGLU = {"1B": 5632, "7B": 11008}
HEADS_BY_WIDTH = {2048: 16, 4096: 32}
HEAD_DIM = 128
TEXT_VOCAB = 102400
IMAGE_VOCAB = 16384       # VQ-16's codebook
CODE_DIM = 8              # gen_embed's width
CONTEXT = 16384           # language_config max_position_embeddings
IMAGE_SIZE = 384          # 24 x 24 tokens


def _language_rules(lm: str) -> tuple[Rule, ...]:
    """The Llama decoder under the prefix `lm` (a regex): q, k and v fuse into one qkv."""
    layer = lm + r"layers\.(\d+)\."
    return (
        Rule(lm + r"embed_tokens\.weight", "text_embed.weight"),
        Rule(tuple(layer + rf"self_attn\.{p}_proj\.weight" for p in "qkv"),
             r"blocks.\1.attn.qkv.weight", concatenate_rows),
        Rule(layer + r"self_attn\.o_proj\.weight", r"blocks.\1.attn.out.weight"),
        Rule(layer + r"mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2.weight"),
        Rule(layer + r"input_layernorm\.weight", r"blocks.\1.norm1.weight"),
        Rule(layer + r"post_attention_layernorm\.weight", r"blocks.\1.norm2.weight"),
        Rule(lm + r"norm\.weight", "norm.weight"),
    )


# what is left out of a conversion, by what it is (a converted folder records these names)
UNDERSTANDING = "understanding encoder (SigLIP vision tower and its aligner)"
TEXT_HEAD = "text head (lm_head)"
LEFT_OUT = {
    "original": {UNDERSTANDING: (r"vision_model\..*", r"aligner\..*"),
                 TEXT_HEAD: (r"language_model\.lm_head\.weight",)},
    "transformers": {UNDERSTANDING: (r"model\.vision_model\..*", r"model\.aligner\..*"),
                     TEXT_HEAD: (r"lm_head\.weight",)},
}
# the VQ-16 image tokenizer in the same file: converted as the autoencoder, not the backbone
VQ_PREFIXES = {"original": "gen_vision_model.", "transformers": "model.vqmodel."}
# rotary frequency buffers some transformers versions saved; rebuilt at run time
_INV_FREQ = r"(?:.+\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq"


def _ignore(layout: str) -> tuple[str, ...]:
    left_out = tuple(p for patterns in LEFT_OUT[layout].values() for p in patterns)
    return (*left_out, re.escape(VQ_PREFIXES[layout]) + ".*", _INV_FREQ)


ORIGINAL = KeyMap(
    rules=(
        *_language_rules(r"language_model\.model\."),
        Rule(r"gen_embed\.weight", "token_embed.weight"),
        Rule(r"gen_aligner\.layers\.0\.(weight|bias)", r"token_aligner.fc1.\1"),
        Rule(r"gen_aligner\.layers\.2\.(weight|bias)", r"token_aligner.fc2.\1"),
        Rule(r"gen_head\.output_mlp_projector\.(weight|bias)", r"head_proj.\1"),
        Rule(r"gen_head\.vision_head\.(weight|bias)", r"head.\1"),
    ),
    ignore=_ignore("original"),
)
TRANSFORMERS = KeyMap(
    rules=(
        *_language_rules(r"model\.language_model\."),
        Rule(r"model\.generation_embeddings\.weight", "token_embed.weight"),
        Rule(r"model\.generation_aligner\.fc1\.(weight|bias)", r"token_aligner.fc1.\1"),
        Rule(r"model\.generation_aligner\.hidden_layers\.0\.(weight|bias)",
             r"token_aligner.fc2.\1"),
        Rule(r"model\.generation_head\.proj_out\.(weight|bias)", r"head_proj.\1"),
        Rule(r"model\.generation_head\.vision_head\.(weight|bias)", r"head.\1"),
    ),
    ignore=_ignore("transformers"),
)

# per layout: the language model's prefix, the generation modules' keys, config.json's section
_NAMES = {
    "original": dict(lm="language_model.model.", embed="gen_embed.weight",
                     proj="gen_head.output_mlp_projector.weight",
                     head="gen_head.vision_head.weight", section="language_config"),
    "transformers": dict(lm="model.language_model.", embed="model.generation_embeddings.weight",
                         proj="model.generation_head.proj_out.weight",
                         head="model.generation_head.vision_head.weight", section="text_config"),
}


def left_out(state: dict, layout: str) -> list[str]:
    """The groups of LEFT_OUT that `state` (of `layout`) holds, for the conversion's record."""
    keys = list(state)
    return [name for name, patterns in LEFT_OUT[layout].items()
            if any(re.fullmatch(p, k) for p in patterns for k in keys)]


def backbone_config(depth: int, width: int, heads: int, hidden: int, *,
                    head_dim: int | None = None, text_vocab_size: int = TEXT_VOCAB,
                    vocab_size: int = IMAGE_VOCAB, token_embed_dim: int = CODE_DIM,
                    head_hidden: int | None = None, grid_size: int = IMAGE_SIZE // TOKEN_STRIDE,
                    norm_eps: float = 1e-6, rope_base: float = 10000.0,
                    context_length: int | None = CONTEXT) -> BackboneConfig:
    """Llama blocks (RMSNorm, bias-free fused qkv, SwiGLU, 1-D RoPE) over a text prefix, with
    the narrow image embedding, its aligner and the two-layer generation head (with biases)."""
    return BackboneConfig(
        depth=depth, width=width, heads=heads,
        head_dim=None if head_dim in (None, width // heads) else head_dim,
        mlp="swiglu", mlp_hidden=hidden, mlp_bias=False, norm="rms", norm_eps=norm_eps,
        fused_qkv=True, qkv_bias=False, out_bias=False, causal=True, input="tokens",
        grid_size=grid_size, vocab_size=vocab_size, token_embed_dim=token_embed_dim,
        conditioning="text", text_vocab_size=text_vocab_size, context_length=context_length,
        positions="rope1d", rope_base=rope_base, head_bias=True, head_hidden=head_hidden or width)


def config_for(size: str, image_size: int) -> BackboneConfig:
    """The published architecture of a size at an image size (for random-weight profiling)."""
    depth, width, heads = SIZES[size]
    return backbone_config(depth, width, heads, SWIGLU[size],
                           grid_size=grid_from_image_size(image_size))


def _shape(state: dict, key: str) -> tuple:
    return tuple(int(n) for n in state[key].shape)


def _image_size(layout: str, config: dict, hints: dict):
    """--config image_size or grid_size, else the size the checkpoint's vision config names
    (Janus-Pro generates at the understanding tower's 384 px), else 384."""
    if hints.get("grid_size"):
        return None
    if "image_size" in hints:
        return hints["image_size"]
    vision = config.get("vision_config") or {}
    size = (vision.get("params") or {}).get("image_size") if layout == "original" \
        else vision.get("image_size")
    return size if isinstance(size, int) and not isinstance(size, bool) else IMAGE_SIZE


def _infer(layout: str, state: dict, hints: dict) -> BackboneConfig:
    """Depth, width, vocabularies, SwiGLU and head widths from shapes; heads, norm eps, RoPE base
    and context from config.json's language section when given, else --config, else head_dim
    128 (both published sizes); a config.json value the shapes contradict is refused."""
    names = _NAMES[layout]
    lm = names["lm"]
    config = hints.get("config_json") or {}
    language = config.get(names["section"]) or {}
    text_vocab, width = _shape(state, lm + "embed_tokens.weight")
    depth = count_blocks(state, re.escape(lm) + r"layers\.(\d+)\.")
    q_rows = _shape(state, f"{lm}layers.0.self_attn.q_proj.weight")[0]
    k_rows = _shape(state, f"{lm}layers.0.self_attn.k_proj.weight")[0]
    if k_rows != q_rows:
        raise ValueError(f"this Janus checkpoint's keys are {k_rows} wide against {q_rows} for "
                         "queries (grouped-query attention), which mlx-imgen does not run")
    image_vocab, code_dim = _shape(state, names["embed"])
    head_hidden = _shape(state, names["proj"])[0]
    head_rows = _shape(state, names["head"])[0]
    if head_rows != image_vocab:
        raise ValueError(f"this Janus checkpoint's generation head scores {head_rows} codes but "
                         f"embeds {image_vocab}; pass an unmodified checkpoint")
    for key, value in (("hidden_size", width), ("num_hidden_layers", depth),
                       ("vocab_size", text_vocab)):
        if language.get(key) not in (None, value):
            raise ValueError(f"config.json's {names['section']} {key} {language[key]} disagrees "
                             f"with the weights' {value}; pass the config.json of these weights")
    if language.get("num_key_value_heads") not in (None, language.get("num_attention_heads")):
        raise ValueError("config.json asks for grouped-query attention (num_key_value_heads "
                         f"{language['num_key_value_heads']}), which mlx-imgen does not run")
    if language.get("rope_scaling"):
        raise ValueError(f"config.json's {names['section']} rope_scaling "
                         f"{language['rope_scaling']!r} is not supported; Janus-Pro uses none")
    given = language.get("num_attention_heads") or hints.get("heads")
    heads = JANUS.heads(width, {}, given or max(q_rows // HEAD_DIM, 1), attention_width=q_rows)
    image_size = _image_size(layout, config, hints)
    grid = hints.get("grid_size") or grid_from_image_size(image_size)
    return backbone_config(
        depth, width, heads, _shape(state, f"{lm}layers.0.mlp.gate_proj.weight")[0],
        head_dim=q_rows // heads, text_vocab_size=text_vocab, vocab_size=image_vocab,
        token_embed_dim=code_dim, head_hidden=head_hidden, grid_size=grid,
        norm_eps=float(language.get("rms_norm_eps", hints.get("norm_eps", 1e-6))),
        rope_base=float(language.get("rope_theta", hints.get("rope_base", 10000.0))),
        context_length=language.get("max_position_embeddings"))


def _layout(name: str, keymap: KeyMap) -> Layout:
    names = _NAMES[name]
    return Layout(name, (names["embed"], names["lm"] + "embed_tokens.weight", names["head"]),
                  keymap, lambda state, hints: _infer(name, state, hints))


JANUS = Family(
    name="janus", title="Janus-Pro", paradigm="next-token", autoencoder="vq",
    license="code MIT; weights DeepSeek Model License (use restrictions)",
    layouts=(_layout("original", ORIGINAL), _layout("transformers", TRANSFORMERS)),
    sizes=SIZES, config_for=config_for, preset_table="janus", samples_from=("model", "ema"),
    heads_by_width=HEADS_BY_WIDTH, condition="text", prompting=JanusPrompts.from_folder)
