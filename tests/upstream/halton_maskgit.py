"""Halton-MaskGIT's class-to-image transformer and its two samplers as a torch reference for the
tests, written from the paper ("Halton Scheduler for Masked Generative Image Transformer") and
the released checkpoints' keys: `state_dict()` has their keys, shapes and order, the output
head's weight tied to the token embedding included.

The network: token embedding (row codebook_size is the mask) plus a learned position per cell,
then register tokens after the image tokens (without positions); blocks with adaLN modulation
of RMSNorm from the class row c (the last class row is the null class), attention with a
parameter-free RMSNorm over all of q and over all of k, a SwiGLU MLP; a final RMSNorm with
scale and bias, adaLN-modulated, and the tied head giving codebook_size + 1 logits per cell.

The samplers take their randomness from an injected `noise` object (order_shifts, token_noise,
choice_noise) and draw by Gumbel-max, argmax(log p + g), which samples the same distribution
as a categorical draw."""

import functools
import math

import torch
import torch.nn.functional as F

from .keyed import KeyedModule, affine, attend, swiglu

NORM_EPS = 1e-5


def tiny_config() -> dict:
    """6 heads over a width of 64: head_dim 10, attention width 60 != 64, like upstream's small."""
    return dict(input_size=4, hidden_dim=64, codebook_size=64, depth=2, heads=6, mlp_dim=256,
                nclass=10, register=1)


def swiglu_hidden(mlp_dim: int) -> int:
    """2/3 of the nominal MLP width, rounded up to a multiple of 256."""
    return -(-int(2 * mlp_dim / 3) // 256) * 256


def checkpoint_shapes(input_size, hidden_dim, codebook_size, depth, heads, mlp_dim, nclass,
                      register):
    d, hidden = hidden_dim, swiglu_hidden(mlp_dim)
    inner = heads * (d // heads)  # the head width floors: 6 heads over 512 are 6 x 85
    shapes = {"cls_emb.weight": (nclass + 1, d), "tok_emb.weight": (codebook_size + 1, d),
              "pos_emb.weight": (input_size ** 2, d)}
    for i in range(depth):
        layer = f"transformer.layers.{i}."
        shapes.update({layer + "mlp.1.weight": (6 * d, d), layer + "mlp.1.bias": (6 * d,),
                       layer + "ln1.weight": (d,),
                       layer + "attn.wq.weight": (inner, d), layer + "attn.wk.weight": (inner, d),
                       layer + "attn.wv.weight": (inner, d), layer + "attn.wo.weight": (d, inner),
                       layer + "ln2.weight": (d,),
                       layer + "ff.w1.weight": (hidden, d),   # gate
                       layer + "ff.w2.weight": (d, hidden),   # down
                       layer + "ff.w3.weight": (hidden, d)})  # up
    shapes.update({"last_norm.norm_final.weight": (d,), "last_norm.norm_final.bias": (d,),
                   "last_norm.mlp.1.weight": (2 * d, d), "last_norm.mlp.1.bias": (2 * d,),
                   "head.weight": (codebook_size + 1, d), "head.bias": (codebook_size + 1,)})
    if register:
        shapes["reg_tokens.weight"] = (register, d)
    return shapes


def rms(x, gain=None, offset=None):
    """x / sqrt(mean(x^2) + eps), in float32 and cast back, then the optional gain and offset."""
    x32 = x.float()
    y = (x32 / (x32.square().mean(-1, keepdim=True) + NORM_EPS).sqrt()).to(x.dtype)
    y = y if gain is None else y * gain
    return y if offset is None else y + offset


class Transformer(KeyedModule):
    def __init__(self, input_size=16, hidden_dim=768, codebook_size=16384, depth=12, heads=12,
                 mlp_dim=3072, nclass=1000, register=1):
        super().__init__(checkpoint_shapes(input_size, hidden_dim, codebook_size, depth, heads,
                                           mlp_dim, nclass, register),
                         tied={"head.weight": "tok_emb.weight"})
        self.input_size, self.codebook_size, self.nclass = input_size, codebook_size, nclass
        self.depth, self.heads = depth, heads

    @property
    def mask_value(self) -> int:
        return self.codebook_size

    def forward(self, x, y, drop_label):
        """x (B, S, S) codes (the mask id where masked), y (B,) classes, drop_label (B,) bool
        (True: the null class) -> logits (B, S*S, codebook_size + 1)."""
        w = self.weights()
        n = self.input_size ** 2
        c = w["cls_emb.weight"][torch.where(drop_label, self.nclass, y)]
        c = F.silu(c)  # every adaLN projection reads SiLU(c)
        h = w["tok_emb.weight"][x.reshape(len(x), n)] + w["pos_emb.weight"]
        if "reg_tokens.weight" in w:
            h = torch.cat([h, w["reg_tokens.weight"].expand(len(x), -1, -1)], dim=1)
        for i in range(self.depth):
            h = self._block(w, f"transformer.layers.{i}.", h, c)
        shift, scale = affine(w, "last_norm.mlp.1", c).chunk(2, dim=-1)
        out = rms(h[:, :n], w["last_norm.norm_final.weight"], w["last_norm.norm_final.bias"])
        return affine(w, "head", out * (1 + scale[:, None]) + shift[:, None])

    def _block(self, w, name, h, c):
        mods = [m[:, None] for m in affine(w, name + "mlp.1", c).chunk(6, dim=-1)]
        attn_shift, attn_scale, attn_gate, ff_shift, ff_scale, ff_gate = mods
        u = rms(h, w[name + "ln1.weight"]) * (1 + attn_scale) + attn_shift
        h = h + attn_gate * self._attention(w, name + "attn.", u)
        u = rms(h, w[name + "ln2.weight"]) * (1 + ff_scale) + ff_shift
        return h + ff_gate * swiglu(w, name + "ff", u)

    def _attention(self, w, name, u):
        # the q and k norms span all heads at once, before the split
        q, k = rms(affine(w, name + "wq", u)), rms(affine(w, name + "wk", u))
        q, k, v = (z.unflatten(-1, (self.heads, -1)) for z in (q, k, affine(w, name + "wv", u)))
        return affine(w, name + "wo", attend(q, k, v))


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values everywhere (the released initialisation zeroes adaLN, which would hide
    bugs): norm gains near 1, vectors of scale 0.1, matrices with unit-variance outputs."""
    gen = torch.Generator().manual_seed(seed)
    gains = ("norm_final.weight", "ln1.weight", "ln2.weight")
    for name, p in model.named_parameters():
        draw = torch.randn(p.shape, generator=gen)
        if name.endswith(gains):
            p.copy_(1.0 + 0.1 * draw)
        else:
            p.copy_(0.1 * draw if p.ndim == 1 else draw * p.shape[-1] ** -0.5)
    return model


# ---------------------------------------------------------------- Halton order and schedules

def radical_inverse(i: int, base: int) -> float:
    """i's base-b digits mirrored behind the radix point, rounded once (in the division)."""
    mirrored, denominator = 0, 1
    while i > 0:
        mirrored = mirrored * base + i % base
        denominator *= base
        i //= base
    return mirrored / denominator


@functools.lru_cache(maxsize=None)
def halton_grid_order(size: int, points: int = 10_000) -> torch.Tensor:
    """(size**2, 2) (row, col) cells in the order the 2-D Halton points 1..points first land
    in them; base 2 gives the row, base 3 the column, both held in float32 as upstream does."""
    xy = torch.tensor([(radical_inverse(i, 2), radical_inverse(i, 3))
                       for i in range(1, points + 1)], dtype=torch.float32)
    first_visits = dict.fromkeys(map(tuple, (xy * size).floor().long().tolist()))
    if len(first_visits) != size * size:
        raise ValueError(f"{points} Halton points miss cells of a {size}x{size} grid; pass more")
    return torch.tensor(list(first_visits), dtype=torch.long)


def halton_revealed(steps: int, tokens: int) -> list[int]:
    """Tokens revealed after each Halton step: tokens * (1 - arccos(i / steps) / (pi / 2)) for
    i = 1..steps, in float32 and truncated, at least one more per step."""
    counts = []
    for i in range(1, steps + 1):
        share = 1 - torch.tensor(i / steps, dtype=torch.float32).arccos() / (math.pi / 2)
        counts.append(max(i, int(share * tokens)))
    return counts


def confidence_revealed(steps: int, tokens: int) -> list[int]:
    """Tokens revealed after each confidence step: the same arccos curve over
    linspace(0, 1, steps) (so the first step reveals one), in float32."""
    share = 1 - torch.linspace(0, 1, steps).arccos() / (math.pi / 2)
    return [max(i, int(count)) for i, count in enumerate((share * tokens).int().tolist(), 1)]


# ---------------------------------------------------------------- samplers

def guided_logits(model, code, labels, w):
    """Logits (B, N, K+1) under guidance weight w: (1 + w) cond - w null; w = 0 runs once."""
    grid = code.reshape(len(code), model.input_size, model.input_size)
    if w == 0:
        return model(grid, labels, torch.zeros(len(code), dtype=torch.bool))
    both = model(grid.repeat(2, 1, 1), labels.repeat(2),
                 torch.arange(2 * len(code)) >= len(code))
    with_label, null = both.chunk(2)
    return (1 + w) * with_label - w * null


def gumbel_pick(probs, gumbel, top_k=0):
    """argmax(log p + g) per cell; with top_k, p first renormalised over its k largest."""
    if top_k > 0:
        smallest_kept = probs.topk(top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= smallest_kept, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    return (probs.log() + gumbel).argmax(-1)


@torch.no_grad()
def halton_sample(model, labels, noise, *, steps, w, temp_min=1.0, temp_max=1.0, temp_pow=1.0,
                  temp_warmup=0, randomize=False, top_k=0):
    """The Halton sampler: step i samples every cell at the softmax of logits * temperature_i
    (temperatures linspace(temp_min, temp_max) ** temp_pow, halved over the first temp_warmup
    steps) and fixes the next cells of the Halton order (rolled per row when randomize).
    Returns the code (B, N) after every step and the final code clamped to the codebook."""
    cells = halton_grid_order(model.input_size)
    order = cells[:, 0] * model.input_size + cells[:, 1]
    b, n = len(labels), len(order)
    if randomize:
        order = torch.stack([order.roll(int(k)) for k in noise.order_shifts(b, n)])
    else:
        order = order.expand(b, n)
    temperatures = torch.linspace(temp_min, temp_max, steps)
    code = torch.full((b, n), model.mask_value, dtype=torch.long)
    history, done = [], 0
    for i, total in enumerate(halton_revealed(steps, n)):
        temperature = float(temperatures[i]) ** temp_pow * (0.5 if i < temp_warmup else 1.0)
        probs = (guided_logits(model, code, labels, w) * temperature).softmax(-1)
        drawn = gumbel_pick(probs, noise.token_noise(i, tuple(probs.shape)), top_k)
        fresh = order[:, done:total]
        code.scatter_(1, fresh, drawn.gather(1, fresh))
        history.append(code.clone())
        done = total
    return history, code.clamp(0, model.codebook_size - 1)


@torch.no_grad()
def confidence_sample(model, labels, noise, *, steps, w, sm_temp=1.0, r_temp=4.5):
    """MaskGIT's confidence sampler: guidance ramping linearly from 0 to w, then the cells to
    hold after step i are the highest-scoring by log p(drawn code) plus choice noise fading
    linearly from r_temp to 0, cells already holding a code always included. Every kept cell
    takes the step's fresh draw, held codes too, as the released sampler does. Returns the code
    (B, N) after every step and the final code clamped to the codebook."""
    b, n = len(labels), model.input_size ** 2
    code = torch.full((b, n), model.mask_value, dtype=torch.long)
    history = []
    for i, total in enumerate(confidence_revealed(steps, n)):
        progress = i / (steps - 1)
        probs = (guided_logits(model, code, labels, w * progress) * sm_temp).softmax(-1)
        drawn = gumbel_pick(probs, noise.token_noise(i, tuple(probs.shape)))
        score = probs.gather(-1, drawn[..., None]).squeeze(-1).log()
        score = score + r_temp * (1 - progress) * noise.choice_noise(i, (b, n))
        score = score.masked_fill(code != model.mask_value, math.inf)
        keep = score >= score.topk(total, dim=-1).values[:, -1:]
        code = torch.where(keep, drawn, code)
        history.append(code.clone())
    return history, code.clamp(0, model.codebook_size - 1)
