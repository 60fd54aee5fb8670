"""mlx-imgen: diffusion, masked-token and next-token image generation on MLX."""

from .version import __version__

__all__ = ["__version__", "load"]


def load(model: str, **kwargs):
    """A ready pipeline for an alias (downloaded and converted on first use) or a folder."""
    from .loading import load as _load

    return _load(model, **kwargs)
