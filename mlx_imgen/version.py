"""The package version, importable without importing anything else of mlx_imgen."""

__version__ = "0.1.0"
