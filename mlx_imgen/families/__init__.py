"""Families: one declared `Family` per public checkpoint lineage (a backbone configuration, key
maps and the name of its sampling preset table)."""

from .amused import AMUSED
from .base import Family, Layout
from .dit import DIT, SIT
from .janus import JANUS
from .llamagen import LLAMAGEN
from .maskgit import MASKGIT
from .sana import SANA

# DiT and SiT checkpoints have the same keys: detection picks DiT, --family sit picks SiT
FAMILIES: dict[str, Family] = {f.name: f for f in (LLAMAGEN, MASKGIT, DIT, SIT, JANUS, AMUSED,
                                                  SANA)}

__all__ = ["FAMILIES", "Family", "Layout", "detect", "get"]


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect(state: dict) -> str | None:
    """The family whose signature keys the checkpoint holds, if any."""
    return next((name for name, family in FAMILIES.items() if family.is_checkpoint(state)), None)
