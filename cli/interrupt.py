"""Ctrl-C before a command runs: print `interrupted` and exit with 130 at once. A leaf module,
so the console script and the command boundary (errors.GuardedGroup) share it without cycles."""

import os
import signal
import sys

INTERRUPTED_EXIT = 130


def interrupted() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    finally:
        os._exit(INTERRUPTED_EXIT)


def interrupted_at_start_up(signum, frame) -> None:
    interrupted()
