"""The Typer application behind the `mlx-imgen` console script."""

import typer

from .compare import compare
from .errors import GuardedGroup
from .generate import generate
from .models import convert, info, models
from .profile import profile
from .score import score

app = typer.Typer(cls=GuardedGroup, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Diffusion, masked-token and next-token image generation on MLX.")
for command in (models, convert, generate, info, profile, score, compare):
    app.command()(command)


@app.callback()
def root() -> None:
    """Diffusion, masked-token and next-token image generation on MLX."""

