"""The `mlx-imgen` command line (Typer)."""
