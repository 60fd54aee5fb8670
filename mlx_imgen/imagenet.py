"""The 1000 ImageNet-1k class names, so that `--class "golden retriever"` means class 207.

imagenet_classes.txt holds one class per line, its index the line number from 0; a line may
list synonyms separated by commas. The names are torchvision's ImageNet category names
(`_IMAGENET_CATEGORIES` in torchvision/models/_meta.py, torchvision 0.28.0), bundled as data.
"""

import difflib
from functools import lru_cache
from importlib import resources

NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == NUM_CLASSES, "imagenet_classes.txt must list 1000 classes"
    return names


@lru_cache(maxsize=1)
def _lookup() -> dict[str, int]:
    table = {}
    for index, line in enumerate(class_names()):
        for synonym in line.split(","):
            table.setdefault(synonym.strip().lower(), index)
    return table


def class_index(text: str) -> int:
    """A class id from an integer or an ImageNet class name (any synonym, any case)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    key = " ".join(text.lower().split())
    if key in _lookup():
        return _lookup()[key]
    close = difflib.get_close_matches(key, list(_lookup()), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        "pass a class index 0..999 or an ImageNet class name such as 'golden retriever'"
    raise ValueError(f"--class {text!r} is not an ImageNet class name; {hint}")


def class_name(index: int) -> str:
    return class_names()[index] if 0 <= index < NUM_CLASSES else str(index)
