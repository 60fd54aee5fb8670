"""The installed package holds every subpackage: pyproject.toml lists packages by hand (convert/
and cli/ are mapped into the mlx_imgen namespace), so a new folder must be listed there too."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> tuple[set[str], dict[str, str]]:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(setup["packages"]), setup["package-dir"]


def test_every_source_folder_is_an_installed_package():
    packages, folders = _declared()
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            if "__pycache__" not in parts:
                found.add(".".join((name, *parts)))
    assert found - packages == set(), "folders with __init__.py missing from pyproject packages"
    assert packages - found == set(), "pyproject lists packages that have no folder"
