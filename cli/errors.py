"""The CLI's error contract: every failure is one line on stderr and exit code 2, Ctrl-C is
`interrupted` and exit code 130, never a traceback (MLX_IMGEN_DEBUG=1 re-raises instead).

`GuardedGroup` is the one boundary around every command; commands raise ValueError with a
sentence naming the input and the fix, and the boundary words everything else.
"""

import contextlib
import errno
import os
import signal
import sys

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer >= 0.2x carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:
    from click import exceptions as click_errors

from .interrupt import INTERRUPTED_EXIT, interrupted_at_start_up

# soft_wrap: one message stays one line whatever the terminal width
stderr = Console(stderr=True, soft_wrap=True)
USAGE_EXIT = 2
DEBUG_ENV = "MLX_IMGEN_DEBUG"


def one_line(message: str) -> str:
    """Join a multi-line message (a list of files to fetch, say) into one line."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = ""
    for line in lines:
        text += line if not text else (" " if text.endswith((":", ",", ";")) else "; ") + line
    return text


def report(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False)


def fail(message: str) -> "typer.Exit":
    report(message)
    return typer.Exit(USAGE_EXIT)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def caused_by_interrupt(err: BaseException) -> bool:
    """Whether Ctrl-C is behind `err` (Python wraps it, say, when it lands in a class body)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def describe_os_error(err: OSError) -> str:
    where = f" {err.filename}" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on the device{' for' + where if where else ''}; free some space " \
            "or choose another --out"
    if err.errno == errno.EROFS:
        return f"cannot write{where}: the file system is read-only; choose another --out"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied for{where}; choose a path you may read and write"
    if err.errno == errno.ENOENT:
        return f"{err.filename or 'a file'} does not exist; check the path"
    if err.errno == errno.EISDIR:
        return f"{err.filename} is a folder, not a file; pass a file path"
    return f"{err.strerror or err}{' (' + str(err.filename) + ')' if err.filename else ''}"


def describe(err: BaseException, command: str | None) -> str:
    """One sentence for an exception that escaped a command."""
    name = f"mlx-imgen {command}" if command else "mlx-imgen"
    if isinstance(err, ValueError):
        return str(err)
    if isinstance(err, OSError) and err.errno is not None:
        return describe_os_error(err)
    if isinstance(err, MemoryError):
        return (f"{name} ran out of memory; ask for fewer images (--n, --batch-size) or pass "
                "--low-memory")
    detail = str(err) or "no details"
    if isinstance(err, RuntimeError) and detail.startswith("[write]"):  # MLX's file writers
        return (f"{name} could not write its output ({detail}); no space left on the device or "
                "a read-only target: free some space or choose another --out")
    return f"{name} failed with {type(err).__name__}: {detail} (set {DEBUG_ENV}=1 for the traceback)"


@contextlib.contextmanager
def user_errors():
    """Word a command's own failures at the place they happen; GuardedGroup catches the rest."""
    try:
        yield
    except (ValueError, OSError) as err:
        if debugging():
            raise
        raise fail(describe(err, None)) from None


@contextlib.contextmanager
def loading(model: str):
    """Loading a pipeline: what a damaged folder raises (truncated weights, a config without
    its keys, an index of `[]`) becomes one sentence naming the folder."""
    try:
        yield
    except (typer.Exit, typer.Abort):  # both are RuntimeErrors
        raise
    except (RuntimeError, KeyError, TypeError, IndexError, AttributeError) as err:
        if debugging():
            raise
        raise ValueError(f"{model} is damaged or incomplete ({type(err).__name__}: {err}); "
                         "convert the model again") from None


def usage_error_line(err: click_errors.ClickException) -> str:
    message = err.format_message()
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    return message


class GuardedGroup(TyperGroup):
    """The Typer group that applies the error contract to every command it runs."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as err:
            typer.echo(err.ctx.get_help(), err=True)
            sys.exit(USAGE_EXIT)
        except click_errors.ClickException as err:  # option parsing: a bad type, a missing argument
            report(usage_error_line(err))
            sys.exit(USAGE_EXIT if isinstance(err, click_errors.UsageError) else err.exit_code)
        except typer.Abort:
            stderr.print("interrupted", highlight=False)
            sys.exit(INTERRUPTED_EXIT)
        if result == INTERRUPTED_EXIT:  # Ctrl-C in a command, or in typer's own parsing
            stderr.print("interrupted", highlight=False)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx):
        if signal.getsignal(signal.SIGINT) is interrupted_at_start_up:  # the console script
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click_errors.ClickException):
            raise
        except KeyboardInterrupt:  # main() says "interrupted"
            raise typer.Exit(INTERRUPTED_EXIT) from None
        except BrokenPipeError:
            raise  # click's own handling: a closed pipe (`| head`) is not an error
        except Exception as err:  # the boundary: nothing may reach the user as a traceback
            if caused_by_interrupt(err):
                raise typer.Exit(INTERRUPTED_EXIT) from None
            if debugging():
                raise
            report(describe(err, ctx.invoked_subcommand))
            raise typer.Exit(USAGE_EXIT) from None


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
