"""LlamaGen's class-to-image GPT as a torch reference for the tests, written from the paper and the
released c2i checkpoints' keys: `state_dict()` has their keys, shapes and order.

The network is a Llama decoder over [class token, image tokens]: RMSNorm before attention and
before a SwiGLU MLP, causal attention with a 2-D rotary embedding, a final RMSNorm and an
untied output projection. `generate` decodes with classifier-free guidance against the null
class (the extra last row of the class table)."""

import math
from dataclasses import dataclass
from typing import Optional

import torch

from .keyed import KeyedModule, affine, attend, swiglu

ROPE_BASE = 10000.0
NORM_EPS = 1e-5  # every released c2i size uses these


@dataclass
class GPTArgs:
    dim: int
    n_layer: int
    n_head: int
    vocab_size: int
    num_classes: int
    block_size: int  # image tokens, a square grid
    multiple_of: int = 256  # the SwiGLU width rounds up to this

    @property
    def grid(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def ffn_hidden(self) -> int:
        """Llama's SwiGLU width: 2/3 of 4 * dim, rounded UP to multiple_of."""
        return -(-int(8 * self.dim / 3) // self.multiple_of) * self.multiple_of


def tiny_gpt_args() -> GPTArgs:
    return GPTArgs(dim=64, n_layer=2, n_head=4, vocab_size=32, num_classes=10, block_size=16,
                   multiple_of=32)


def checkpoint_shapes(args: GPTArgs) -> dict[str, tuple[int, ...]]:
    """Every key holds a `.weight` (no layer has a bias), in the released files' order."""
    d, hidden = args.dim, args.ffn_hidden
    layer = {"attention.wqkv": (3 * d, d),  # row blocks q, k, v
             "attention.wo": (d, d),
             "feed_forward.w1": (hidden, d), "feed_forward.w3": (hidden, d),  # gate, up
             "feed_forward.w2": (d, hidden),  # down
             "attention_norm": (d,), "ffn_norm": (d,)}
    names = {"cls_embedding.embedding_table": (args.num_classes + 1, d),
             "tok_embeddings": (args.vocab_size, d)}
    for i in range(args.n_layer):
        names.update({f"layers.{i}.{name}": shape for name, shape in layer.items()})
    names.update({"norm": (d,), "output": (args.vocab_size, d)})
    return {name + ".weight": shape for name, shape in names.items()}


def rotary_tables(args: GPTArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (1 + grid**2, head_dim / 2) float32, for the pairs (2j, 2j + 1) of a head.

    A token at (row, col) turns its first head_dim / 4 pairs by row * f_j and the rest by
    col * f_j, f_j = base ** (-4j / head_dim). The class position gets cos = sin = 0, which
    zeroes its query and key: LlamaGen's table starts with zero rows, not the identity."""
    quarter = args.head_dim // 4
    freq = ROPE_BASE ** (-4.0 * torch.arange(quarter, dtype=torch.float64) / args.head_dim)
    cells = torch.arange(args.block_size)
    row, col = cells // args.grid, cells % args.grid
    angle = torch.cat([row[:, None] * freq, col[:, None] * freq], dim=1)
    class_row = torch.zeros(1, 2 * quarter)
    return torch.cat([class_row, angle.cos().float()]), torch.cat([class_row, angle.sin().float()])


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, head_dim): each pair (a, b) -> (a cos - b sin, a sin + b cos), in float32."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, None], sin[:, None]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    # normalised in float32 and cast back BEFORE the gain, which matters in bfloat16
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)).to(x.dtype) * gain


class GPT(KeyedModule):
    def __init__(self, args: GPTArgs):
        if args.grid ** 2 != args.block_size or args.head_dim % 4:
            raise ValueError(f"block_size {args.block_size} must be a square and head_dim "
                             f"{args.head_dim} a multiple of 4 for the 2-D rotary embedding")
        super().__init__(checkpoint_shapes(args))
        self.args = args
        self.rotary = rotary_tables(args)  # a plain attribute: never saved, never cast

    def forward(self, idx: Optional[torch.Tensor], cond_idx: torch.Tensor) -> torch.Tensor:
        """Teacher-forced float32 logits (B, 1 + S, vocab) for the class token cond_idx (B,)
        followed by the codes idx (B, S) (or none); position i predicts code i."""
        w = self.weights()
        h = w["cls_embedding.embedding_table.weight"][cond_idx][:, None]
        if idx is not None:
            h = torch.cat([h, w["tok_embeddings.weight"][idx]], dim=1)
        cos, sin = (table[: h.shape[1]].to(h.device) for table in self.rotary)
        for i in range(self.args.n_layer):
            layer = f"layers.{i}."
            u = rms_norm(h, w[layer + "attention_norm.weight"])
            h = h + self._attention(w, layer + "attention", u, cos, sin)
            h = h + swiglu(w, layer + "feed_forward", rms_norm(h, w[layer + "ffn_norm.weight"]))
        return affine(w, "output", rms_norm(h, w["norm.weight"])).float()

    def _attention(self, w, name, u, cos, sin):
        b, s, _ = u.shape
        q, k, v = affine(w, name + ".wqkv", u).view(b, s, 3, self.args.n_head, -1).unbind(2)
        mixed = attend(rotate_pairs(q, cos, sin), rotate_pairs(k, cos, sin), v, causal=True)
        return affine(w, name + ".wo", mixed)


def pick_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               greedy: bool = False, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One code per row of logits (B, V) -> (B, 1): argmax when greedy, else a draw from the
    softmax at `temperature` restricted to the top_k largest logits (ties with the k-th kept)
    and to the smallest head of the ranking whose mass reaches top_p."""
    z = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = z.topk(min(top_k, z.shape[-1]), dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        ranked, order = z.softmax(-1).sort(dim=-1, descending=True)
        mass_before = ranked.cumsum(-1) - ranked
        keep = torch.zeros_like(z, dtype=torch.bool).scatter(-1, order, mass_before <= top_p)
        z = z.masked_fill(~keep, float("-inf"))
    if greedy:
        return z.argmax(-1, keepdim=True)
    return torch.multinomial(z.softmax(-1), 1, generator=generator)


@torch.no_grad()
def generate(model: GPT, cond: torch.Tensor, max_new_tokens: int, cfg_scale: float,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Labels cond (B,) -> codes (B, max_new_tokens) int64 in raster order.

    With cfg_scale > 1 each step runs the prefix under the label and under the null class and
    samples from null + cfg_scale * (cond - null). The whole prefix is recomputed every step:
    the reference trades speed for having no cache to get wrong."""
    guided = cfg_scale > 1.0
    labels = torch.cat([cond, torch.full_like(cond, model.args.num_classes)]) if guided else cond
    codes = torch.zeros(len(cond), 0, dtype=torch.long, device=cond.device)
    for _ in range(max_new_tokens):
        prefix = torch.cat([codes, codes]) if guided else codes
        logits = model(prefix if prefix.shape[1] else None, labels)[:, -1]
        if guided:
            with_label, null = logits.chunk(2)
            logits = null + cfg_scale * (with_label - null)
        step = pick_token(logits, temperature, top_k, top_p, greedy, generator)
        codes = torch.cat([codes, step], dim=1)
    return codes


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Gains near 1 and weights of scale 0.2, so that every path carries signal."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        draw = torch.randn(p.shape, generator=gen)
        p.copy_(1.0 + 0.1 * draw if p.ndim == 1 else 0.2 * draw)
    return model
