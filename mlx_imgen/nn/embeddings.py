"""Input and condition embeddings: image patches, class labels (with a null class), timesteps."""

import mlx.core as mx
import mlx.nn as nn

from .positions import timestep_frequencies


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches of an NHWC latent, projected to the model width."""

    def __init__(self, in_channels: int, dims: int, patch_size: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dims, patch_size, stride=patch_size, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.proj(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the timestep through a two-layer SiLU MLP."""

    def __init__(self, dims: int, frequency_dims: int = 256, freq_shift: float = 0.0):
        super().__init__()
        self.frequency_dims = frequency_dims
        self.freq_shift = freq_shift
        self.linear1 = nn.Linear(frequency_dims, dims)
        self.linear2 = nn.Linear(dims, dims)

    def __call__(self, t: mx.array) -> mx.array:
        features = timestep_frequencies(t, self.frequency_dims, shift=self.freq_shift)
        return self.linear2(nn.silu(self.linear1(features)))
