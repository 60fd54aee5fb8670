"""The one Transformer stack. Every family and every paradigm is a `BackboneConfig` of it."""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from .configs import DictConfig
from .nn import (Attention, GeluMLP, KVCache, LearnedPositions, MixFFN, PatchEmbed, Rope1D,
                 TimestepEmbedder, make_mlp, make_norm, rope_2d_table, sincos_2d)
from .nn.attention import KERNELS


@dataclass
class BackboneConfig(DictConfig):
    depth: int
    width: int
    heads: int
    head_dim: int | None = None       # default width // heads
    # block
    # "gelu_tanh" | "gelu" | "quick_gelu" | "swiglu" | "geglu" | "mixffn" (Sana's Mix-FFN: the
    # block must be called with the token grid)
    mlp: str = "gelu_tanh"
    mlp_hidden: int | None = None     # default 4 * width
    mlp_bias: bool = True
    norm: str = "layer"               # "layer" | "rms"
    norm_eps: float = 1e-6
    mlp_norm_eps: float | None = None  # the norm before the MLP, if it differs (diffusers' DiT: 1e-5)
    mlp_norm: str | None = None       # that norm's kind, if it differs (aMUSEd: "layer")
    norm_bias: bool = True            # the blocks' affine LayerNorms have a bias (aMUSEd: none)
    norm_affine: bool = True          # block norms; adaLN models usually have none
    final_norm_affine: bool = True
    final_norm_bias: bool = False     # an RMSNorm bias (Halton-MaskGIT); LayerNorm's follows affine
    fused_qkv: bool = True
    qkv_bias: bool = True
    out_bias: bool = True
    qk_norm: str | None = None        # None | "layer" | "rms"
    qk_norm_per_head: bool = True     # else over the whole projection, without a learned scale
    qk_norm_eps: float = 1e-6
    attention_kernel: str = "softmax"  # self-attention's: "softmax" | "relu_linear" (Sana)
    # cross-attention: its heads, head size and q/k/v bias where they differ from
    # self-attention's (Sana 600M: self 36 x 32, cross 16 x 72), and whether a norm precedes it
    cross_heads: int | None = None
    cross_head_dim: int | None = None
    cross_qkv_bias: bool | None = None
    cross_norm: bool = True
    causal: bool = False
    # input: discrete codes or continuous latent patches on a grid_size x grid_size grid
    input: str = "tokens"             # "tokens" | "patches"
    grid_size: int = 16
    vocab_size: int = 16384
    # image codes embed this narrow, then an aligner MLP (fc1, exact GELU, fc2) lifts them to
    # the width (Janus-Pro's 8-wide gen_embed); None embeds straight at the width
    token_embed_dim: int | None = None
    mask_token: bool = False          # one extra embedding row (id vocab_size) for masked tokens
    predict_mask: bool = False        # the head also scores the mask id (Halton-MaskGIT)
    in_channels: int = 4
    patch_size: int = 2
    out_channels: int | None = None   # patches only; default in_channels
    # condition: class prefix tokens, a text prefix (token ids of a prompt, embedded by
    # text_embed; the model is its own text encoder), or adaLN modulation from class (+ timestep)
    conditioning: str = "prefix"      # "prefix" | "text" | "adaln"
    # how "adaln" modulates a block: "zero" is adaLN-Zero (one Linear gives shift, scale and gate
    # for attention and MLP); "continuous" is diffusers' AdaLayerNormContinuous (each norm,
    # cross-attention's included, has its own Linear giving scale and shift, and nothing is gated);
    # "single" is adaLN-single (PixArt, Sana): the model projects the timestep once to (B, 6w)
    # for all blocks and each block adds its own learned (6, w) table, in adaLN-Zero's order
    modulation: str = "zero"
    modulation_bias: bool = True
    num_classes: int = 1000           # the null class for CFG has id num_classes
    text_vocab_size: int | None = None  # "text" only: rows of text_embed
    # the longest sequence (prefix + image tokens) a text model serves (its trained context);
    # None: no limit is known
    context_length: int | None = None
    timestep: bool = False
    timestep_freq_shift: float = 0.0  # 0: DiT/GLIDE frequencies; 1: diffusers' (see timestep_frequencies)
    context_dim: int | None = None    # width of a text sequence for cross-attention
    registers: int = 0                # learned tokens after the prefix whose outputs are dropped
    # positions; "rope1d" turns q and k with absolute positions, prefix included (Llama)
    positions: str = "rope2d"         # "rope2d" | "rope1d" | "sincos2d" | "learned" | "none"
    rope_base: float = 10000.0
    rope_prefix: str = "zeros"        # rotation at prefix positions: "zeros" (LlamaGen) | "identity"
    head_bias: bool = False
    # a head MLP: Linear(width, head_hidden), exact GELU, then the output Linear (Janus-Pro's
    # gen_head); None: one Linear. Both follow head_bias.
    head_hidden: int | None = None

    def __post_init__(self):
        for name in ("depth", "width", "heads", "grid_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.head_dim is None and self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by {self.heads} heads")
        if self.modulation not in ("zero", "continuous", "single"):
            raise ValueError(f"unknown modulation {self.modulation!r}; use 'zero', 'continuous' "
                             "or 'single'")
        if self.attention_kernel not in KERNELS:
            raise ValueError(f"unknown attention kernel {self.attention_kernel!r}; use one of "
                             f"{', '.join(KERNELS)}")
        if not self.cross_norm and self.modulation == "continuous":
            raise ValueError("continuous modulation scales the norm before cross-attention, "
                             "so it needs cross_norm")
        if self.conditioning not in ("prefix", "text", "adaln"):
            raise ValueError(f"unknown conditioning {self.conditioning!r}; use 'prefix', 'text' "
                             "or 'adaln'")
        if self.causal and self.conditioning == "adaln":
            raise ValueError("a causal backbone takes its condition as prefix tokens")
        if self.conditioning == "text":
            if not self.text_vocab_size:
                raise ValueError("a text-conditioned backbone needs text_vocab_size")
            if not self.causal or self.input != "tokens":
                raise ValueError("a text prefix is served by causal token models only")
            # image-indexed positions would need the prompt's length, which varies per call
            if self.positions not in ("rope1d", "none"):
                raise ValueError(f"a text-prefixed backbone needs positions 'rope1d' (or "
                                 f"'none'), not {self.positions!r}")
        if self.predict_mask and not self.mask_token:
            raise ValueError("predict_mask scores the mask token, so it needs mask_token")

    @property
    def dims_per_head(self) -> int:
        return self.head_dim or self.width // self.heads

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 4 * self.width

    @property
    def prefix_tokens(self) -> int:
        """Prefix positions every sequence holds: the class token. A text prefix is as long as
        its prompt, so it is not counted here (the caller adds the prompt's length)."""
        return 1 if self.conditioning == "prefix" else 0

    @property
    def num_tokens(self) -> int:
        return self.grid_size * self.grid_size

    @property
    def seq_len(self) -> int:
        """Length of a full forward pass: prefix, registers and image tokens (for a text model,
        without the prompt)."""
        return self.prefix_tokens + self.registers + self.num_tokens

    @property
    def output_dims(self) -> int:
        if self.input == "tokens":
            return self.vocab_size + int(self.predict_mask)
        return self.patch_size ** 2 * (self.out_channels or self.in_channels)


def compute_dtype(module: nn.Module) -> mx.Dtype:
    """A model's compute dtype: that of its float parameters (quantized layers keep float
    scales)."""
    for _, value in tree_flatten(module.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            return value.dtype
    return mx.float32


def modulate(x: mx.array, shift: mx.array, scale: mx.array) -> mx.array:
    return x * (1 + scale) + shift


class Block(nn.Module):
    """Pre-norm attention and MLP, optionally cross-attention, optionally modulated by a
    per-sample condition (adaLN-Zero, adaLN-single, or diffusers' continuous scale and shift)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        attention = dict(head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias,
                         qk_norm=cfg.qk_norm, qk_norm_eps=cfg.qk_norm_eps,
                         qk_norm_per_head=cfg.qk_norm_per_head)
        w = cfg.width
        adaln = cfg.conditioning == "adaln"
        continuous = adaln and cfg.modulation == "continuous"
        self.norm1 = make_norm(cfg.norm, w, cfg.norm_eps, cfg.norm_affine, layer_bias=cfg.norm_bias)
        self.attn = Attention(w, cfg.heads, fused_qkv=cfg.fused_qkv, kernel=cfg.attention_kernel,
                              **attention)
        if cfg.context_dim:
            if cfg.cross_norm:
                # an unmodulated cross-attention's norm is always affine (PixArt-style blocks)
                self.norm_cross = make_norm(cfg.norm, w, cfg.norm_eps,
                                            cfg.norm_affine if continuous else True,
                                            layer_bias=cfg.norm_bias)
            cross = dict(attention, head_dim=cfg.cross_head_dim or cfg.head_dim,
                         qkv_bias=cfg.qkv_bias if cfg.cross_qkv_bias is None
                         else cfg.cross_qkv_bias)
            self.cross_attn = Attention(w, cfg.cross_heads or cfg.heads, kv_dims=cfg.context_dim,
                                        **cross)
        mlp_norm_eps = cfg.norm_eps if cfg.mlp_norm_eps is None else cfg.mlp_norm_eps
        self.norm2 = make_norm(cfg.mlp_norm or cfg.norm, w, mlp_norm_eps, cfg.norm_affine,
                               layer_bias=cfg.norm_bias)
        if cfg.mlp == "mixffn":
            self.mlp = MixFFN(w, cfg.hidden)
        else:
            self.mlp = make_mlp(cfg.mlp, w, cfg.hidden, cfg.mlp_bias)
        if continuous:
            self.modulation1 = nn.Linear(w, 2 * w, bias=cfg.modulation_bias)
            if cfg.context_dim:
                self.modulation_cross = nn.Linear(w, 2 * w, bias=cfg.modulation_bias)
            self.modulation2 = nn.Linear(w, 2 * w, bias=cfg.modulation_bias)
        elif adaln and cfg.modulation == "single":
            self.scale_shift_table = mx.zeros((6, w))
        elif adaln:
            self.modulation = nn.Linear(w, 6 * w)

    def _continuous(self, name: str, h: mx.array, cond: mx.array) -> mx.array:
        """AdaLayerNormContinuous on normed states: scale first, then shift."""
        scale, shift = mx.split(self[name](cond)[:, None], 2, axis=-1)
        return modulate(h, shift, scale)

    def _shifts_scales_gates(self, cond: mx.array) -> list[mx.array]:
        """adaLN's six (B, 1, w) vectors: shift, scale, gate for attention, then for the MLP.
        adaLN-Zero computes them from the condition; adaLN-single adds the block's table to the
        model's shared (B, 6w) projection."""
        if "scale_shift_table" in self:
            return mx.split(self.scale_shift_table + cond.reshape(cond.shape[0], 6, -1), 6, axis=1)
        return mx.split(self.modulation(cond)[:, None], 6, axis=-1)

    def _cross(self, x, context, context_mask):
        h = self.norm_cross(x) if "norm_cross" in self else x
        return self.cross_attn(h, context=context, mask=context_mask)

    def _mlp(self, h: mx.array, grid: tuple[int, int] | None) -> mx.array:
        if isinstance(self.mlp, MixFFN):
            if grid is None:
                raise ValueError("a Mix-FFN block needs the token grid; pass grid=(height, width)")
            return self.mlp(h, *grid)
        return self.mlp(h)

    def __call__(self, x, cond=None, *, mask=None, rope=None, cache=None, context=None,
                 context_mask=None, grid=None):
        """`context_mask` is cross-attention's mask over the context's keys (boolean, or an
        additive bias), broadcastable to (B, heads, N, L); `grid` the (height, width) of the
        tokens, for a Mix-FFN."""
        if "modulation1" in self:
            return self._continuous_call(x, cond, mask=mask, rope=rope, cache=cache,
                                         context=context, context_mask=context_mask, grid=grid)
        modulated = "modulation" in self or "scale_shift_table" in self
        if modulated:
            shift1, scale1, gate1, shift2, scale2, gate2 = self._shifts_scales_gates(cond)
            x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1),
                                      mask=mask, rope=rope, cache=cache)
        else:
            x = x + self.attn(self.norm1(x), mask=mask, rope=rope, cache=cache)
        if context is not None:
            x = x + self._cross(x, context, context_mask)
        if modulated:
            return x + gate2 * self._mlp(modulate(self.norm2(x), shift2, scale2), grid)
        return x + self._mlp(self.norm2(x), grid)

    def _continuous_call(self, x, cond, *, mask, rope, cache, context, context_mask, grid):
        x = x + self.attn(self._continuous("modulation1", self.norm1(x), cond),
                          mask=mask, rope=rope, cache=cache)
        if context is not None:
            x = x + self.cross_attn(self._continuous("modulation_cross", self.norm_cross(x), cond),
                                    context=context, mask=context_mask)
        return x + self._mlp(self._continuous("modulation2", self.norm2(x), cond), grid)


class Transformer(nn.Module):
    """Embeds codes or latent patches, runs the blocks, and returns logits or patch predictions.

    Inputs: `x` is (B, L) token ids or (B, H, W, C) latents; `labels` (B,) class ids, where
    `num_classes` is the null class; `timesteps` (B,) for diffusion; `prefix` (B, P) text token
    ids (a "text" model); `cache` a list of KVCache for incremental decoding. The class or text
    prefix goes before the image tokens of the call that passes it (the first). A causal model
    returns an output for every input position (prefix included), a bidirectional one for the
    image tokens only.
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.config = cfg
        w = cfg.width
        if cfg.input == "tokens":
            self.token_embed = nn.Embedding(cfg.vocab_size + int(cfg.mask_token),
                                            cfg.token_embed_dim or w)
            if cfg.token_embed_dim:
                self.token_aligner = GeluMLP(cfg.token_embed_dim, w, activation="gelu",
                                             out_dims=w)
        else:
            self.patch_embed = PatchEmbed(cfg.in_channels, w, cfg.patch_size)
        if cfg.conditioning == "text":
            self.text_embed = nn.Embedding(cfg.text_vocab_size, w)
        else:
            self.class_embed = nn.Embedding(cfg.num_classes + 1, w)
        if cfg.timestep:
            self.time_embed = TimestepEmbedder(w, freq_shift=cfg.timestep_freq_shift)
        if cfg.registers:
            self.register_tokens = mx.zeros((cfg.registers, w))
        if cfg.positions == "learned":
            self.pos_embed = LearnedPositions(cfg.num_tokens, w)
        elif cfg.positions == "sincos2d":
            self._sincos = sincos_2d(w, cfg.grid_size)
        elif cfg.positions == "rope2d":
            self._rope = rope_2d_table(cfg.grid_size, cfg.dims_per_head, cfg.rope_base,
                                       cfg.prefix_tokens + cfg.registers, cfg.rope_prefix)
        elif cfg.positions not in ("rope1d", "none"):
            raise ValueError(f"unknown positions {cfg.positions!r}")
        self.blocks = [Block(cfg) for _ in range(cfg.depth)]
        self.norm = make_norm(cfg.norm, w, cfg.norm_eps, cfg.final_norm_affine, cfg.final_norm_bias)
        if cfg.conditioning == "adaln":
            self.final_modulation = nn.Linear(w, 2 * w)
        if cfg.head_hidden:
            self.head_proj = nn.Linear(w, cfg.head_hidden, bias=cfg.head_bias)
        self.head = nn.Linear(cfg.head_hidden or w, cfg.output_dims, bias=cfg.head_bias)

    @property
    def dtype(self) -> mx.Dtype:
        return compute_dtype(self)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size

    def make_cache(self, batch: int, max_length: int | None = None) -> list[KVCache]:
        """One KVCache a layer for `max_length` positions (default: a full pass). A text
        model's sequence is as long as its prompt plus the image, so it must be given."""
        cfg = self.config
        if max_length is None and cfg.conditioning == "text":
            raise ValueError("a text model's cache holds the prompt and the image tokens; "
                             "pass max_length")
        length = max_length or cfg.seq_len
        return [KVCache(batch, cfg.heads, cfg.dims_per_head, length, self.dtype)
                for _ in range(cfg.depth)]

    def condition(self, labels=None, timesteps=None) -> mx.array | None:
        """The per-sample adaLN vector, already through its SiLU (computed once per forward)."""
        if self.config.conditioning != "adaln":
            return None
        c = self.class_embed(labels)
        if self.config.timestep:
            c = c + self.time_embed(timesteps).astype(c.dtype)
        return nn.silu(c)

    def __call__(self, x, labels=None, timesteps=None, *, prefix=None, prefix_mask=None,
                 context=None, cache=None):
        return self.output(self.hidden_states(x, labels, timesteps, prefix=prefix,
                                              prefix_mask=prefix_mask, context=context,
                                              cache=cache))

    def output(self, h: mx.array) -> mx.array:
        """The head on hidden states: logits, or patch predictions as latents."""
        if "head_proj" in self:
            h = nn.gelu(self.head_proj(h))
        out = self.head(h)
        if self.config.input == "patches":
            out = self.unpatchify(out)
        return out

    def embed_tokens(self, x: mx.array) -> mx.array:
        """Image token ids (B, L) as width-wide vectors."""
        if x.shape[1] == 0:
            # a prefill of the prefix alone (quantized embeddings cannot look up nothing)
            return mx.zeros((x.shape[0], 0, self.config.width), dtype=self.dtype)
        h = self.token_embed(x)
        return self.token_aligner(h) if "token_aligner" in self else h

    def hidden_states(self, x, labels=None, timesteps=None, *, prefix=None, prefix_mask=None,
                      context=None, cache=None) -> mx.array:
        """The final-normed (and, with adaLN, modulated) states the head reads; arguments as
        for a call. `prefix_mask` (B, P) marks a left-padded text prefix's real tokens; every
        call of the sequence passes it (the cache keeps the padding's keys)."""
        cfg = self.config
        offset = cache[0].offset if cache else 0
        if cfg.input == "tokens":
            h = self.embed_tokens(x)
        else:
            h = self.patch_embed(x.astype(self.dtype))
        # Additive positions index image tokens only; the prefix sits before them.
        image_offset = max(offset - cfg.prefix_tokens - cfg.registers, 0)
        if cfg.positions == "learned":
            h = h + self.pos_embed(image_offset, h.shape[1])
        elif cfg.positions == "sincos2d":
            h = h + self._sincos[image_offset:image_offset + h.shape[1]].astype(h.dtype)
        image_tokens = h.shape[1]
        extra = []
        if cfg.conditioning == "prefix" and labels is not None:
            extra.append(self.class_embed(labels)[:, None])
        if cfg.conditioning == "text" and prefix is not None:
            extra.append(self.text_embed(prefix).astype(h.dtype))
        if cfg.registers and offset == 0:
            extra.append(mx.broadcast_to(self.register_tokens, (h.shape[0], *self.register_tokens.shape)))
        if extra:
            h = mx.concatenate([*extra, h], axis=1)
        length = h.shape[1]
        rope = None
        if cfg.positions == "rope2d":
            rope = (self._rope[0][offset:offset + length], self._rope[1][offset:offset + length])
        elif cfg.positions == "rope1d":
            rope = Rope1D(cfg.dims_per_head, cfg.rope_base, offset)
        mask = None
        if cfg.causal and length > 1:
            mask = "causal" if offset == 0 else _causal_mask(offset, length)
        if prefix_mask is not None:
            mask = _padded_causal_mask(prefix_mask, offset, length)
        cond = self.condition(labels, timesteps)
        for i, block in enumerate(self.blocks):
            h = block(h, cond, mask=mask, rope=rope, cache=cache[i] if cache else None,
                      context=context)
        h = self.norm(h)
        if cond is not None:
            shift, scale = mx.split(self.final_modulation(cond)[:, None], 2, axis=-1)
            h = modulate(h, shift, scale)
        if not cfg.causal and extra:
            h = h[:, length - image_tokens:]
        return h

    def unpatchify(self, out: mx.array) -> mx.array:
        cfg = self.config
        g, p = cfg.grid_size, cfg.patch_size
        channels = out.shape[-1] // (p * p)
        out = out.reshape(out.shape[0], g, g, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
        return out.reshape(out.shape[0], g * p, g * p, channels)


def _causal_mask(offset: int, length: int) -> mx.array:
    """Boolean mask letting query i (at absolute position offset+i) see keys 0..offset+i."""
    queries = mx.arange(offset, offset + length)[:, None]
    keys = mx.arange(offset + length)[None]
    return keys <= queries


def _padded_causal_mask(prefix_mask: mx.array, offset: int, length: int) -> mx.array:
    """(B, 1, L, offset + L) boolean mask: causal, and no query sees a padded prefix position
    but that position itself (a padding query must see something, or its softmax is NaN and the
    NaN reaches later layers' keys)."""
    total = offset + length
    queries = mx.arange(offset, total)[:, None]
    keys = mx.arange(total)[None]
    rest = mx.ones((prefix_mask.shape[0], total - prefix_mask.shape[1]), dtype=mx.bool_)
    real = mx.concatenate([prefix_mask.astype(mx.bool_), rest], axis=1)[:, None]
    return ((keys <= queries)[None] & (real | (keys == queries)[None]))[:, None]
