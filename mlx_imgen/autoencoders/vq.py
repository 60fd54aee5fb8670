"""LlamaGen's VQ image tokenizer (VQ-16, VQ-8): images in [-1, 1], NHWC, to code grids and back.

Module names mirror upstream `tokenizer/tokenizer_image/vq_model.py`, so the key map is the identity.
"""

from dataclasses import asdict, dataclass, fields

import mlx.core as mx
import mlx.nn as nn

from mlx_imgen.weights.keymap import Rule, conv_weight, map_keys

from .layers import Downsample, Upsample


@dataclass
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # VQ-16; VQ-8 is (1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    in_channels: int = 3
    out_channels: int = 3
    norm_groups: int = 32
    norm_eps: float = 1e-6

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "ch_mult": list(self.ch_mult)}

    @classmethod
    def from_dict(cls, values: dict) -> "VQConfig":
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown VQConfig fields: {', '.join(sorted(unknown))}")
        values = dict(values)
        if "ch_mult" in values:
            values["ch_mult"] = tuple(values["ch_mult"])
        return cls(**values)


def _group_norm(cfg: VQConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps, pytorch_compatible=True)


def _l2_normalize(x: mx.array) -> mx.array:
    # F.normalize's floor on the norm, so a zero vector stays zero instead of NaN
    return x / mx.maximum(mx.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class ResnetBlock(nn.Module):
    def __init__(self, cfg: VQConfig, cin: int, cout: int):
        super().__init__()
        self.norm1 = _group_norm(cfg, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _group_norm(cfg, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.project = cin != cout
        if self.project:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def __call__(self, x: mx.array) -> mx.array:
        h = self.conv1(nn.silu(self.norm1(x)))
        h = self.conv2(nn.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if self.project else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections."""

    def __init__(self, cfg: VQConfig, channels: int):
        super().__init__()
        self.norm = _group_norm(cfg, channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, c = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).reshape(b, 1, h * w, c) for proj in (self.q, self.k, self.v))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=c ** -0.5)
        return x + self.proj_out(out.reshape(b, h, w, c))


class ConvBlock(nn.Module):
    """One resolution level: residual blocks, attention after each (lowest level only), resampling."""

    def __init__(self, cfg: VQConfig, cin: int, cout: int, depth: int, attention: bool,
                 resample: str | None):
        super().__init__()
        self.res = [ResnetBlock(cfg, cin if i == 0 else cout, cout) for i in range(depth)]
        self.attn = [AttnBlock(cfg, cout) for _ in range(depth)] if attention else []
        self.resample = resample  # "downsample", "upsample" or None: upstream's attribute name
        if resample == "downsample":
            self.downsample = Downsample(cout)
        elif resample == "upsample":
            self.upsample = Upsample(cout)

    def __call__(self, x: mx.array) -> mx.array:
        for i, res in enumerate(self.res):
            x = res(x)
            if self.attn:
                x = self.attn[i](x)
        return getattr(self, self.resample)(x) if self.resample else x


def _mid(cfg: VQConfig, channels: int) -> list[nn.Module]:
    return [ResnetBlock(cfg, channels, channels), AttnBlock(cfg, channels),
            ResnetBlock(cfg, channels, channels)]


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.conv_blocks = [
            ConvBlock(cfg, ([cfg.ch] + widths)[i], widths[i], cfg.num_res_blocks,
                      attention=i == last, resample=None if i == last else "downsample")
            for i in range(len(widths))]
        self.mid = _mid(cfg, widths[-1])
        self.norm_out = _group_norm(cfg, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for layer in self.conv_blocks + self.mid:
            x = layer(x)
        return self.conv_out(nn.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.ch * m for m in reversed(cfg.ch_mult)]  # lowest resolution first
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(cfg.z_channels, widths[0], 3, padding=1)
        self.mid = _mid(cfg, widths[0])
        # the decoder has one residual block more per level than the encoder
        self.conv_blocks = [
            ConvBlock(cfg, widths[max(j - 1, 0)], widths[j], cfg.num_res_blocks + 1,
                      attention=j == 0, resample=None if j == last else "upsample")
            for j in range(len(widths))]
        self.norm_out = _group_norm(cfg, widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.out_channels, 3, padding=1)

    def __call__(self, z: mx.array) -> mx.array:
        x = self.conv_in(z)
        for layer in self.mid + self.conv_blocks:
            x = layer(x)
        return self.conv_out(nn.silu(self.norm_out(x)))


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook; latents and codebook rows are both L2-normalised."""

    def __init__(self, size: int, dims: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dims)

    def codebook(self) -> mx.array:
        # stored rows are not unit length; upstream normalises at every use
        return _l2_normalize(self.embedding.weight)

    def lookup(self, codes: mx.array) -> mx.array:
        return self.codebook()[codes]

    def nearest(self, z: mx.array) -> mx.array:
        e = self.codebook()
        flat = _l2_normalize(z).reshape(-1, z.shape[-1])
        # upstream's expanded squared distance, kept term for term so near-ties round the same way
        dist = (flat * flat).sum(-1, keepdims=True) + (e * e).sum(-1) - 2 * (flat @ e.T)
        return mx.argmin(dist, axis=-1).astype(mx.int32).reshape(z.shape[:-1])


class VQModel(nn.Module):
    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_embed_dim)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.codebook_embed_dim, config.z_channels, 1)

    def encode_with_latents(self, images: mx.array) -> tuple[mx.array, mx.array]:
        """(B, H, W, 3) images -> codes (B, h, w) int32 and their quantised latents (B, h, w, D)."""
        codes = self.quantize.nearest(self.quant_conv(self.encoder(images)))
        return codes, self.quantize.lookup(codes)

    def encode(self, images: mx.array) -> mx.array:
        return self.encode_with_latents(images)[0]

    def decode(self, latents: mx.array) -> mx.array:
        """(B, h, w, D) quantised latents -> (B, H, W, 3) images, nominally in [-1, 1], unclamped."""
        return self.decoder(self.post_quant_conv(latents))

    def decode_codes(self, codes: mx.array) -> mx.array:
        return self.decode(self.quantize.lookup(codes))


# ---------------------------------------------------------------- upstream checkpoint keys

_CONVS = r"(?:conv_in|conv_out|conv1|conv2|nin_shortcut|q|k|v|proj_out|downsample\.conv|upsample\.conv)"
VQ_KEY_RULES: list[Rule] = [
    Rule(rf"((?:en|de)coder\.(?:.+\.)?{_CONVS}\.weight)", r"\1", conv_weight),
    Rule(r"((?:post_)?quant_conv\.weight)", r"\1", conv_weight),
    Rule(r"((?:en|de)coder\..+\.(?:weight|bias))", r"\1"),  # norms and conv biases
    Rule(r"((?:post_)?quant_conv\.bias)", r"\1"),
    Rule(r"(quantize\.embedding\.weight)", r"\1"),
]
# codebook_used is a rolling record of training assignments; nothing reads it at inference
VQ_IGNORE = [r"quantize\.codebook_used"]


def infer_vq_config(state: dict) -> VQConfig:
    """The VQConfig that upstream tensor shapes determine (any ch, ch_mult, codebook size)."""
    try:
        codebook_size, embed_dim = state["quantize.embedding.weight"].shape
        ch = state["encoder.conv_in.weight"].shape[0]
        z_channels = state["quant_conv.weight"].shape[1]
        levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.conv_blocks.")})
        ch_mult = tuple(state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch
                        for i in levels)
        res = {k.split(".")[4] for k in state if k.startswith("encoder.conv_blocks.0.res.")}
    except KeyError as err:
        raise ValueError(f"not a LlamaGen VQ checkpoint: it lacks {err.args[0]}; expected keys "
                         "like encoder.conv_in.weight and quantize.embedding.weight") from None
    return VQConfig(codebook_size=codebook_size, codebook_embed_dim=embed_dim, ch=ch,
                    ch_mult=ch_mult, z_channels=z_channels, num_res_blocks=len(res))


def vq_weights_from_upstream(state: dict, lazy: bool = False) -> dict[str, mx.array]:
    """Upstream VQModel state dict (the checkpoint's "model" entry) -> VQModel weights, or with
    `lazy` deferred ones that know their shapes."""
    return map_keys(state, VQ_KEY_RULES, VQ_IGNORE, lazy=lazy)


# ---------------------------------------------------------------- FLOPs (2 x MACs)

def _conv(h: int, w: int, cin: int, cout: int, k: int = 1) -> float:
    return 2.0 * h * w * cin * cout * k * k


def _resnet(h: int, w: int, cin: int, cout: int) -> float:
    shortcut = _conv(h, w, cin, cout) if cin != cout else 0.0
    return _conv(h, w, cin, cout, 3) + _conv(h, w, cout, cout, 3) + shortcut


def _attention(h: int, w: int, c: int) -> float:
    n = h * w
    return 4 * _conv(h, w, c, c) + 2 * (2.0 * n * n * c)  # q, k, v, proj_out; QK^T and AV


def _mid_flops(h: int, w: int, c: int) -> float:
    return 2 * _resnet(h, w, c, c) + _attention(h, w, c)


def decode_flops(config: VQConfig, h: int, w: int) -> float:
    """One image's decode from an h x w code grid: convolutions and attention matmuls."""
    widths = [config.ch * m for m in reversed(config.ch_mult)]
    total = _conv(h, w, config.codebook_embed_dim, config.z_channels)
    total += _conv(h, w, config.z_channels, widths[0], 3) + _mid_flops(h, w, widths[0])
    cin = widths[0]
    for j, cout in enumerate(widths):
        for _ in range(config.num_res_blocks + 1):
            total += _resnet(h, w, cin, cout) + (_attention(h, w, cout) if j == 0 else 0.0)
            cin = cout
        if j != len(widths) - 1:
            h, w = 2 * h, 2 * w
            total += _conv(h, w, cout, cout, 3)
    return total + _conv(h, w, cin, config.out_channels, 3)


def encode_flops(config: VQConfig, h: int, w: int) -> float:
    """One image's encode to an h x w code grid, including the nearest-code distance matmul."""
    widths = [config.ch * m for m in config.ch_mult]
    ih, iw = h * config.downsample, w * config.downsample
    total = _conv(ih, iw, config.in_channels, config.ch, 3)
    cin = config.ch
    for i, cout in enumerate(widths):
        for _ in range(config.num_res_blocks):
            total += _resnet(ih, iw, cin, cout) + (
                _attention(ih, iw, cout) if i == len(widths) - 1 else 0.0)
            cin = cout
        if i != len(widths) - 1:
            ih, iw = ih // 2, iw // 2
            total += _conv(ih, iw, cout, cout, 3)
    total += _mid_flops(ih, iw, cin) + _conv(ih, iw, cin, config.z_channels, 3)
    total += _conv(ih, iw, config.z_channels, config.codebook_embed_dim)
    return total + 2.0 * ih * iw * config.codebook_size * config.codebook_embed_dim
