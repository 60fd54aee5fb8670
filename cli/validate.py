"""Ranges of the CLI's numeric options, checked before any model is loaded.

Each command lists its options as `{"--name": (value, Range(...))}` and calls `check_options`;
a value of None (an option left at its model default) is not checked.
"""

import math
from dataclasses import dataclass

MAX_STEPS = 10_000
MAX_IMAGES = 10_000          # images one `generate` writes
MAX_BATCH = 4096             # images sampled or decoded together; profile's batch sizes
MAX_IMAGE_SIZE = 4096        # pixels per side
MAX_TRIALS = 1000
MAX_SEED = 2 ** 63 - 1       # MLX keys take 64-bit seeds; per-image offsets need headroom
MAX_GUIDANCE = 100.0
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1 << 20
MAX_STEP_BUDGET_S = 86_400.0
MAX_INDEX = 10 ** 6           # an image's index in its run; keys cost grows with it


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False       # the low end itself is excluded (top-p > 0)
    integer: bool = False
    multiple_of: int = 1

    def holds(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high and (not self.integer or value % self.multiple_of == 0)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.multiple_of > 1:
            kind = f"a multiple of {self.multiple_of}"
        low, high = (f"{int(v)}" if self.integer else f"{v:g}" for v in (self.low, self.high))
        if self.low_open:
            return f"{kind} above {low} and at most {high}"
        return f"{kind} at least {low} and at most {high}"


@dataclass(frozen=True)
class OneOf:
    choices: tuple

    def holds(self, value) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


def counted(high: int) -> Range:
    return Range(1, high, integer=True)


STEPS = counted(MAX_STEPS)
IMAGES = counted(MAX_IMAGES)
BATCH = counted(MAX_BATCH)
SEED = Range(0, MAX_SEED, integer=True)
INDEX = Range(0, MAX_INDEX, integer=True)
GUIDANCE = Range(0, MAX_GUIDANCE)
TEMPERATURE = Range(0, MAX_TEMPERATURE)
TOP_K = Range(0, MAX_TOP_K, integer=True)
TOP_P = Range(0, 1, low_open=True)
IMAGE_SIZE = Range(16, MAX_IMAGE_SIZE, integer=True, multiple_of=16)
TRIALS = counted(MAX_TRIALS)
STEP_BUDGET = Range(0, MAX_STEP_BUDGET_S)
MEMORY_LIMIT_GB = Range(0, 1e6, low_open=True)


def quantize_bits() -> OneOf:
    from mlx_imgen.quantize import BITS

    return OneOf(tuple(BITS))


def group_sizes() -> OneOf:
    from mlx_imgen.quantize import GROUP_SIZES

    return OneOf(tuple(GROUP_SIZES))


def check_value(option: str, value, allowed: "Range | OneOf") -> None:
    if value is None or allowed.holds(value):
        return
    if isinstance(allowed, OneOf):
        raise ValueError(f"{option} {value} is not supported; use {allowed.describe()}")
    raise ValueError(f"{option} must be {allowed.describe()}, got {value}")


def check_options(options: dict) -> None:
    """`{"--option": (value, allowed)}`: the first value out of its range raises ValueError."""
    for option, (value, allowed) in options.items():
        check_value(option, value, allowed)
