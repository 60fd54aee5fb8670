"""DiT and SiT as a torch reference for the tests, written from the papers and the released .pt
files' keys (`state_dict()` has their keys, shapes and order), with the samplers those papers
evaluate: DiT's respaced Gaussian diffusion (ancestral and DDIM), SiT's fixed-grid ODE and its
Euler-Maruyama SDE.

The network (Peebles & Xie, "Scalable Diffusion Models with Transformers"): patches of the
latent plus a fixed 2-D sin-cos position table; c = MLP(timestep frequencies) + class row (the
last row is the null class); adaLN-Zero blocks, in which SiLU(c) -> Linear gives shift, scale
and gate for the attention and for the MLP; a final adaLN (shift, scale) and a linear map back to
patches. With learned sigma the output has twice the input channels; SiT keeps the first half.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from .keyed import KeyedModule, affine, attend

FREQUENCY_DIMS = 256  # the timestep's sinusoidal features before the MLP
LAYER_NORM_EPS = 1e-6


def sincos_table(dims: int, grid: int) -> np.ndarray:
    """(grid * grid, dims) in raster order: dims/2 features of the column, then dims/2 of the
    row, each [sin(p w_i), cos(p w_i)] with w_i = 10000 ** (-i / (dims / 4))."""
    quarter = dims // 4
    omega = 10000.0 ** -(np.arange(quarter, dtype=np.float64) / quarter)
    row, col = np.divmod(np.arange(grid * grid, dtype=np.float64), grid)
    features = [f(p[:, None] * omega) for p in (col, row) for f in (np.sin, np.cos)]
    return np.concatenate(features, axis=1).astype(np.float32)


def timestep_features(t: torch.Tensor, dims: int = FREQUENCY_DIMS) -> torch.Tensor:
    """[cos(t f_i), sin(t f_i)] with f_i = exp(-ln(10000) i / (dims / 2)), rounded in float32
    in that order: at t near 1000 a different rounding of f_i moves the features by 1e-4."""
    half = dims // 2
    f = (torch.arange(half, dtype=torch.float32) * -math.log(10000) / half).exp()
    phase = t.float()[:, None] * f
    return torch.cat([phase.cos(), phase.sin()], dim=1)


def with_biases(prefix: str, weights: dict[str, tuple[int, int]]) -> dict:
    """Each `name: (out, in)` of a layer as its weight and bias keys under `prefix`."""
    shapes = {}
    for name, (rows, cols) in weights.items():
        shapes[f"{prefix}{name}.weight"] = (rows, cols)
        shapes[f"{prefix}{name}.bias"] = (rows,)
    return shapes


def checkpoint_shapes(patch, channels, out_channels, width, depth, num_classes, tokens):
    d = width
    shapes = {"pos_embed": (1, tokens, d),
              "x_embedder.proj.weight": (d, channels, patch, patch), "x_embedder.proj.bias": (d,),
              **with_biases("t_embedder.", {"mlp.0": (d, FREQUENCY_DIMS), "mlp.2": (d, d)}),
              "y_embedder.embedding_table.weight": (num_classes + 1, d)}
    block = {"attn.qkv": (3 * d, d), "attn.proj": (d, d), "mlp.fc1": (4 * d, d),
             "mlp.fc2": (d, 4 * d), "adaLN_modulation.1": (6 * d, d)}
    for i in range(depth):
        shapes.update(with_biases(f"blocks.{i}.", block))
    head = {"linear": (patch * patch * out_channels, d), "adaLN_modulation.1": (2 * d, d)}
    return {**shapes, **with_biases("final_layer.", head)}


def adaptive_norm(x, shift, scale):
    """LayerNorm without affine, then x * (1 + scale) + shift per sample."""
    x = F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS)
    return x * (1 + scale[:, None]) + shift[:, None]


class DiT(KeyedModule):
    """DiT (or SiT with sit=True). Defaults: an 8x8 latent of 4 channels in 2x2 patches."""

    def __init__(self, input_size: int = 8, patch_size: int = 2, in_channels: int = 4,
                 hidden_size: int = 32, depth: int = 2, num_heads: int = 4, num_classes: int = 10,
                 learn_sigma: bool = True, sit: bool = False):
        grid = input_size // patch_size
        out_channels = in_channels * (2 if learn_sigma else 1)
        shapes = checkpoint_shapes(patch_size, in_channels, out_channels, hidden_size, depth,
                                   num_classes, grid * grid)
        super().__init__(shapes, frozen=frozenset({"pos_embed"}))
        self.patch, self.heads, self.depth = patch_size, num_heads, depth
        self.out_channels = out_channels
        self.keep = in_channels if sit and learn_sigma else out_channels
        with torch.no_grad():
            self.pos_embed.copy_(torch.from_numpy(sincos_table(hidden_size, grid))[None])

    def forward(self, x, t, y):
        """x (N, C, H, W) latents, t (N,) timesteps, y (N,) labels -> (N, C_out, H, W)."""
        w = self.weights()
        n, _, height, width = x.shape
        tokens = F.conv2d(x, w["x_embedder.proj.weight"], w["x_embedder.proj.bias"],
                          stride=self.patch)
        h = tokens.flatten(2).transpose(1, 2) + w["pos_embed"]
        temb = F.silu(affine(w, "t_embedder.mlp.0", timestep_features(t)))
        c = affine(w, "t_embedder.mlp.2", temb) + w["y_embedder.embedding_table.weight"][y]
        c = F.silu(c)  # every adaLN projection reads SiLU(c)
        for i in range(self.depth):
            h = self._block(w, f"blocks.{i}.", h, c)
        shift, scale = affine(w, "final_layer.adaLN_modulation.1", c).chunk(2, dim=1)
        patches = affine(w, "final_layer.linear", adaptive_norm(h, shift, scale))
        p, rows, cols = self.patch, height // self.patch, width // self.patch
        image = patches.reshape(n, rows, cols, p, p, self.out_channels)
        image = image.permute(0, 5, 1, 3, 2, 4).reshape(n, self.out_channels, height, width)
        return image[:, : self.keep]

    def _block(self, w, name, h, c):
        mods = affine(w, name + "adaLN_modulation.1", c).chunk(6, dim=1)
        attn_shift, attn_scale, attn_gate, mlp_shift, mlp_scale, mlp_gate = mods
        u = adaptive_norm(h, attn_shift, attn_scale)
        q, k, v = affine(w, name + "attn.qkv", u).unflatten(-1, (3, self.heads, -1)).unbind(2)
        h = h + attn_gate[:, None] * affine(w, name + "attn.proj", attend(q, k, v))
        u = adaptive_norm(h, mlp_shift, mlp_scale)
        hidden = F.gelu(affine(w, name + "mlp.fc1", u), approximate="tanh")
        return h + mlp_gate[:, None] * affine(w, name + "mlp.fc2", hidden)

    def forward_with_cfg(self, x, t, y, cfg_scale: float, guided: int = 3):
        """Guidance on the batch [z, z'] with labels [y, null], as the DiT and SiT samplers run
        it: both halves are evaluated at z, and only the first `guided` channels (3, of 4 latent
        channels, in the released samplers) are mixed, null + s (cond - null); the rest pass."""
        z = x[: len(x) // 2]
        out = self.forward(torch.cat([z, z]), t, y)
        with_label, null = out[:, :guided].chunk(2)
        mixed = null + cfg_scale * (with_label - null)
        return torch.cat([mixed.repeat(2, 1, 1, 1), out[:, guided:]], dim=1)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every trained weight: the released initialisation zeroes adaLN and the
    head, which would hide any mistake behind them. Matrices get unit-variance outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                std = p[0].numel() ** -0.5 if p.ndim > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


# ---------------------------------------------------------------- DiT's Gaussian diffusion

def respaced_steps(total: int, count: int) -> list[int]:
    """`count` timesteps of the 1000-step chain, evenly spread from 0 to total - 1 and rounded."""
    if count <= 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


class SpacedDiffusion:
    """Float64 tables of DDPM's linear-beta chain (1e-4 to 0.02 over 1000 steps) restricted to
    `count` of its steps: the kept steps' betas are 1 - abar_t / abar_prev, so the shorter chain
    has the same cumulative products at the kept steps. The variance is DiT's learned range."""

    def __init__(self, count: int, num_timesteps: int = 1000):
        full_abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64))
        self.timestep_map = respaced_steps(num_timesteps, count)
        abar = full_abar[self.timestep_map]
        abar_prev = np.concatenate([[1.0], abar[:-1]])
        beta = 1.0 - abar / abar_prev
        posterior_var = beta * (1.0 - abar_prev) / (1.0 - abar)
        self.tables = {
            "abar_prev": abar_prev,
            "x0_from_x": np.sqrt(1.0 / abar), "x0_from_eps": np.sqrt(1.0 / abar - 1.0),
            "mean_from_x0": beta * np.sqrt(abar_prev) / (1.0 - abar),
            "mean_from_x": (1.0 - abar_prev) * np.sqrt(1.0 - beta) / (1.0 - abar),
            # the first posterior variance is 0; its log is taken from the second
            "log_var_min": np.log(np.concatenate([posterior_var[1:2], posterior_var[1:]])),
            "log_var_max": np.log(beta)}
        self.steps = len(self.timestep_map)

    def coef(self, name: str, j: int) -> torch.Tensor:
        return torch.tensor(float(self.tables[name][j]), dtype=torch.float32)

    def predict(self, model_fn, x, j):
        """The model at chain step j: (posterior mean, log variance, predicted x0)."""
        t = torch.full((len(x),), self.timestep_map[j], dtype=torch.int64)
        out = model_fn(x, t)
        eps, v = out[:, : x.shape[1]], out[:, x.shape[1]:]
        x0 = self.coef("x0_from_x", j) * x - self.coef("x0_from_eps", j) * eps
        mean = self.coef("mean_from_x0", j) * x0 + self.coef("mean_from_x", j) * x
        lo, hi = self.coef("log_var_min", j), self.coef("log_var_max", j)
        mix = (v + 1) / 2
        return mean, mix * hi + (1 - mix) * lo, x0

    def p_sample_loop(self, model_fn, x, noises):
        """Ancestral sampling, the i-th step (from the noisiest) adding noises[i]; the last step
        returns the mean."""
        for i, j in enumerate(range(self.steps - 1, -1, -1)):
            mean, log_var, _ = self.predict(model_fn, x, j)
            x = mean if j == 0 else mean + (0.5 * log_var).exp() * noises[i]
        return x

    def ddim_sample_loop(self, model_fn, x):
        """Deterministic DDIM (eta = 0): re-derive eps from the predicted x0, step to abar_prev."""
        for j in range(self.steps - 1, -1, -1):
            _, _, x0 = self.predict(model_fn, x, j)
            eps = (self.coef("x0_from_x", j) * x - x0) / self.coef("x0_from_eps", j)
            keep = self.coef("abar_prev", j)
            x = keep.sqrt() * x0 + (1 - keep).sqrt() * eps
        return x


# ---------------------------------------------------------------- SiT's samplers
# SiT's linear interpolant runs from noise at t = 0 to data at t = 1: x_t = t x1 + (1 - t) x0,
# and the network predicts the velocity dx_t/dt.

def sit_ode(model_fn, x, num_steps: int, method: str):
    """Fixed-grid ODE on num_steps points of [0, 1]: forward Euler, or Heun's second-order
    method (an Euler predictor, then the average of both slopes)."""
    grid = torch.linspace(0, 1, num_steps)
    for t, t_next in zip(grid[:-1], grid[1:]):
        dt = t_next - t
        slope = model_fn(x, t.expand(len(x)))
        if method != "euler":
            ahead = model_fn(x + dt * slope, (t + dt).expand(len(x)))
            slope = (slope + ahead) / 2
        x = x + dt * slope
    return x


def sit_sde(model_fn, x, num_steps: int, noises, last_step_size: float = 0.04):
    """Euler-Maruyama on num_steps points of [0, 1 - last_step_size] for
    dx = [v + w(t) s(x, t)] dt + sqrt(2 w(t)) dW, with the diffusion w(t) = 1 - t and the score
    s = (t v - x) / (1 - t) of the linear interpolant; then one noiseless step of
    last_step_size. noises[i] is the i-th step's standard normal draw."""
    grid = torch.linspace(0, 1 - last_step_size, num_steps)
    dt = grid[1] - grid[0]

    def drift(x, t):
        v = model_fn(x, t.expand(len(x)))
        return v + (t * v - x), 1 - t  # w(t) * s(x, t) = t v - x

    for i, t in enumerate(grid[:-1]):
        mean_step, w = drift(x, t)
        x = x + mean_step * dt + torch.sqrt(2 * w) * torch.sqrt(dt) * noises[i]
    return x + drift(x, grid[-1])[0] * last_step_size
