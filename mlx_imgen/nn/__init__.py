"""Shared layers from which every family's Transformer is configured."""

from .attention import Attention, KVCache, relu_linear_attention
from .conv import BandedConv2d
from .convnext import ConvNeXtBlock, GlobalResponseNorm
from .depthwise import DepthwiseConv2d, depthwise_conv2d
from .embeddings import PatchEmbed, TimestepEmbedder
from .mixffn import MixFFN
from .mlp import GEGLU, GeluMLP, SwiGLU, make_mlp, swiglu_hidden
from .norms import GroupNorm, RMSNorm, make_norm
from .positions import LearnedPositions, Rope1D, apply_rope, rope_2d_table, sincos_2d, timestep_frequencies

__all__ = [
    "Attention", "KVCache", "relu_linear_attention", "BandedConv2d", "DepthwiseConv2d", "depthwise_conv2d", "MixFFN", "ConvNeXtBlock", "GlobalResponseNorm", "GEGLU", "PatchEmbed",
    "TimestepEmbedder", "GeluMLP", "SwiGLU", "make_mlp",
    "swiglu_hidden", "GroupNorm", "RMSNorm", "make_norm", "LearnedPositions", "Rope1D", "apply_rope", "rope_2d_table",
    "sincos_2d", "timestep_frequencies",
]
