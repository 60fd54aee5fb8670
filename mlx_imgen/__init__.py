"""mlx-imgen: diffusion, masked-token and next-token image generation on MLX."""

__version__ = "0.1.0"


def load(model: str, **kwargs):
    """A ready pipeline for an alias (downloaded and converted on first use) or a folder."""
    from .pipeline import load as _load

    return _load(model, **kwargs)
