"""Families: one per public checkpoint lineage, each a backbone configuration plus a key map."""

from . import llamagen

FAMILIES = {llamagen.FAMILY: llamagen}


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
