"""PyTorch stand-in for Halton-MaskGIT's class-to-image transformer (Network/transformer.py) and its
two samplers (Sampler/halton_sampler.py, Sampler/confidence_sampler.py), written from the spec.

Module names follow upstream so `state_dict()` has its keys, shapes and order, the head tied to the
token embedding included. The samplers take their randomness from an injected `noise` object
(order_shifts, token_noise, choice_noise) and sample by Gumbel-max, argmax(log p + g), which
draws from the same distribution as upstream's Categorical/multinomial calls.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


def tiny_config() -> dict:
    """6 heads over a width of 64: head_dim 10, attention width 60 != 64, like upstream's small."""
    return dict(input_size=4, hidden_dim=64, codebook_size=64, depth=2, heads=6, mlp_dim=256,
                nclass=10, register=1)


class RMSNorm(nn.Module):
    """Normalise in float32, cast back, then the optional scale and the optional bias."""

    def __init__(self, dim: int, weight: bool = True, bias: bool = False, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        xf = x.float()
        out = (xf / torch.sqrt(xf.square().mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out


class QKNorm(nn.Module):
    """Parameter-free RMSNorm of the whole q and k projections, before the head split."""

    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim, weight=False)
        self.key_norm = RMSNorm(dim, weight=False)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads  # upstream floors: small has 6 x 85
        inner = heads * self.head_dim
        self.wq = nn.Linear(dim, inner, bias=False)
        self.wk = nn.Linear(dim, inner, bias=False)
        self.wv = nn.Linear(dim, inner, bias=False)
        self.wo = nn.Linear(inner, dim, bias=False)
        self.qk_norm = QKNorm(inner)

    def forward(self, x):
        b, t, _ = x.shape
        v = self.wv(x)
        q = self.qk_norm.query_norm(self.wq(x)).to(v.dtype)
        k = self.qk_norm.key_norm(self.wk(x)).to(v.dtype)
        q, k, v = (z.reshape(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        hidden = 256 * math.ceil(int(2 * mlp_dim / 3) / 256)
        self.w1 = nn.Linear(dim, hidden, bias=False)   # gate, through SiLU
        self.w2 = nn.Linear(hidden, dim, bias=False)   # down
        self.w3 = nn.Linear(dim, hidden, bias=False)   # up

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.ln1 = RMSNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = RMSNorm(dim)
        self.ff = FeedForward(dim, mlp_dim)

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.mlp(c).chunk(6, dim=-1)
        x = x + gate1[:, None] * self.attn(modulate(self.ln1(x), shift1, scale1))
        return x + gate2[:, None] * self.ff(modulate(self.ln2(x), shift2, scale2))


class Encoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(dim, heads, mlp_dim) for _ in range(depth))


class AdaNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm_final = RMSNorm(dim, weight=True, bias=True)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.mlp(c).chunk(2, dim=-1)
        return modulate(self.norm_final(x), shift, scale)


class Transformer(nn.Module):
    def __init__(self, input_size=16, hidden_dim=768, codebook_size=16384, depth=12, heads=12,
                 mlp_dim=3072, nclass=1000, register=1):
        super().__init__()
        self.input_size, self.nclass, self.register = input_size, nclass, register
        self.codebook_size = codebook_size
        self.cls_emb = nn.Embedding(nclass + 1, hidden_dim)           # row nclass: the null class
        self.tok_emb = nn.Embedding(codebook_size + 1, hidden_dim)    # row codebook_size: mask
        self.pos_emb = nn.Embedding(input_size ** 2, hidden_dim)
        self.transformer = Encoder(hidden_dim, depth, heads, mlp_dim)
        self.last_norm = AdaNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, codebook_size + 1)
        self.head.weight = self.tok_emb.weight
        if register:
            self.reg_tokens = nn.Embedding(register, hidden_dim)

    @property
    def mask_value(self) -> int:
        return self.codebook_size

    def forward(self, x, y, drop_label):
        """x (B, S, S) codes with the mask id where masked, y (B,) classes, drop_label (B,) bool."""
        b, n = x.shape[0], self.input_size ** 2
        c = self.cls_emb(torch.where(drop_label, torch.full_like(y, self.nclass), y))
        h = self.tok_emb(x.reshape(b, n)) + self.pos_emb.weight[None]
        if self.register:
            # registers go after the image tokens and carry no position
            h = torch.cat([h, self.reg_tokens.weight[None].expand(b, -1, -1)], dim=1)
        for block in self.transformer.layers:
            h = block(h, c)
        return self.head(self.last_norm(h[:, :n], c))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Random values everywhere (upstream zero-initialises adaLN, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if name.endswith("norm_final.weight") or name.endswith("ln1.weight") or \
                name.endswith("ln2.weight"):
            p.copy_(1.0 + 0.1 * noise)
        elif p.ndim == 1:
            p.copy_(0.1 * noise)
        else:
            p.copy_(noise * p.shape[-1] ** -0.5)
    return model


# ---------------------------------------------------------------- Halton order and schedules

def radical_inverse(i: int, base: int) -> float:
    """The base-b digits of i reversed behind the radix point (one rounding, in the division)."""
    digits, scale = 0, 1
    while i:
        i, digit = divmod(i, base)
        digits, scale = digits * base + digit, scale * base
    return digits / scale


@functools.lru_cache(maxsize=None)
def halton_grid_order(size: int, points: int = 10_000) -> torch.Tensor:
    """(size**2, 2) (row, col) cells in first-visit order of the 2-D Halton points 1..points,
    held as float32 as upstream does; base 2 gives the row, base 3 the column."""
    xy = torch.tensor([[radical_inverse(i, 2), radical_inverse(i, 3)]
                       for i in range(1, points + 1)], dtype=torch.float32)
    cells = torch.floor(xy * size).long()
    seen, order = set(), []
    for row, col in cells.tolist():
        if (row, col) not in seen:
            seen.add((row, col))
            order.append((row, col))
    assert len(order) == size * size, "too few Halton points to cover the grid"
    return torch.tensor(order, dtype=torch.long)


def halton_revealed(steps: int, tokens: int) -> list[int]:
    """Cumulative tokens after each Halton step, computed in float32 like upstream."""
    out = []
    for i in range(steps):
        r = 1 - torch.arccos(torch.tensor((i + 1) / steps, dtype=torch.float32)) / (math.pi / 2)
        out.append(max(i + 1, int(r * tokens)))
    return out


def confidence_revealed(steps: int, tokens: int) -> list[int]:
    """Cumulative tokens after each confidence step: arccos over linspace(0, 1) in float32."""
    u = torch.linspace(0, 1, steps)
    counts = ((1 - torch.arccos(u) / (math.pi / 2)) * tokens).int().tolist()
    return [max(i + 1, t) for i, t in enumerate(counts)]


# ---------------------------------------------------------------- samplers

def _logits(model, code, labels, w):
    """Guided logits (B, N, K+1): the cond half first, the null-class half second."""
    b = code.shape[0]
    if w == 0:
        return model(code, labels, torch.zeros(b, dtype=torch.bool))
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])
    both = model(torch.cat([code, code]), torch.cat([labels, labels]), drop)
    cond, uncond = both[:b], both[b:]
    return (1 + w) * cond - w * uncond


def _sample(probs, noise, top_k=0):
    """Gumbel-max draw from `probs` (B, N, V), optionally renormalised over its top k."""
    if top_k > 0:
        kept = torch.topk(probs, top_k, dim=-1).indices
        probs = torch.zeros_like(probs).scatter(-1, kept, probs.gather(-1, kept))
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.argmax(torch.log(probs) + noise, dim=-1)


@torch.no_grad()
def halton_sample(model, labels, noise, *, steps, w, temp_min=1.0, temp_max=1.0, temp_pow=1.0,
                  temp_warmup=0, randomize=False, top_k=0):
    """Halton sampler (upstream main). Returns the code (B, N) after every step and the final
    code clamped to the codebook."""
    s, b = model.input_size, labels.shape[0]
    n = s * s
    base = halton_grid_order(s)
    flat = base[:, 0] * s + base[:, 1]
    if randomize:
        shifts = noise.order_shifts(b, n)
        orders = torch.stack([torch.roll(flat, int(k), 0) for k in shifts])
    else:
        orders = flat[None].expand(b, n)
    temps = torch.linspace(temp_min, temp_max, steps)
    code = torch.full((b, n), model.mask_value, dtype=torch.long)
    history, start = [], 0
    for i, end in enumerate(halton_revealed(steps, n)):
        t = float(temps[i]) ** temp_pow
        if i < temp_warmup:
            t *= 0.5
        logits = _logits(model, code.reshape(b, s, s), labels, w)
        probs = torch.softmax(logits * t, dim=-1)
        pred = _sample(probs, noise.token_noise(i, tuple(probs.shape)), top_k)
        rows = torch.arange(b)[:, None]
        cells = orders[:, start:end]
        code[rows, cells] = pred[rows, cells]
        history.append(code.clone())
        start = end
    return history, code.clamp(0, model.codebook_size - 1)


@torch.no_grad()
def confidence_sample(model, labels, noise, *, steps, w, sm_temp=1.0, r_temp=4.5):
    """MaskGIT confidence sampler ("linear" randomisation, arccos schedule). Returns the code
    (B, N) after every step and the final code clamped to the codebook."""
    s, b = model.input_size, labels.shape[0]
    n = s * s
    code = torch.full((b, n), model.mask_value, dtype=torch.long)
    masked = code == model.mask_value
    history = []
    for i, t in enumerate(confidence_revealed(steps, n)):
        weight = w * i / (steps - 1)  # guidance ramps from none to w
        logits = _logits(model, code.reshape(b, s, s), labels, weight)
        probs = torch.softmax(logits * sm_temp, dim=-1)
        pred = _sample(probs, noise.token_noise(i, tuple(probs.shape)))
        conf = torch.log(probs.gather(-1, pred[..., None])[..., 0])
        conf = conf + r_temp * noise.choice_noise(i, (b, n)) * (1 - i / (steps - 1))
        conf[~masked] = math.inf
        threshold = torch.topk(conf, t, dim=-1).values[:, -1:]
        chosen = conf >= threshold
        code[chosen] = pred[chosen]  # revealed tokens get the fresh sample too, as upstream
        masked = code == model.mask_value
        history.append(code.clone())
    return history, code.clamp(0, model.codebook_size - 1)
