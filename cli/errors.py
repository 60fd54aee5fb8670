"""Turn bad input into one sentence on stderr and exit code 2, with no traceback."""

import contextlib
import sys

import typer
from rich.console import Console

stderr = Console(stderr=True)
USAGE_EXIT = 2


def fail(message: str) -> "typer.Exit":
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(USAGE_EXIT)


@contextlib.contextmanager
def user_errors():
    try:
        yield
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)


def parse_positive_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{what} must be positive integers separated by commas (for example "
                         f"1,4), got {text!r}")
    return values


def parse_names(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown {what} {', '.join(unknown) or repr(text)}; choose from "
                         f"{', '.join(known)}")
    return names
