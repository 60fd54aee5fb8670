"""PyTorch mirror of `mlx_imgen.backbone.Transformer`: same options, parameter names and layouts.

Latents stay (B, H, W, C) at the interface, as in MLX, so outputs compare directly; conv weights
are the only ones whose layout differs (OIHW here), and `load_from_mlx` transposes them.
"""

import math

import numpy as np

from mlx_imgen.backbone import BackboneConfig

from . import load_mlx_weights, require_torch, torch_dtype

torch = require_torch()
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# Every BackboneConfig field this mirror implements; a test fails when the backbone gains one.
MIRRORED_OPTIONS = frozenset({
    "depth", "width", "heads", "head_dim", "mlp", "mlp_hidden", "mlp_bias", "norm", "norm_eps",
    "mlp_norm_eps", "norm_affine", "final_norm_affine", "final_norm_bias", "fused_qkv",
    "qkv_bias", "out_bias", "qk_norm", "qk_norm_per_head", "qk_norm_eps", "causal", "input",
    "grid_size", "vocab_size", "mask_token", "predict_mask", "in_channels", "patch_size",
    "out_channels", "conditioning", "num_classes", "timestep", "timestep_freq_shift",
    "context_dim", "registers", "positions", "rope_base", "rope_prefix", "head_bias",
    "token_embed_dim", "text_vocab_size", "context_length", "head_hidden", "modulation",
    "modulation_bias", "mlp_norm", "norm_bias", "attention_kernel", "cross_heads",
    "cross_head_dim", "cross_qkv_bias", "cross_norm"})


# ---------------------------------------------------------------- layers

class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float = 1e-6, affine: bool = True, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dims)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dims)) if bias else None

    def forward(self, x):
        out = F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return out + self.bias if self.bias is not None else out


def make_norm(kind: str, dims: int, eps: float, affine: bool = True, bias: bool = False, *,
              layer_bias: bool = True):
    if kind == "layer":
        return nn.LayerNorm(dims, eps=eps, elementwise_affine=affine, bias=affine and layer_bias)
    if kind == "rms":
        return RMSNorm(dims, eps=eps, affine=affine, bias=bias)
    raise ValueError(f"unknown norm {kind!r}; use 'layer' or 'rms'")


class GeluMLP(nn.Module):
    def __init__(self, dims: int, hidden: int, bias: bool = True, approximate: str = "tanh",
                 out_dims: int | None = None):
        super().__init__()
        self.approximate = approximate
        self.fc1 = nn.Linear(dims, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, out_dims or dims, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class SwiGLU(nn.Module):
    def __init__(self, dims: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate = nn.Linear(dims, hidden, bias=bias)
        self.up = nn.Linear(dims, hidden, bias=bias)
        self.down = nn.Linear(hidden, dims, bias=bias)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class GEGLU(nn.Module):
    def __init__(self, dims: int, hidden: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dims, 2 * hidden, bias=bias)
        self.out = nn.Linear(hidden, dims, bias=bias)

    def forward(self, x):
        value, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(value * F.gelu(gate))


MLPS = {"gelu_tanh": GeluMLP, "swiglu": SwiGLU, "geglu": GEGLU}


class KVCache:
    """Preallocated keys and values of one layer, filled left to right during decoding."""

    def __init__(self, batch: int, heads: int, head_dim: int, max_length: int,
                 dtype=torch.float32, device=None):
        self.keys = torch.zeros(batch, heads, max_length, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.offset = 0

    def update_and_fetch(self, keys, values):
        end = self.offset + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KV cache holds {self.keys.shape[2]} positions; "
                             f"cannot write up to {end}")
        self.keys[:, :, self.offset:end] = keys
        self.values[:, :, self.offset:end] = values
        self.offset = end
        return self.keys[:, :, :end], self.values[:, :, :end]


def rope_1d(x, offset: int, base: float):
    """Llama's rotate-half RoPE of x (B, H, L, D) at positions offset, offset + 1, ..."""
    dims = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims)
    positions = torch.arange(offset, offset + x.shape[2], dtype=torch.float32)
    angles = torch.outer(positions, inv_freq).to(x.device)
    cos, sin = torch.cos(angles).to(x.dtype), torch.sin(angles).to(x.dtype)
    first, second = x[..., :dims // 2], x[..., dims // 2:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, H, L, D) by tables (L, D/2)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.reshape(x.shape).to(x.dtype)


class Attention(nn.Module):
    """Self or cross multi-head attention through F.scaled_dot_product_attention."""

    def __init__(self, dims: int, heads: int, *, head_dim: int | None = None,
                 kv_dims: int | None = None, fused_qkv: bool = True, qkv_bias: bool = False,
                 out_bias: bool = False, qk_norm: str | None = None, qk_norm_eps: float = 1e-6,
                 qk_norm_per_head: bool = True, kernel: str = "softmax"):
        super().__init__()
        self.kernel = kernel
        self.heads = heads
        self.head_dim = head_dim or dims // heads
        inner = heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        self.fused = fused_qkv and kv_dims is None
        if self.fused:
            self.qkv = nn.Linear(dims, 3 * inner, bias=qkv_bias)
        else:
            self.q = nn.Linear(dims, inner, bias=qkv_bias)
            self.k = nn.Linear(kv_dims or dims, inner, bias=qkv_bias)
            self.v = nn.Linear(kv_dims or dims, inner, bias=qkv_bias)
        self.out = nn.Linear(inner, dims, bias=out_bias)
        self.qk_norm_per_head = qk_norm_per_head
        self.has_qk_norm = bool(qk_norm)
        if qk_norm:
            norm_dims = self.head_dim if qk_norm_per_head else inner
            self.q_norm = make_norm(qk_norm, norm_dims, qk_norm_eps, affine=qk_norm_per_head)
            self.k_norm = make_norm(qk_norm, norm_dims, qk_norm_eps, affine=qk_norm_per_head)

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, *, context=None, mask=None, rope=None, cache: KVCache | None = None):
        if self.fused:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            source = x if context is None else context
            q, k, v = self.q(x), self.k(source), self.v(source)
        if self.has_qk_norm and not self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if self.has_qk_norm and self.qk_norm_per_head:
            q, k = self.q_norm(q), self.k_norm(k)
        if isinstance(rope, dict):  # 1-D: {"offset", "base"}
            q, k = rope_1d(q, **rope), rope_1d(k, **rope)
        elif rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        if self.kernel == "relu_linear":
            # phi(q) (phi(K)^T V) / (phi(q) . sum_j phi(k_j)), phi = ReLU, in float32
            q, k = F.relu(q).float(), F.relu(k).float()
            out = (q @ (k.transpose(-1, -2) @ v.float())) / (
                q @ k.sum(dim=2, keepdim=True).transpose(-1, -2) + 1e-15)
            out = out.to(v.dtype)
        else:
            causal = isinstance(mask, str)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask,
                                                 is_causal=causal, scale=self.scale)
        batch, _, length, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(batch, length, -1))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches of an NHWC latent, projected to the model width."""

    def __init__(self, in_channels: int, dims: int, patch_size: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dims, patch_size, stride=patch_size, bias=bias)

    def forward(self, x):
        x = self.proj(x.permute(0, 3, 1, 2))          # NHWC -> NCHW -> (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)           # row-major tokens, as MLX's reshape


def mlx_frequencies(dims: int, shift: float, max_period: float = 10000.0):
    """max_period ** (-k / (half - shift)) for k < dims // 2 (shift 1: diffusers'), computed by
    MLX: its CPU exp is up to 1 ulp from torch's, which at t * 1000 moves cos/sin by about 6e-5,
    so the mirror takes MLX's table."""
    import mlx.core as mx
    half = dims // 2
    table = mx.exp(-math.log(max_period) * mx.arange(half, dtype=mx.float32) / (half - shift))
    return torch.from_numpy(np.array(table))


class TimestepEmbedder(nn.Module):
    """Sinusoidal features [cos, sin] of (possibly fractional) timesteps, through a SiLU MLP."""

    def __init__(self, dims: int, frequency_dims: int = 256, freq_shift: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(frequency_dims, dims)
        self.linear2 = nn.Linear(dims, dims)
        self.register_buffer("_freqs", mlx_frequencies(frequency_dims, freq_shift),
                             persistent=False)

    def forward(self, t):
        args = t.to(torch.float32)[:, None] * self._freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.linear1.in_features % 2:
            features = torch.cat([features, torch.zeros_like(features[:, :1])], dim=-1)
        return self.linear2(F.silu(self.linear1(features)))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


# ---------------------------------------------------------------- the stack

class Block(nn.Module):
    """Pre-norm attention and MLP, optionally cross-attention, optionally modulated (adaLN-Zero,
    or continuous scale and shift on every norm)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        attention = dict(head_dim=cfg.head_dim, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias,
                         qk_norm=cfg.qk_norm, qk_norm_eps=cfg.qk_norm_eps,
                         qk_norm_per_head=cfg.qk_norm_per_head)
        if cfg.modulation == "single" or cfg.mlp not in MLPS:
            # Sana's blocks (adaLN-single, Mix-FFN) run inside SanaTransformer only, which the
            # tests check against diffusers' own model, not against this mirror
            raise ValueError("the torch mirror has no adaLN-single or Mix-FFN blocks")
        w = cfg.width
        self.continuous = cfg.conditioning == "adaln" and cfg.modulation == "continuous"
        self.norm1 = make_norm(cfg.norm, w, cfg.norm_eps, cfg.norm_affine, layer_bias=cfg.norm_bias)
        self.attn = Attention(w, cfg.heads, fused_qkv=cfg.fused_qkv, kernel=cfg.attention_kernel,
                              **attention)
        if cfg.context_dim:
            self.norm_cross = (make_norm(cfg.norm, w, cfg.norm_eps,
                                         cfg.norm_affine if self.continuous else True,
                                         layer_bias=cfg.norm_bias)
                               if cfg.cross_norm else nn.Identity())
            cross = dict(attention, head_dim=cfg.cross_head_dim or cfg.head_dim,
                         qkv_bias=cfg.qkv_bias if cfg.cross_qkv_bias is None
                         else cfg.cross_qkv_bias)
            self.cross_attn = Attention(w, cfg.cross_heads or cfg.heads, kv_dims=cfg.context_dim,
                                        **cross)
        mlp_norm_eps = cfg.norm_eps if cfg.mlp_norm_eps is None else cfg.mlp_norm_eps
        self.norm2 = make_norm(cfg.mlp_norm or cfg.norm, w, mlp_norm_eps, cfg.norm_affine,
                               layer_bias=cfg.norm_bias)
        self.mlp = MLPS[cfg.mlp](w, cfg.hidden, cfg.mlp_bias)
        self.adaln = cfg.conditioning == "adaln" and not self.continuous
        if self.continuous:
            self.modulation1 = nn.Linear(w, 2 * w, bias=cfg.modulation_bias)
            if cfg.context_dim:
                self.modulation_cross = nn.Linear(w, 2 * w, bias=cfg.modulation_bias)
            self.modulation2 = nn.Linear(w, 2 * w, bias=cfg.modulation_bias)
        elif self.adaln:
            self.modulation = nn.Linear(w, 6 * w)

    def forward(self, x, cond=None, *, mask=None, rope=None, cache=None, context=None):
        if self.continuous:
            def modulated(linear, h):
                scale, shift = linear(cond)[:, None].chunk(2, dim=-1)
                return modulate(h, shift, scale)
            x = x + self.attn(modulated(self.modulation1, self.norm1(x)), mask=mask, rope=rope,
                              cache=cache)
            if context is not None:
                x = x + self.cross_attn(modulated(self.modulation_cross, self.norm_cross(x)),
                                        context=context)
            return x + self.mlp(modulated(self.modulation2, self.norm2(x)))
        if self.adaln:
            modulation = self.modulation(cond)[:, None].chunk(6, dim=-1)
            shift1, scale1, gate1, shift2, scale2, gate2 = modulation
            x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1),
                                      mask=mask, rope=rope, cache=cache)
        else:
            x = x + self.attn(self.norm1(x), mask=mask, rope=rope, cache=cache)
        if context is not None:
            x = x + self.cross_attn(self.norm_cross(x), context=context)
        if self.adaln:
            return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x + self.mlp(self.norm2(x))


class TorchTransformer(nn.Module):
    """The torch twin of `mlx_imgen.backbone.Transformer`, with the same call signature:
    `x` (B, L) token ids or (B, H, W, C) latents, `labels` (B,), `timesteps` (B,), `context`,
    `cache` (a list of KVCache from `make_cache`)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        from mlx_imgen.nn.positions import rope_2d_table, sincos_2d  # numpy tables, as MLX's

        self.config = cfg
        w = cfg.width
        if cfg.input == "tokens":
            self.token_embed = nn.Embedding(cfg.vocab_size + int(cfg.mask_token),
                                            cfg.token_embed_dim or w)
            if cfg.token_embed_dim:
                self.token_aligner = GeluMLP(cfg.token_embed_dim, w, approximate="none",
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
            self.register_tokens = nn.Parameter(torch.zeros(cfg.registers, w))
        if cfg.positions == "learned":
            self.pos_embed = nn.Embedding(cfg.num_tokens, w)
        elif cfg.positions == "sincos2d":
            self.register_buffer("_sincos", _table(sincos_2d(w, cfg.grid_size)), persistent=False)
        elif cfg.positions == "rope2d":
            cos, sin = rope_2d_table(cfg.grid_size, cfg.dims_per_head, cfg.rope_base,
                                     cfg.prefix_tokens + cfg.registers, cfg.rope_prefix)
            self.register_buffer("_rope_cos", _table(cos), persistent=False)
            self.register_buffer("_rope_sin", _table(sin), persistent=False)
        elif cfg.positions not in ("rope1d", "none"):
            raise ValueError(f"unknown positions {cfg.positions!r}")
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = make_norm(cfg.norm, w, cfg.norm_eps, cfg.final_norm_affine, cfg.final_norm_bias)
        if cfg.conditioning == "adaln":
            self.final_modulation = nn.Linear(w, 2 * w)
        self.head_proj = (nn.Linear(w, cfg.head_hidden, bias=cfg.head_bias)
                          if cfg.head_hidden else None)
        self.head = nn.Linear(cfg.head_hidden or w, cfg.output_dims, bias=cfg.head_bias)

    @property
    def null_class(self) -> int:
        return self.config.num_classes

    @property
    def mask_id(self) -> int:
        return self.config.vocab_size

    def make_cache(self, batch: int, max_length: int | None = None) -> list[KVCache]:
        cfg = self.config
        if max_length is None and cfg.conditioning == "text":
            raise ValueError("a text model's cache holds the prompt and the image tokens; "
                             "pass max_length")
        length = max_length or cfg.seq_len
        weight = self.head.weight
        return [KVCache(batch, cfg.heads, cfg.dims_per_head, length, weight.dtype, weight.device)
                for _ in range(cfg.depth)]

    def condition(self, labels=None, timesteps=None):
        """The per-sample adaLN vector, already through its SiLU."""
        if self.config.conditioning != "adaln":
            return None
        c = self.class_embed(labels)
        if self.config.timestep:
            c = c + self.time_embed(timesteps).to(c.dtype)
        return F.silu(c)

    def forward(self, x, labels=None, timesteps=None, *, prefix=None, prefix_mask=None,
                context=None, cache=None):
        return self.output(self.hidden_states(x, labels, timesteps, prefix=prefix,
                                              prefix_mask=prefix_mask, context=context,
                                              cache=cache))

    def output(self, h):
        if self.head_proj is not None:
            h = F.gelu(self.head_proj(h))
        out = self.head(h)
        if self.config.input == "patches":
            out = self.unpatchify(out)
        return out

    def hidden_states(self, x, labels=None, timesteps=None, *, prefix=None, prefix_mask=None,
                      context=None, cache=None):
        """`prefix_mask` (B, P) marks a left-padded text prefix's real tokens; every call of
        the sequence passes it, as in MLX."""
        cfg = self.config
        offset = cache[0].offset if cache else 0
        if cfg.input == "tokens":
            h = self.token_embed(x)
            if cfg.token_embed_dim:
                h = self.token_aligner(h)
        else:
            h = self.patch_embed(x.to(self.head.weight.dtype))
        # additive positions index image tokens only; the prefix sits before them
        image_offset = max(offset - cfg.prefix_tokens - cfg.registers, 0)
        if cfg.positions in ("learned", "sincos2d"):
            table = self.pos_embed.weight if cfg.positions == "learned" else self._sincos
            h = h + table[image_offset:image_offset + h.shape[1]].to(h.dtype)
        image_tokens = h.shape[1]
        extra = []
        if cfg.conditioning == "prefix" and labels is not None:
            extra.append(self.class_embed(labels)[:, None])
        if cfg.conditioning == "text" and prefix is not None:
            extra.append(self.text_embed(prefix).to(h.dtype))
        if cfg.registers and offset == 0:
            extra.append(self.register_tokens.expand(h.shape[0], *self.register_tokens.shape))
        if extra:
            h = torch.cat([*extra, h], dim=1)
        length = h.shape[1]
        rope = None
        if cfg.positions == "rope2d":
            rope = (self._rope_cos[offset:offset + length], self._rope_sin[offset:offset + length])
        elif cfg.positions == "rope1d":
            rope = {"offset": offset, "base": cfg.rope_base}
        mask = None
        if cfg.causal and length > 1:
            mask = "causal" if offset == 0 else _causal_mask(offset, length, h.device)
        if prefix_mask is not None:
            mask = _padded_causal_mask(prefix_mask, offset, length)
        cond = self.condition(labels, timesteps)
        for i, block in enumerate(self.blocks):
            h = block(h, cond, mask=mask, rope=rope, cache=cache[i] if cache else None,
                      context=context)
        h = self.norm(h)
        if cond is not None:
            shift, scale = self.final_modulation(cond)[:, None].chunk(2, dim=-1)
            h = modulate(h, shift, scale)
        if not cfg.causal and extra:
            h = h[:, length - image_tokens:]
        return h

    def unpatchify(self, out):
        cfg = self.config
        g, p = cfg.grid_size, cfg.patch_size
        channels = out.shape[-1] // (p * p)
        out = out.reshape(out.shape[0], g, g, p, p, channels).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(out.shape[0], g * p, g * p, channels)


def _table(array) -> "torch.Tensor":
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _causal_mask(offset: int, length: int, device=None):
    """Boolean mask letting query i (at absolute position offset+i) see keys 0..offset+i."""
    queries = torch.arange(offset, offset + length, device=device)[:, None]
    keys = torch.arange(offset + length, device=device)[None]
    return keys <= queries


def _padded_causal_mask(prefix_mask, offset: int, length: int):
    """(B, 1, L, offset + L) boolean mask: causal, and no query sees a padded prefix position
    but that position itself (a query that sees nothing would give NaN, as in MLX)."""
    device, total = prefix_mask.device, offset + length
    queries = torch.arange(offset, total, device=device)[:, None]
    keys = torch.arange(total, device=device)[None]
    rest = torch.ones(prefix_mask.shape[0], total - prefix_mask.shape[1], dtype=torch.bool,
                      device=device)
    real = torch.cat([prefix_mask.to(torch.bool), rest], dim=1)[:, None]
    return ((keys <= queries)[None] & (real | (keys == queries)[None]))[:, None]


def load_from_mlx(torch_model: TorchTransformer, mlx_model) -> TorchTransformer:
    """Copy an MLX Transformer's weights into its torch mirror (strict names and shapes); the
    mirror's parameters take the MLX model's dtype, its position and frequency tables stay
    float32."""
    dtype = torch_dtype(mlx_model.head.weight.dtype)
    for param in torch_model.parameters():
        param.data = param.data.to(dtype)
    load_mlx_weights(torch_model, mlx_model)
    return torch_model


def from_mlx(mlx_model, device: str | None = None) -> TorchTransformer:
    """A torch mirror of an MLX Transformer with its weights, in eval mode on `device`."""
    model = load_from_mlx(TorchTransformer(mlx_model.config), mlx_model)
    return model.to(device or "cpu").eval()
