"""LlamaGen's VQ tokenizer in upstream layout, for the tests: the model now lives in
`mlx_imgen.reference.vq`; this module re-exports it beside the tests' tiny configuration."""

from mlx_imgen.reference.vq import (  # noqa: F401 - re-exported for the tests
    AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample, VectorQuantizer, VQModel,
    code_decoder, from_mlx, load_from_mlx)


def tiny_vq_config() -> dict:
    """Two levels: one downsample / upsample, attention at the lowest level and in both mids."""
    return dict(codebook_size=64, codebook_embed_dim=8, ch=32, ch_mult=(1, 2), z_channels=16,
                num_res_blocks=1)
