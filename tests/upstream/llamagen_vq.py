"""LlamaGen's VQ tokenizer in upstream layout (tokenizer/tokenizer_image/vq_model.py), for the
tests, written from the spec: same state-dict keys, shapes and order, NCHW tensors, upstream
methods. Tests write upstream-format checkpoints with it and use it as the reference forward.
Constructor arguments use VQConfig's field names.
"""

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int, groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=eps, affine=True)


Norm = Callable[[int], nn.GroupNorm]  # channels -> GroupNorm; upstream's is _norm


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, norm: Norm = _norm):
        super().__init__()
        self.norm1 = norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv2(_swish(self.norm2(self.conv1(_swish(self.norm1(x))))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int, norm: Norm = _norm):
        super().__init__()
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2) for proj in (self.q, self.k, self.v))  # (b, c, n)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c ** -0.5, dim=-1)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(cin, cout, depth, attention, resample_name=None, resample=None,
           norm: Norm = _norm) -> nn.Module:
    block = nn.Module()
    block.res = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, norm)
                              for i in range(depth))
    block.attn = nn.ModuleList(AttnBlock(cout, norm) for _ in range(depth if attention else 0))
    if resample is not None:
        setattr(block, resample_name, resample(cout))
    return block


def _run_level(block, x):
    for i, res in enumerate(block.res):
        x = res(x)
        if len(block.attn):
            x = block.attn[i](x)
    for name in ("downsample", "upsample"):
        if hasattr(block, name):
            x = getattr(block, name)(x)
    return x


def _mid(channels, norm: Norm = _norm):
    return nn.ModuleList([ResnetBlock(channels, channels, norm), AttnBlock(channels, norm),
                          ResnetBlock(channels, channels, norm)])


class Encoder(nn.Module):
    def __init__(self, in_channels, ch, ch_mult, num_res_blocks, z_channels, norm: Norm = _norm):
        super().__init__()
        n = len(ch_mult)
        widths_in = [ch] + [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList(
            _level(widths_in[i], ch * ch_mult[i], num_res_blocks, attention=i == n - 1,
                   resample_name="downsample", resample=None if i == n - 1 else Downsample,
                   norm=norm)
            for i in range(n))
        top = ch * ch_mult[-1]
        self.mid = _mid(top, norm)
        self.norm_out = norm(top)
        self.conv_out = nn.Conv2d(top, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.conv_blocks:
            h = _run_level(block, h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, out_channels, ch, ch_mult, num_res_blocks, z_channels, norm: Norm = _norm):
        super().__init__()
        n = len(ch_mult)
        cin = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = _mid(cin, norm)
        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(n)):
            cout = ch * ch_mult[level]
            self.conv_blocks.append(_level(
                cin, cout, num_res_blocks + 1, attention=level == n - 1,
                resample_name="upsample", resample=Upsample if level != 0 else None, norm=norm))
            cin = cout
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, out_channels, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for block in self.conv_blocks:
            h = _run_level(block, h)
        return self.conv_out(_swish(self.norm_out(h)))


def _unit(x):
    return F.normalize(x, p=2, dim=-1)


class VectorQuantizer(nn.Module):
    def __init__(self, size: int, dims: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dims)
        self.register_buffer("codebook_used", torch.zeros(65536))

    def forward(self, z):
        """z (B, D, h, w) -> straight-through quantised z (B, D, h, w) and flat int64 indices."""
        z = _unit(z.permute(0, 2, 3, 1))
        flat = z.reshape(-1, z.shape[-1])
        e = _unit(self.embedding.weight)
        dist = (flat ** 2).sum(1, keepdim=True) + (e ** 2).sum(1) - 2 * flat @ e.t()
        indices = dist.argmin(dim=1)
        zq = e[indices].view(z.shape)
        zq = z + (zq - z).detach()
        return zq.permute(0, 3, 1, 2), indices

    def get_codebook_entry(self, indices, shape):
        """shape = (B, D, h, w), as upstream's channel-first call."""
        zq = _unit(self.embedding.weight)[indices]
        return zq.reshape(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(self, codebook_size=16384, codebook_embed_dim=8, ch=128, ch_mult=(1, 1, 2, 2, 4),
                 z_channels=256, num_res_blocks=2, in_channels=3, out_channels=3, norm_groups=32,
                 norm_eps=1e-6):
        super().__init__()
        norm = partial(_norm, groups=norm_groups, eps=norm_eps)
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels, norm)
        self.decoder = Decoder(out_channels, ch, ch_mult, num_res_blocks, z_channels, norm)
        self.quantize = VectorQuantizer(codebook_size, codebook_embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(codebook_embed_dim, z_channels, 1)

    def encode(self, x):
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))

    def decode_code(self, codes, shape):
        return self.decode(self.quantize.get_codebook_entry(codes, shape))


def tiny_vq_config() -> dict:
    """Two levels: one downsample / upsample, attention at the lowest level and in both mids."""
    return dict(codebook_size=64, codebook_embed_dim=8, ch=32, ch_mult=(1, 2), z_channels=16,
                num_res_blocks=1)
