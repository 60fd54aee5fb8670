"""LlamaGen class-to-image (next-token): a causal configuration of the backbone and the key map
from FoundationVision/LlamaGen's GPT checkpoints."""

import re

from mlx_imgen.backbone import BackboneConfig
from mlx_imgen.convert.keymap import Rule, map_keys
from mlx_imgen.convert.upstream_config import grid_from_image_size
from mlx_imgen.nn import swiglu_hidden

FAMILY = "llamagen"
PARADIGM = "next-token"
AUTOENCODER = "vq"
# GPT_models in upstream gpt.py: layers, width, heads
SIZES = {"B": (12, 768, 12), "L": (24, 1024, 16), "XL": (36, 1280, 20), "XXL": (48, 1536, 24),
         "3B": (24, 3200, 32)}
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1536: 24, 2048: 32, 2560: 40, 3200: 32, 4096: 32}
SIGNATURE = ("tok_embeddings.weight", "layers.0.attention.wqkv.weight", "output.weight")

KEY_RULES = [
    Rule(r"cls_embedding\.embedding_table\.weight", "class_embed.weight"),
    Rule(r"tok_embeddings\.weight", "token_embed.weight"),
    Rule(r"layers\.(\d+)\.attention\.wqkv\.weight", r"blocks.\1.attn.qkv.weight"),
    Rule(r"layers\.(\d+)\.attention\.wo\.weight", r"blocks.\1.attn.out.weight"),
    Rule(r"layers\.(\d+)\.feed_forward\.w1\.weight", r"blocks.\1.mlp.gate.weight"),
    Rule(r"layers\.(\d+)\.feed_forward\.w3\.weight", r"blocks.\1.mlp.up.weight"),
    Rule(r"layers\.(\d+)\.feed_forward\.w2\.weight", r"blocks.\1.mlp.down.weight"),
    Rule(r"layers\.(\d+)\.attention_norm\.weight", r"blocks.\1.norm1.weight"),
    Rule(r"layers\.(\d+)\.ffn_norm\.weight", r"blocks.\1.norm2.weight"),
    Rule(r"norm\.weight", "norm.weight"),
    Rule(r"output\.weight", "head.weight"),
]
# RoPE tables and generation caches are rebuilt at run time
IGNORE = [r"freqs_cis", r"layers\.\d+\.attention\.kv_cache\.[kv]_cache"]
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# the weight set upstream samples from first: its released files hold "model"
SAMPLES_FROM = ("model", "ema")


def backbone_config(depth: int, width: int, heads: int, hidden: int, vocab_size: int = 16384,
                    num_classes: int = 1000, grid_size: int = 16, norm_eps: float = 1e-5,
                    rope_base: float = 10000.0) -> BackboneConfig:
    return BackboneConfig(
        depth=depth, width=width, heads=heads, mlp="swiglu", mlp_hidden=hidden,
        mlp_bias=False, norm="rms", norm_eps=norm_eps, fused_qkv=True, qkv_bias=False,
        out_bias=False, causal=True, input="tokens", grid_size=grid_size, vocab_size=vocab_size,
        conditioning="prefix", num_classes=num_classes, positions="rope2d", rope_base=rope_base,
        rope_prefix="zeros", head_bias=False)


def config_for(size: str, image_size: int) -> BackboneConfig:
    """The published architecture of a size at an image size (for random-weight profiling)."""
    depth, width, heads = SIZES[size]
    return backbone_config(depth, width, heads, swiglu_hidden(width), grid_size=image_size // 16)


def is_checkpoint(state: dict) -> bool:
    keys = {_strip(k) for k in state}
    return all(k in keys for k in SIGNATURE)


def _strip(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.replace(prefix, "")
    return key


def infer_config(state: dict, hints: dict) -> BackboneConfig:
    """Shapes give width, depth, vocabulary, classes and MLP width; heads and grid come from
    `hints` (the alias or --config), else heads from upstream's size table."""
    state = {_strip(k): v for k, v in state.items()}
    vocab, width = state["tok_embeddings.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k)))
    hidden = state["layers.0.feed_forward.w1.weight"].shape[0]
    num_classes = state["cls_embedding.embedding_table.weight"].shape[0] - 1
    heads = hints.get("heads") or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise ValueError(f"cannot tell the head count of a {width}-wide LlamaGen model; pass "
                         "--config '{\"heads\": N, \"image_size\": 256}'")
    if "image_size" not in hints and "grid_size" not in hints:
        raise ValueError("cannot tell the image size this LlamaGen checkpoint was trained at; "
                         "pass --config '{\"image_size\": 256}' (or 384)")
    grid = hints.get("grid_size") or grid_from_image_size(hints["image_size"])
    if width % heads:
        raise ValueError(f"{heads} heads do not divide the width {width}; fix --config heads")
    return backbone_config(depth, width, heads, hidden, vocab, num_classes, grid,
                           norm_eps=hints.get("norm_eps", 1e-5),
                           rope_base=hints.get("rope_base", 10000.0))


def weights_from_upstream(state: dict, lazy: bool = False) -> dict:
    """Backbone weights, or with `lazy` zero-argument callables that load them one by one."""
    state = {_strip(k): v for k, v in state.items()}
    return map_keys(state, KEY_RULES, IGNORE, lazy=lazy)


# upstream sample_c2i.py defaults; the published FIDs use cfg 1.65-2.0 and top-k 0
SAMPLING = {"cfg": 4.0, "top_k": 2000, "top_p": 1.0, "temperature": 1.0}


def make_plan(config: BackboneConfig, sampling: dict):
    from mlx_imgen.paradigms import NextTokenPlan

    return NextTokenPlan(num_tokens=config.num_tokens, cfg_scale=sampling["cfg"],
                         temperature=sampling["temperature"], top_k=sampling["top_k"],
                         top_p=sampling["top_p"])
