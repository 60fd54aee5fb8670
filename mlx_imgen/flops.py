"""Analytic FLOPs of backbone forward passes and of whole sampling plans.

Convention: FLOPs = 2 x multiply-accumulates. Counted: linear layers, convolutions, and the two
attention matmuls (QK^T, AV). Left out: elementwise ops, norms, softmax and embedding lookups.
A per-sample layer (adaLN modulation, timestep MLP) counts once per sample, not per token.
"""

from dataclasses import dataclass

from .backbone import BackboneConfig
from .paradigms import MaskedTokenPlan, NextTokenPlan, diffusion
from .sana import SanaConfig
from .text.clip import CLIPTextConfig
from .text.gemma import GemmaConfig
from .uvit import TEXT_LENGTH, UVitConfig

# Sana's caption: Gemma-2's states of 300 positions (text.gemma_prompts.MAX_TOKENS)
SANA_TEXT_LENGTH = 300


@dataclass
class Flops:
    linear: float = 0.0
    attention: float = 0.0

    @property
    def total(self) -> float:
        return self.linear + self.attention

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.linear + other.linear, self.attention + other.attention)

    def __mul__(self, k: float) -> "Flops":
        return Flops(self.linear * k, self.attention * k)

    __rmul__ = __mul__


def forward_flops(config: BackboneConfig, length: int | None = None, context: int | None = None,
                  text_length: int = 0) -> Flops:
    """One sample's forward pass over `length` new positions attending to `context` positions.

    Defaults: a full pass (prefix, registers and every image token) attending to itself. A
    U-ViT (aMUSEd) counts its whole full pass (see uvit_forward_flops).
    """
    if isinstance(config, UVitConfig):
        return uvit_forward_flops(config, text_length or TEXT_LENGTH)
    if isinstance(config, SanaConfig):
        side = config.grid_size * config.patch_size
        return sana_forward_flops(config, side, side, text_length or SANA_TEXT_LENGTH)
    q = config.seq_len if length is None else length
    kv = q if context is None else context
    w, inner = config.width, config.heads * config.dims_per_head
    extra = config.prefix_tokens + config.registers
    # image tokens in this pass: a full pass holds them all, a decode step holds only new ones
    image_q = max(q - extra, 0) if context is None or context == q else q
    mlp_matrices = 3 if config.mlp == "swiglu" else 2
    per_token = 2 * (w * 3 * inner + inner * w + mlp_matrices * w * config.hidden)
    attention = 2 * 2 * q * kv * inner
    linear = per_token * q
    if config.context_dim and text_length:
        linear += 2 * (2 * q * w * inner + 2 * text_length * config.context_dim * inner)
        attention += 2 * 2 * q * text_length * inner
    linear *= config.depth
    attention *= config.depth
    if config.conditioning == "adaln":
        linear += config.depth * 2 * w * 6 * w + 2 * w * 2 * w
    if config.timestep:
        linear += 2 * (256 * w + w * w)
    if config.input == "patches":
        linear += 2 * image_q * config.patch_size ** 2 * config.in_channels * w
    head_rows = q if config.causal else image_q
    if config.token_embed_dim:
        # the aligner lifts image tokens only; a text prefix's rows are the caller's to leave
        # out of image_q (this function does not know a prompt's length: see _text_prefill)
        linear += 2 * image_q * (config.token_embed_dim * w + w * w)
    if config.head_hidden:  # a head MLP (Janus-Pro's gen_head)
        linear += 2 * head_rows * w * config.head_hidden
    linear += 2 * head_rows * (config.head_hidden or w) * config.output_dims
    return Flops(float(linear), float(attention))


def clip_text_flops(config, length: int) -> float:
    """One prompt row through a CLIP text tower (mlx_imgen.text.clip.CLIPTextConfig): q, k, v,
    out and the MLP per token, both attention matmuls, the projection of the pooled row."""
    w = config.width
    per_token = 2 * (4 * w * w + 2 * w * config.mlp_hidden)
    attention = 2 * 2 * length * length * w
    projection = 2 * w * (config.projection_dim or 0)
    return float(config.depth * (per_token * length + attention) + projection)


def uvit_forward_flops(config: UVitConfig, text_length: int = TEXT_LENGTH) -> Flops:
    """One image's full pass of aMUSEd's U-ViT over `text_length` text states: the text and
    condition projections, the conv stages (depthwise and strided convs included), the stages'
    cross-attention pairs, the transformer layers and the head."""
    c, h, e = config.block_out_channels, config.hidden_size, config.in_channels
    tokens, inner, text = config.num_tokens, config.inner_grid_size ** 2, text_length
    linear = 2 * text * config.encoder_hidden_size * h
    linear += 2 * (config.cond_embed_dim + config.micro_cond_embed_dim) * h + 2 * h * h
    linear += 2 * tokens * e * c                       # the token embedding's 1x1 conv
    if config.downsample:
        linear += 2 * inner * c * c * 4 * 2            # 2x2 conv down, transposed 2x2 conv up
    # each stage: ConvNeXt blocks (depthwise 3x3, two 4x Linears, the condition's Linear) and
    # cross-attention pairs (the text mapped to c where the widths differ; q, k, v, out twice)
    res_block = 2 * inner * c * 9 + 2 * inner * c * 4 * c * 2 + 2 * h * 2 * c
    cross_attention = 2 * (2 * inner * c * c + 2 * text * c * c)
    pair = 2 * cross_attention + (2 * text * h * c if h != c else 0)
    linear += 2 * config.num_res_blocks * (res_block + pair)
    attention = 2 * config.num_res_blocks * 2 * (2 * 2 * inner * text * c)
    linear += 2 * inner * c * h * 2                    # project to and from the hidden width
    # self-attention (q, k, v, out), cross-attention (q and out on the image, k and v on the
    # text), GEGLU (in to twice the hidden width, back), three modulations (per image)
    layer = (2 * inner * h * 4 * h + 2 * (2 * inner * h * h + 2 * text * h * h)
             + 2 * inner * 3 * h * config.intermediate_size + 3 * 2 * h * 2 * h)
    linear += config.num_hidden_layers * layer
    attention += config.num_hidden_layers * (2 * 2 * inner * inner * h + 2 * 2 * inner * text * h)
    linear += 2 * tokens * (c * e + e * config.codebook_size)
    return Flops(float(linear), float(attention))


def sana_forward_flops(config: SanaConfig, height: int, width: int, text_length: int) -> Flops:
    """One sample's pass of Sana's transformer over a `height` x `width` latent grid (latent
    cells, multiples of the patch size) with a caption of `text_length` states.

    Linear: the patch projection; the caption projection (two Linears over every caption
    position); the timestep MLP and the shared Linear to six modulations (once per sample);
    per block the self-attention's q, k, v and out, the cross-attention's q and out on the
    image and k and v on the caption, the Mix-FFN's pointwise expand to 2 x hidden, its 3x3
    depthwise conv (9 multiply-adds per channel and token) and its pointwise projection back;
    the final Linear. Attention: the linear kernel, per head of size d over N tokens, phi(K)^T V
    and phi(Q) (KV) (N d^2 each) and the normaliser, phi(K) summed over the tokens and
    dotted with each phi(q) (N d each): 2 N d (d + 1) multiply-adds; cross-attention's QK^T
    and AV over `text_length` keys. Masked caption positions are computed like the others."""
    p, w, hidden = config.patch_size, config.width, config.hidden
    tokens = (height // p) * (width // p)
    heads, d = config.num_attention_heads, config.attention_head_dim
    cross = config.num_cross_attention_heads * config.cross_attention_head_dim
    linear = 2 * tokens * p * p * config.in_channels * w
    linear += 2 * text_length * (config.caption_channels * w + w * w)
    linear += 2 * (256 * w + w * w) + 2 * w * 6 * w
    block = 2 * tokens * (w * 3 * heads * d + heads * d * w)             # self-attention
    block += 2 * (2 * tokens * w * cross + 2 * text_length * w * cross)  # cross-attention
    block += 2 * tokens * (w * 2 * hidden + 2 * hidden * 9 + hidden * w)  # Mix-FFN
    linear += config.num_layers * block
    linear += 2 * tokens * w * config.output_dims
    attention = config.num_layers * (2 * 2 * tokens * heads * d * (d + 1)
                                     + 2 * 2 * tokens * text_length * cross)
    return Flops(float(linear), float(attention))


def gemma_text_flops(config, length: int) -> Flops:
    """One row of `length` tokens through a Gemma-2 text encoder (mlx_imgen.text.gemma's
    GemmaConfig, no LM head): per layer q and o at the query heads' width, k and v at the
    key/value heads' (grouped-query attention), QK^T and AV of every query head over the whole
    row (masked and sliding-window positions are computed like the others), and the GeGLU
    MLP's gate, up and down matrices. The embedding lookup is free."""
    hid, d = config.hidden_size, config.head_dim
    q_width, kv_width = config.num_attention_heads * d, config.num_key_value_heads * d
    per_token = 2 * (hid * q_width + 2 * hid * kv_width + q_width * hid
                     + 3 * hid * config.intermediate_size)
    attention = 2 * 2 * length * length * q_width
    return Flops(float(config.num_hidden_layers * per_token * length),
                 float(config.num_hidden_layers * attention))


def text_encoder_flops(config, length: int) -> float:
    """One row of `length` tokens through a family's own text encoder, by its config's kind."""
    if isinstance(config, CLIPTextConfig):
        return clip_text_flops(config, length)
    if isinstance(config, GemmaConfig):
        return gemma_text_flops(config, length).total
    raise TypeError(f"no FLOPs rule for text encoder config {type(config).__name__}")


def _token_by_token(config: BackboneConfig, plan: NextTokenPlan, prompt_length: int = 0) -> Flops:
    """A prefill over the prefix (a text model's prompt of `prompt_length` tokens: its head runs
    at the last position only, whose logits give the first image token), then one pass per
    sampled token but the last, each attending to the cache so far."""
    if prompt_length:
        total = _text_prefill(config, prompt_length)
        prefix = prompt_length
    else:
        prefix = config.prefix_tokens
        total = forward_flops(config, prefix, prefix)
    for i in range(1, plan.num_tokens):
        total = total + forward_flops(config, 1, prefix + i)
    return total


def _text_prefill(config: BackboneConfig, length: int) -> Flops:
    """The blocks over a prompt of `length` tokens (embedded by lookup), and the head at its
    last position."""
    w = config.width
    blocks = forward_flops(config, length, length)
    # forward_flops counts the head (and the code aligner) at every row: keep the blocks only
    per_row = forward_flops(config, 1, 1)
    head_and_aligner = per_row.linear - _block_linear(config)
    return Flops(blocks.linear - length * head_and_aligner + _head_linear(config, w),
                 blocks.attention)


def _block_linear(config: BackboneConfig) -> float:
    w, inner = config.width, config.heads * config.dims_per_head
    matrices = 3 if config.mlp == "swiglu" else 2
    return float(config.depth * 2 * (w * 3 * inner + inner * w + matrices * w * config.hidden))


def _head_linear(config: BackboneConfig, w: int) -> float:
    if config.head_hidden:
        return 2.0 * (w * config.head_hidden + config.head_hidden * config.output_dims)
    return 2.0 * w * config.output_dims


def _full_passes(config: BackboneConfig, plan, text_length: int = 0) -> Flops:
    """Full passes over every position, cross-attending to `text_length` text states (0: the
    family's length); an adaptive diffusion plan (dopri5) counts the passes its last run
    used."""
    return forward_flops(config, text_length=text_length) * plan.forward_passes()


# how each plan type spends its transformer passes, as paradigms.SAMPLERS dispatches its loops
PLAN_FLOPS = {NextTokenPlan: _token_by_token, MaskedTokenPlan: _full_passes,
              **{plan: _full_passes for plan in diffusion.PLANS}}


def plan_flops(config: BackboneConfig, plan, prompt_length: int = 0) -> Flops:
    """FLOPs of the transformer passes that sample one image, CFG included; a text model's
    prompt (template and BOS included) is `prompt_length` tokens long, and a cross-attention
    model's caption `prompt_length` states (0: its family's length, 300 for Sana)."""
    guidance = 2 if plan.cfg_scale != 1.0 else 1
    for kind in type(plan).__mro__:
        if kind in PLAN_FLOPS:
            if prompt_length:
                return PLAN_FLOPS[kind](config, plan, prompt_length) * guidance
            return PLAN_FLOPS[kind](config, plan) * guidance
    raise TypeError(f"no FLOPs rule for plan {type(plan).__name__}")
