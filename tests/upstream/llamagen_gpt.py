"""PyTorch stand-in for LlamaGen's class-to-image GPT (autoregressive/models/gpt.py + generate.py), written from
the spec; module names match upstream so `state_dict()` has upstream's keys, shapes and order."""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTArgs:
    dim: int
    n_layer: int
    n_head: int
    vocab_size: int
    num_classes: int
    block_size: int  # number of image tokens, a perfect square
    cls_token_num: int = 1
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    rope_base: float = 10000
    norm_eps: float = 1e-5


def tiny_gpt_args() -> GPTArgs:
    return GPTArgs(dim=64, n_layer=2, n_head=4, vocab_size=32, num_classes=10, block_size=16, multiple_of=32)


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


def rope_table_2d(grid: int, head_dim: int, base: float, cls_token_num: int) -> torch.Tensor:
    """(cls_token_num + grid**2, head_dim // 2, 2) float32 (cos, sin); class rows are zeros, not identity."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    ang = torch.outer(torch.arange(grid).float(), freqs)  # (grid, head_dim // 4)
    # First head_dim/4 pairs rotate by the row index, the last head_dim/4 by the column index.
    g = torch.cat([ang[:, None, :].expand(grid, grid, -1), ang[None, :, :].expand(grid, grid, -1)], dim=-1)
    table = torch.stack([g.cos(), g.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cls_token_num, half, 2), table])


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, hd), table (S, hd/2, 2); adjacent pairs (2p, 2p+1) are rotated, math in float32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    out = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], dim=-1)
    return out.flatten(3).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        # Cast back before the weight multiply, as upstream (matters in bf16).
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, a: GPTArgs):
        super().__init__()
        hidden = int(2 * (4 * a.dim) / 3)
        if a.ffn_dim_multiplier is not None:
            hidden = int(a.ffn_dim_multiplier * hidden)
        hidden = find_multiple(hidden, a.multiple_of)
        self.w1 = nn.Linear(a.dim, hidden, bias=False)
        self.w3 = nn.Linear(a.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, a.dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class KVCache(nn.Module):
    # Persistent buffers like upstream: after setup_caches they DO appear in state_dict (`*.kv_cache.*`).
    def __init__(self, batch: int, seq_len: int, n_head: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_head, seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device))
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device))

    def update(self, input_pos, k, v):
        self.k_cache[:, :, input_pos] = k
        self.v_cache[:, :, input_pos] = v
        return self.k_cache, self.v_cache


class Attention(nn.Module):
    def __init__(self, a: GPTArgs):
        super().__init__()
        self.dim, self.n_head, self.head_dim = a.dim, a.n_head, a.dim // a.n_head
        self.wqkv = nn.Linear(a.dim, 3 * a.dim, bias=False)  # rows: q, k, v (no GQA in any config)
        self.wo = nn.Linear(a.dim, a.dim, bias=False)
        self.kv_cache = None

    def forward(self, x, rope, input_pos=None, mask=None):
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, self.n_head, self.head_dim) for t in self.wqkv(x).split(self.dim, dim=-1))
        q, k = apply_rope(q, rope), apply_rope(k, rope)  # before caching: the cache holds rotated keys
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.kv_cache is not None and input_pos is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.wo(out.transpose(1, 2).reshape(b, s, self.dim))


class TransformerBlock(nn.Module):
    def __init__(self, a: GPTArgs):
        super().__init__()
        self.attention = Attention(a)
        self.feed_forward = FeedForward(a)
        self.attention_norm = RMSNorm(a.dim, a.norm_eps)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)

    def forward(self, x, rope, input_pos=None, mask=None):
        h = x + self.attention(self.attention_norm(x), rope, input_pos, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)  # last row = null class for CFG

    def forward(self, labels):
        return self.embedding_table(labels).unsqueeze(1)


class GPT(nn.Module):
    def __init__(self, args: GPTArgs):
        super().__init__()
        self.args = args
        self.grid = math.isqrt(args.block_size)
        assert self.grid ** 2 == args.block_size and (args.dim // args.n_head) % 4 == 0
        self.cls_embedding = LabelEmbedder(args.num_classes, args.dim)
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layer))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        # Plain attribute, not a buffer: never in state_dict, never cast by .to(dtype).
        self.freqs_cis = rope_table_2d(self.grid, args.dim // args.n_head, args.rope_base, args.cls_token_num)
        self.causal_mask = None

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype=None):
        seq_len = find_multiple(max_seq_length, 8)
        dev, dtype = self.tok_embeddings.weight.device, dtype or self.tok_embeddings.weight.dtype
        hd = self.args.dim // self.args.n_head
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch_size, seq_len, self.args.n_head, hd, dtype, dev)
        self.causal_mask = torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool, device=dev))
        self.causal_mask = self.causal_mask.unsqueeze(0).repeat(max_batch_size, 1, 1)

    def forward(self, idx: Optional[torch.Tensor], cond_idx: Optional[torch.Tensor],
                input_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Returns float32 logits only (upstream returns (logits, loss)).

        input_pos None: teacher-forced pass over [class emb, tok_emb(idx)] with a plain causal mask; logits for ALL
        1 + S_idx positions; any cache is ignored (upstream would write into it). Upstream's train mode slices
        [:, cls_token_num - 1:], a no-op for cls_token_num=1.
        input_pos given (after setup_caches): prefill (idx None, cond_idx (B,), input_pos [0]) or decode
        (cond_idx None, idx (B, 1), input_pos [t]); attends over the whole cache under the bool causal mask."""
        if input_pos is None:
            h = self.cls_embedding(cond_idx)[:, : self.args.cls_token_num]
            if idx is not None:
                h = torch.cat([h, self.tok_embeddings(idx)], dim=1)
            rope, mask = self.freqs_cis.to(h.device)[: h.shape[1]], None
        else:
            h = self.tok_embeddings(idx) if idx is not None else \
                self.cls_embedding(cond_idx)[:, : self.args.cls_token_num]
            rope = self.freqs_cis.to(h.device)[input_pos]
            mask = self.causal_mask[: h.shape[0], None, input_pos]
        for layer in self.layers:
            h = layer(h, rope, input_pos, mask)
        return self.output(self.norm(h)).float()


def sample(logits, temperature=1.0, top_k=0, top_p=1.0, greedy=False):
    """logits (B, S, V) -> (B, 1) int64 from the last position, as upstream's `sample`; greedy = argmax."""
    logits = logits[:, -1, :] / max(temperature, 1e-5)
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # ties with the k-th value survive
    if top_p < 1.0:
        srt, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(srt, dim=-1), dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the first token that crosses top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.topk(probs, 1)[1] if greedy else torch.multinomial(probs, 1)


@torch.no_grad()
def generate(model: GPT, cond, max_new_tokens, cfg_scale, temperature=1.0, top_k=0, top_p=1.0, greedy=False):
    """cond (B,) labels -> (B, max_new_tokens) int64 codes, raster order; CFG batch is [cond; null]."""
    use_cfg = cfg_scale > 1.0
    b = cond.shape[0]
    cond_all = torch.cat([cond, torch.full_like(cond, model.args.num_classes)]) if use_cfg else cond
    model.setup_caches(cond_all.shape[0], 1 + max_new_tokens)

    def step(logits):
        if use_cfg:
            c, u = logits.split(b, dim=0)
            logits = u + (c - u) * cfg_scale
        return sample(logits, temperature, top_k, top_p, greedy)

    dev = cond.device
    tok = step(model(None, cond_all, torch.arange(0, 1, device=dev)))
    out = [tok]
    for t in range(1, max_new_tokens):
        x = torch.cat([tok, tok]) if use_cfg else tok
        tok = step(model(x, None, torch.tensor([t], device=dev, dtype=torch.int)))
        out.append(tok)
    return torch.cat(out, dim=1).long()


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=g)
        p.copy_(1.0 + 0.1 * noise if p.ndim == 1 else 0.2 * noise)
    return model
