"""PyTorch stand-in for DiT's and SiT's models.py (facebookresearch/DiT, willisma/SiT) and for the
samplers they use (DiT's respaced Gaussian diffusion, SiT's fixed-grid ODE and Euler-Maruyama
SDE), written from the spec. Module names match upstream, so `state_dict()` has upstream's keys.
"""

import math

import numpy as np
import torch
from torch import nn


def sincos_table(dims: int, grid: int) -> np.ndarray:
    """(grid * grid, dims): the first half encodes the column, the second the row; sin then cos."""
    quarter = dims // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def encode(positions):
        angles = positions.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.divmod(np.arange(grid * grid, dtype=np.float64), grid)
    return np.concatenate([encode(cols), encode(rows)], axis=1).astype(np.float32)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, dims: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, dims, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, dims: int, frequency_dims: int = 256):
        super().__init__()
        self.frequency_dims = frequency_dims
        self.mlp = nn.Sequential(nn.Linear(frequency_dims, dims), nn.SiLU(), nn.Linear(dims, dims))

    @staticmethod
    def frequencies(t, dims: int):
        half = dims // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t):
        return self.mlp(self.frequencies(t, self.frequency_dims))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, dims: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dims)  # the last row is the null class

    def forward(self, y):
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dims, 3 * dims)
        self.proj = nn.Linear(dims, dims)

    def forward(self, x):
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dims: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dims, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dims)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    def __init__(self, dims: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dims, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dims, heads)
        self.norm2 = nn.LayerNorm(dims, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dims, int(dims * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dims, 6 * dims))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, dims: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dims, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dims, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dims, 2 * dims))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """DiT (or SiT, whose forward keeps only the first half of the learned-sigma channels)."""

    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 4,
                 hidden_size: int = 32, depth: int = 2, num_heads: int = 4, num_classes: int = 10,
                 learn_sigma: bool = True, sit: bool = False):
        super().__init__()
        self.in_channels, self.patch = in_channels, patch_size
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.learn_sigma, self.sit = learn_sigma, sit
        self.x_embedder = PatchEmbed(in_channels, hidden_size, patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        grid = input_size // patch_size
        table = torch.from_numpy(sincos_table(hidden_size, grid))[None]
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def unpatchify(self, x):
        n, t, _ = x.shape
        g, p, c = int(t ** 0.5), self.patch, self.out_channels
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(n, g, g, p, p, c))
        return x.reshape(n, c, g * p, g * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        x = self.unpatchify(self.final_layer(x, c))
        if self.sit and self.learn_sigma:
            x, _ = x.chunk(2, dim=1)
        return x

    def forward_with_cfg(self, x, t, y, cfg_scale: float, guided: int = 3):
        """The batch [x, x'] with labels [y, null]: the first half's input serves both passes."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, y)
        eps, rest = out[:, :guided], out[:, guided:]
        cond, uncond = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every trainable weight (upstream zero-initialises adaLN and the head)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            fan_in = p[0].numel() if p.ndim > 1 else 1
            std = fan_in ** -0.5 if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


# ---------------------------------------------------------------- DiT's Gaussian diffusion

def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    size, taken, cur = num_timesteps, [], 0.0
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return sorted(set(taken))


class SpacedDiffusion:
    """The float64 tables of a respaced linear-beta diffusion (learned-range variance)."""

    def __init__(self, count: int, num_timesteps: int = 1000):
        betas = np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
        base = np.cumprod(1.0 - betas)
        self.timestep_map, new_betas, last = [], [], 1.0
        use = set(space_timesteps(num_timesteps, count))
        for i, ab in enumerate(base):
            if i in use:
                new_betas.append(1 - ab / last)
                last = ab
                self.timestep_map.append(i)
        b = np.array(new_betas)
        ab = np.cumprod(1.0 - b)
        abp = np.append(1.0, ab[:-1])
        self.betas, self.ab, self.abp = b, ab, abp
        self.sqrt_recip = np.sqrt(1.0 / ab)
        self.sqrt_recipm1 = np.sqrt(1.0 / ab - 1)
        pv = b * (1.0 - abp) / (1.0 - ab)
        self.log_var_clipped = np.log(np.append(pv[1], pv[1:]))
        self.coef1 = b * np.sqrt(abp) / (1.0 - ab)
        self.coef2 = (1.0 - abp) * np.sqrt(1.0 - b) / (1.0 - ab)

    @staticmethod
    def at(table, j, like):
        return torch.tensor(table[j], dtype=torch.float64).float().expand_as(like)

    def mean_variance(self, model_fn, x, j):
        c = x.shape[1]
        t = torch.full((x.shape[0],), self.timestep_map[j], dtype=torch.int64)
        out = model_fn(x, t)
        eps, v = out[:, :c], out[:, c:]
        min_log = self.at(self.log_var_clipped, j, x)
        max_log = self.at(np.log(self.betas), j, x)
        frac = (v + 1) / 2
        log_var = frac * max_log + (1 - frac) * min_log
        x0 = self.at(self.sqrt_recip, j, x) * x - self.at(self.sqrt_recipm1, j, x) * eps
        mean = self.at(self.coef1, j, x) * x0 + self.at(self.coef2, j, x) * x
        return mean, log_var, x0

    def p_sample_loop(self, model_fn, x, noises):
        """Ancestral sampling with the given step noises (one per step, from the noisiest)."""
        for i, j in enumerate(reversed(range(len(self.betas)))):
            mean, log_var, _ = self.mean_variance(model_fn, x, j)
            x = mean + torch.exp(0.5 * log_var) * noises[i] if j else mean
        return x

    def ddim_sample_loop(self, model_fn, x):
        for j in reversed(range(len(self.betas))):
            _, _, x0 = self.mean_variance(model_fn, x, j)
            eps = (self.at(self.sqrt_recip, j, x) * x - x0) / self.at(self.sqrt_recipm1, j, x)
            abp = self.at(self.abp, j, x)
            x = x0 * torch.sqrt(abp) + torch.sqrt(1 - abp) * eps
        return x


# ---------------------------------------------------------------- SiT's samplers

def sit_ode(model_fn, x, num_steps: int, method: str):
    """torchdiffeq's fixed-grid euler / heun2 on torch.linspace(0, 1, num_steps)."""
    t = torch.linspace(0, 1, num_steps)
    for t0, t1 in zip(t[:-1], t[1:]):
        dt = t1 - t0
        k1 = model_fn(x, torch.ones(x.shape[0]) * t0)
        if method == "euler":
            x = x + dt * k1
        else:
            k2 = model_fn(x + dt * k1, torch.ones(x.shape[0]) * (t0 + dt))
            x = x + dt * (k1 + k2) / 2
    return x


def sit_sde(model_fn, x, num_steps: int, noises, last_step_size: float = 0.04):
    """Euler-Maruyama with the "sigma" diffusion form and the "Mean" last step."""
    t = torch.linspace(0, 1 - last_step_size, num_steps)
    dt = t[1] - t[0]

    def drift(x, ti):
        v = model_fn(x, torch.ones(x.shape[0]) * ti)
        score = (ti * v - x) / (1 - ti)
        return v + (1 - ti) * score, 1 - ti

    for i, ti in enumerate(t[:-1]):
        b, w = drift(x, ti)
        dw = noises[i] * torch.sqrt(dt)
        x = x + b * dt + torch.sqrt(2 * w) * dw
    b, _ = drift(x, t[-1])
    return x + b * last_step_size
