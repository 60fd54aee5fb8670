"""The `mlx-imgen` command line (Typer).

`main` is the console script. It imports nothing heavy before it can answer Ctrl-C, so that
an interrupt at any moment, start-up included, prints `interrupted` and exits with 130.
"""

import signal
import sys

from .interrupt import interrupted, interrupted_at_start_up


def main() -> None:
    # Until a command runs, Ctrl-C exits at once: an import may swallow a KeyboardInterrupt
    # (a bare `except:`), and there is nothing to clean up yet. The command boundary
    # (errors.GuardedGroup) restores KeyboardInterrupt so that half-written files are removed.
    signal.signal(signal.SIGINT, interrupted_at_start_up)
    try:
        from mlx_imgen import blas

        blas.ensure_optimized_blas()  # may re-execute this process with OpenBLAS preloaded
        from .app import app
    except KeyboardInterrupt:
        interrupted()
    except Exception as err:  # a broken installation: still one line, no traceback
        from .errors import caused_by_interrupt, debugging

        if caused_by_interrupt(err):
            interrupted()
        if debugging():
            raise
        sys.stderr.write(f"error: mlx-imgen could not start: {type(err).__name__}: {err} "
                         "(set MLX_IMGEN_DEBUG=1 for the traceback)\n")
        sys.exit(2)
    try:
        app()  # GuardedGroup words every command's errors and its Ctrl-C
    except KeyboardInterrupt:  # between commands' boundaries: argument parsing, exit
        interrupted()
