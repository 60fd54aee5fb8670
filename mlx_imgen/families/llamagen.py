"""LlamaGen class-to-image (next-token): a causal configuration of the backbone and the key map
from FoundationVision/LlamaGen's GPT checkpoints."""

from mlx_imgen.backbone import BackboneConfig
from mlx_imgen.nn import swiglu_hidden
from mlx_imgen.weights.keymap import KeyMap, Rule, count_blocks

from .base import Family, Layout, grid_from_image_size

# GPT_models in upstream gpt.py: layers, width, heads
SIZES = {"B": (12, 768, 12), "L": (24, 1024, 16), "XL": (36, 1280, 20), "XXL": (48, 1536, 24),
         "3B": (24, 3200, 32)}
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 20, 1536: 24, 2048: 32, 2560: 40, 3200: 32, 4096: 32}

KEYMAP = KeyMap(
    rules=(
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
    ),
    # RoPE tables and generation caches are rebuilt at run time
    ignore=(r"freqs_cis", r"layers\.\d+\.attention\.kv_cache\.[kv]_cache"),
)


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


def infer_config(state: dict, hints: dict) -> BackboneConfig:
    """Shapes give width, depth, vocabulary, classes and MLP width; heads and grid come from
    `hints` (the alias or --config), else heads from upstream's size table."""
    vocab, width = state["tok_embeddings.weight"].shape
    heads = LLAMAGEN.heads(width, hints)
    if "image_size" not in hints and "grid_size" not in hints:
        raise ValueError("cannot tell the image size this LlamaGen checkpoint was trained at; "
                         "pass --config '{\"image_size\": 256}' (or 384)")
    grid = hints.get("grid_size") or grid_from_image_size(hints["image_size"])
    return backbone_config(count_blocks(state, r"layers\.(\d+)\."), width, heads,
                           state["layers.0.feed_forward.w1.weight"].shape[0], vocab,
                           state["cls_embedding.embedding_table.weight"].shape[0] - 1, grid,
                           norm_eps=hints.get("norm_eps", 1e-5),
                           rope_base=hints.get("rope_base", 10000.0))


LLAMAGEN = Family(
    name="llamagen", title="LlamaGen", paradigm="next-token", autoencoder="vq", license="MIT",
    layouts=(Layout("original", ("tok_embeddings.weight", "layers.0.attention.wqkv.weight",
                                 "output.weight"), KEYMAP, infer_config),),
    sizes=SIZES, config_for=config_for, preset_table="llamagen",
    # the weight set upstream samples from first: its released files hold "model"
    samples_from=("model", "ema"), heads_by_width=HEADS_BY_WIDTH)
