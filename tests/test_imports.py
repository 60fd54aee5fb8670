"""The layering holds: every import in mlx_imgen/, convert/ and cli/ (those inside functions
included) points down. No module imports one that imports it back, through any chain, and no
folder does either; samplers never import a family; nn/ imports nothing of the project above it;
nothing outside cli/ imports the CLI."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# source folder -> the package it installs as (pyproject's package-dir mapping)
PACKAGES = {"mlx_imgen": "mlx_imgen", "convert": "mlx_imgen.convert", "cli": "mlx_imgen.cli"}


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module the three folders install."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if folder == "mlx_imgen" and parts[:1] in (["convert"], ["cli"]):
                continue  # not in this checkout's layout; never both
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _module_files()


def _known(name: str) -> str | None:
    """The longest installed module that `name` names or lies in (a.b.func -> a.b)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    """The project modules that `module` imports anywhere in its file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            # `from a import b` imports the module a.b where there is one, else a
            names = [f"{origin}.{alias.name}" if _known(f"{origin}.{alias.name}") ==
                     f"{origin}.{alias.name}" else origin for alias in node.names]
        else:
            continue
        for name in names:
            target = _known(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _node(module: str) -> str:
    """A module's folder node: mlx_imgen's top-level modules stand for themselves, every
    package (mlx_imgen.nn, mlx_imgen.convert, ...) for all of its modules."""
    parts = module.split(".")
    if len(parts) == 1:
        return module
    if len(parts) == 2 and module in MODULES and MODULES[module].name != "__init__.py":
        return module
    return ".".join(parts[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _folder_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        edges = graph.setdefault(_node(module), set())
        edges.update(_node(t) for t in targets if _node(t) != _node(module))
    return graph


def _edges(where, to) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if where(m)
                  for t in targets if to(t))


def test_the_parser_sees_lazy_and_relative_imports():
    # pins the graph builder on imports known to exist, so a broken parser cannot pass
    assert "mlx_imgen.loading" in GRAPH["mlx_imgen"]  # lazy, inside load()
    assert "mlx_imgen.cli.app" in GRAPH["mlx_imgen.cli"]  # lazy and relative
    assert "mlx_imgen.weights.keymap" in GRAPH["mlx_imgen.families.dit"]
    assert "mlx_imgen.paradigms.guidance" in GRAPH["mlx_imgen.paradigms.diffusion.common"]
    assert _node("mlx_imgen.pipeline") == "mlx_imgen.pipeline"
    assert _node("mlx_imgen.convert.converter") == "mlx_imgen.convert"
    assert _node("mlx_imgen.weights") == "mlx_imgen.weights"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_imports_one_that_imports_it_back():
    cycle = _cycle(GRAPH)
    assert cycle is None, f"import cycle between modules: {' -> '.join(cycle)}"


def test_no_folder_imports_one_that_imports_it_back():
    cycle = _cycle(_folder_graph())
    assert cycle is None, f"import cycle between folders: {' -> '.join(cycle)}"


def test_samplers_never_import_a_family():
    assert _edges(lambda m: m.startswith("mlx_imgen.paradigms"),
                  lambda t: t.startswith("mlx_imgen.families")) == []


def test_nn_imports_nothing_above_it():
    assert _edges(lambda m: m.startswith("mlx_imgen.nn"),
                  lambda t: not t.startswith("mlx_imgen.nn")) == []


def test_weights_layer_imports_nothing_above_nn():
    allowed = ("mlx_imgen.weights", "mlx_imgen.nn")
    assert _edges(lambda m: m.startswith("mlx_imgen.weights"),
                  lambda t: not t.startswith(allowed)) == []


@pytest.mark.parametrize("lower, upper", [
    ("mlx_imgen.families", "mlx_imgen.registry"),
    ("mlx_imgen.families", "mlx_imgen.convert"),
    ("mlx_imgen.pipeline", "mlx_imgen.convert"),
    ("mlx_imgen.pipeline", "mlx_imgen.loading"),
])
def test_a_lower_layer_never_imports_an_upper_one(lower, upper):
    assert _edges(lambda m: m.startswith(lower), lambda t: t.startswith(upper)) == []


def test_the_library_never_imports_the_cli():
    assert _edges(lambda m: not m.startswith("mlx_imgen.cli"),
                  lambda t: t.startswith("mlx_imgen.cli")) == []
