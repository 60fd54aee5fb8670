"""aMUSEd's U-ViT (diffusers' UVit2DModel): a masked-token text-to-image transformer whose
middle is the shared backbone's Blocks, between convolutional stages at the token grid.

Tokens embed (Embedding, RMSNorm, 1x1 conv), an optional 2x2 stride-2 conv halves the grid, then
ConvNeXt blocks alternate with pairs of cross-attentions to the text; the backbone's Blocks (self-
attention, cross-attention to the projected text, GEGLU, each norm modulated by the pooled text
and micro-conditions) run at the hidden width; the up stage mirrors the down stage with a 2x2
stride-2 transposed conv, and a 1x1-conv head scores the codebook. Feature maps are NHWC.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from .backbone import BackboneConfig, Block, compute_dtype
from .configs import DictConfig
from .nn import Attention, ConvNeXtBlock, RMSNorm, timestep_frequencies

# aMUSEd pads every prompt to CLIP's context of 77 tokens, so every pass attends to 77 states
TEXT_LENGTH = 77


@dataclass
class UVitConfig(DictConfig):
    """diffusers' UVit2DModel config, under its names but `embed_vocab_size` (its `vocab_size`:
    the token embedding's rows, codebook and mask token; `vocab_size` here is what logits score)."""
    hidden_size: int = 1024
    use_bias: bool = False
    cond_embed_dim: int = 768            # the pooled text's width
    micro_cond_encode_dim: int = 256     # sinusoidal features per micro-condition
    micro_cond_embed_dim: int = 1280     # all micro-conditions' features (5 x 256)
    encoder_hidden_size: int = 768       # the text states' width
    embed_vocab_size: int = 8256         # codebook + mask token, rounded up
    codebook_size: int = 8192
    in_channels: int = 768               # the token embedding's width
    block_out_channels: int = 768        # the conv stages' width
    num_res_blocks: int = 3
    downsample: bool = False
    upsample: bool = False
    block_num_heads: int = 12
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    intermediate_size: int = 2816
    layer_norm_eps: float = 1e-6
    ln_elementwise_affine: bool = True
    sample_size: int = 16                # the token grid's side

    def __post_init__(self):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "sample_size",
                     "block_out_channels", "block_num_heads", "codebook_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"{self.num_attention_heads} heads")
        if self.block_out_channels % self.block_num_heads:
            raise ValueError(f"block_out_channels {self.block_out_channels} is not divisible "
                             f"by {self.block_num_heads} heads")
        if self.micro_cond_embed_dim % self.micro_cond_encode_dim:
            raise ValueError(f"micro_cond_embed_dim {self.micro_cond_embed_dim} is not a "
                             f"multiple of micro_cond_encode_dim {self.micro_cond_encode_dim}")
        if self.embed_vocab_size <= self.codebook_size:
            raise ValueError(f"the token embedding's {self.embed_vocab_size} rows leave no row "
                             f"for the mask token after the {self.codebook_size} codes")
        if self.downsample != self.upsample:
            raise ValueError("downsample and upsample go together: the logits are scored on "
                             "the token grid")
        if self.downsample and self.sample_size % 2:
            raise ValueError(f"a downsampling U-ViT needs an even token grid, not "
                             f"{self.sample_size}")

    @property
    def grid_size(self) -> int:
        return self.sample_size

    @property
    def num_tokens(self) -> int:
        return self.sample_size * self.sample_size

    @property
    def mask_id(self) -> int:
        """The scheduler's mask_token_id: the embedding's last row (8255)."""
        return self.embed_vocab_size - 1

    @property
    def vocab_size(self) -> int:
        return self.codebook_size

    @property
    def input(self) -> str:
        return "tokens"

    @property
    def width(self) -> int:
        """The transformer layers' width (what a quantization group size must divide)."""
        return self.hidden_size

    @property
    def micro_conditions(self) -> int:
        """How many micro-conditions a call passes (5: width, height, crop top and left,
        aesthetic score)."""
        return self.micro_cond_embed_dim // self.micro_cond_encode_dim

    @property
    def inner_grid_size(self) -> int:
        """The grid the transformer layers run on."""
        return self.sample_size // 2 if self.downsample else self.sample_size

    def backbone(self) -> BackboneConfig:
        """The transformer layers: RMSNorm before attention and cross-attention, a bias-free
        LayerNorm before the GEGLU, every norm modulated continuously by the condition."""
        return BackboneConfig(
            depth=self.num_hidden_layers, width=self.hidden_size, heads=self.num_attention_heads,
            mlp="geglu", mlp_hidden=self.intermediate_size, mlp_bias=self.use_bias,
            norm="rms", norm_eps=self.layer_norm_eps, mlp_norm="layer",
            norm_affine=self.ln_elementwise_affine, norm_bias=self.use_bias, fused_qkv=True,
            qkv_bias=self.use_bias, out_bias=self.use_bias, causal=False, input="tokens",
            grid_size=self.inner_grid_size, vocab_size=self.codebook_size,
            conditioning="adaln", modulation="continuous", modulation_bias=self.use_bias,
            context_dim=self.hidden_size, positions="none")


class ConditionEmbedding(nn.Module):
    """Linear, SiLU, Linear: the pooled text and micro-condition features to the hidden width."""

    def __init__(self, in_dims: int, dims: int, bias: bool):
        super().__init__()
        self.linear_1 = nn.Linear(in_dims, dims, bias=bias)
        self.linear_2 = nn.Linear(dims, dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))


class TokenEmbedding(nn.Module):
    """Token ids (B, g, g) to an NHWC map: Embedding, RMSNorm, a 1x1 conv (as a Linear)."""

    def __init__(self, cfg: UVitConfig):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.embed_vocab_size, cfg.in_channels)
        self.norm = RMSNorm(cfg.in_channels, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        self.proj = nn.Linear(cfg.in_channels, cfg.block_out_channels, bias=cfg.use_bias)

    def __call__(self, tokens: mx.array) -> mx.array:
        return self.proj(self.norm(self.embeddings(tokens)))


class TextCrossAttentions(nn.Module):
    """diffusers' SkipFFTransformerBlock: the text mapped to the stage's width (through a SiLU,
    where the widths differ), then two pre-RMSNorm cross-attentions to it, no feed-forward."""

    def __init__(self, cfg: UVitConfig):
        super().__init__()
        c = cfg.block_out_channels
        if cfg.hidden_size != c:
            self.kv_mapper = nn.Linear(cfg.hidden_size, c, bias=cfg.use_bias)
        attention = dict(kv_dims=c, qkv_bias=cfg.use_bias, out_bias=cfg.use_bias)
        # upstream fixes these norms' eps and scale whatever the model's config says
        self.norm1 = RMSNorm(c, 1e-6)
        self.attn1 = Attention(c, cfg.block_num_heads, **attention)
        self.norm2 = RMSNorm(c, 1e-6)
        self.attn2 = Attention(c, cfg.block_num_heads, **attention)

    def __call__(self, x: mx.array, context: mx.array) -> mx.array:
        if "kv_mapper" in self:
            context = self.kv_mapper(nn.silu(context))
        x = x + self.attn1(self.norm1(x), context=context)
        return x + self.attn2(self.norm2(x), context=context)


class DoublingTransposedConv(nn.ConvTranspose2d):
    """A 2x2 stride-2 transposed convolution (nn.ConvTranspose2d's weights and keys) computed as
    one matmul: its windows do not overlap, so each pixel's 2x2 output block is its channels
    times one matrix. MLX's CPU ConvTranspose2d took 2 s for aMUSEd-512's up stage at batch 2,
    more than a third of a sampling step; this takes milliseconds."""

    def __init__(self, channels: int, bias: bool):
        super().__init__(channels, channels, 2, stride=2, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, _ = x.shape
        out_channels, _, _, in_channels = self.weight.shape
        blocks = x @ self.weight.transpose(3, 1, 2, 0).reshape(in_channels, 4 * out_channels)
        y = blocks.reshape(batch, height, width, 2, 2, out_channels).transpose(0, 1, 3, 2, 4, 5)
        y = y.reshape(batch, 2 * height, 2 * width, out_channels)
        return y + self.bias if "bias" in self else y


class UVitStage(nn.Module):
    """ConvNeXt blocks alternating with text cross-attention pairs; the down stage may first
    halve the grid (RMSNorm, 2x2 stride-2 conv), the up stage then double it (RMSNorm, 2x2
    stride-2 transposed conv)."""

    def __init__(self, cfg: UVitConfig, *, downsample: bool = False, upsample: bool = False):
        super().__init__()
        c = cfg.block_out_channels
        if downsample or upsample:
            self.resample_norm = RMSNorm(c, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        if downsample:
            # upstream pads one row and column at the far edges first: a 2x2 stride-2 window
            # never reads them on an even grid, which the config requires
            self.downsample = nn.Conv2d(c, c, 2, stride=2, bias=cfg.use_bias)
        self.res_blocks = [ConvNeXtBlock(c, cfg.hidden_size, eps=cfg.layer_norm_eps,
                                         affine=cfg.ln_elementwise_affine, bias=cfg.use_bias)
                           for _ in range(cfg.num_res_blocks)]
        self.attention_blocks = [TextCrossAttentions(cfg) for _ in range(cfg.num_res_blocks)]
        if upsample:
            self.upsample = DoublingTransposedConv(c, bias=cfg.use_bias)

    def __call__(self, x: mx.array, cond: mx.array, context: mx.array) -> mx.array:
        if "downsample" in self:
            x = self.downsample(self.resample_norm(x))
        batch, height, width, channels = x.shape
        for res_block, attention_block in zip(self.res_blocks, self.attention_blocks):
            x = res_block(x, cond)
            x = attention_block(x.reshape(batch, height * width, channels), context)
            x = x.reshape(batch, height, width, channels)
        if "upsample" in self:
            x = self.upsample(self.resample_norm(x))
        return x


class MaskedTokenHead(nn.Module):
    """diffusers' ConvMlmLayer: 1x1 conv to the embedding width, RMSNorm, 1x1 conv to the
    codebook (both as Linears)."""

    def __init__(self, cfg: UVitConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.block_out_channels, cfg.in_channels, bias=cfg.use_bias)
        self.norm = RMSNorm(cfg.in_channels, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        self.logits = nn.Linear(cfg.in_channels, cfg.codebook_size, bias=cfg.use_bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.logits(self.norm(self.proj(x)))


class UVit(nn.Module):
    """`UVit(config)(tokens (B, N), context=(B, L, encoder_hidden_size), pooled=(B,
    cond_embed_dim), micro_conditions=(B, 5))` -> logits (B, N, codebook_size). Masked
    positions hold `mask_id`."""

    def __init__(self, config: UVitConfig):
        super().__init__()
        self.config = cfg = config
        self.encoder_proj = nn.Linear(cfg.encoder_hidden_size, cfg.hidden_size, bias=cfg.use_bias)
        self.encoder_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        self.cond_embed = ConditionEmbedding(cfg.cond_embed_dim + cfg.micro_cond_embed_dim,
                                             cfg.hidden_size, cfg.use_bias)
        self.embed = TokenEmbedding(cfg)
        self.down = UVitStage(cfg, downsample=cfg.downsample)
        self.project_to_hidden_norm = RMSNorm(cfg.block_out_channels, cfg.layer_norm_eps,
                                              cfg.ln_elementwise_affine)
        self.project_to_hidden = nn.Linear(cfg.block_out_channels, cfg.hidden_size,
                                           bias=cfg.use_bias)
        backbone = cfg.backbone()
        self.blocks = [Block(backbone) for _ in range(backbone.depth)]
        self.project_from_hidden_norm = RMSNorm(cfg.hidden_size, cfg.layer_norm_eps,
                                                cfg.ln_elementwise_affine)
        self.project_from_hidden = nn.Linear(cfg.hidden_size, cfg.block_out_channels,
                                             bias=cfg.use_bias)
        self.up = UVitStage(cfg, upsample=cfg.upsample)
        self.head = MaskedTokenHead(cfg)

    @property
    def dtype(self) -> mx.Dtype:
        return compute_dtype(self)

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def condition(self, pooled: mx.array, micro_conditions: mx.array) -> mx.array:
        """The per-sample condition, already through the SiLU every modulation applies first:
        the pooled text, then each micro-condition's sinusoidal features ([cos, sin])."""
        cfg = self.config
        batch = pooled.shape[0]
        features = timestep_frequencies(micro_conditions.reshape(-1), cfg.micro_cond_encode_dim)
        features = features.reshape(batch, -1)
        if features.shape[1] != cfg.micro_cond_embed_dim:
            raise ValueError(f"the model takes {cfg.micro_conditions} micro-conditions a "
                             f"sample, got {micro_conditions.shape[-1]}")
        inputs = mx.concatenate([pooled.astype(self.dtype), features.astype(self.dtype)], axis=1)
        return nn.silu(self.cond_embed(inputs))

    def __call__(self, tokens: mx.array, *, context: mx.array, pooled: mx.array,
                 micro_conditions: mx.array) -> mx.array:
        cfg = self.config
        batch = tokens.shape[0]
        context = self.encoder_norm(self.encoder_proj(context.astype(self.dtype)))
        cond = self.condition(pooled, micro_conditions)
        g = cfg.grid_size
        x = self.down(self.embed(tokens.reshape(batch, g, g)), cond, context)
        _, height, width, channels = x.shape
        h = self.project_to_hidden(self.project_to_hidden_norm(x.reshape(batch, -1, channels)))
        for block in self.blocks:
            h = block(h, cond, context=context)
        h = self.project_from_hidden(self.project_from_hidden_norm(h))
        x = self.up(h.reshape(batch, height, width, channels), cond, context)
        return self.head(x.reshape(batch, cfg.num_tokens, channels))
