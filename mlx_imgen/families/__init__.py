"""Families: one per public checkpoint lineage, each a backbone configuration plus a key map."""

from . import llamagen
from . import maskgit
from . import dit

FAMILIES = {llamagen.FAMILY: llamagen}
FAMILIES[maskgit.FAMILY] = maskgit
# DiT and SiT checkpoints have the same keys: detection picks DiT, --family sit picks SiT
FAMILIES[dit.FAMILY] = dit
FAMILIES[dit.SIT.FAMILY] = dit.SIT


def get(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect(state: dict) -> str | None:
    """The family whose signature keys the checkpoint holds, if any."""
    for name, family in FAMILIES.items():
        if family.is_checkpoint(state):
            return name
    return None
