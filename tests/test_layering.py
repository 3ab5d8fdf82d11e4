"""The layers of docs/ARCHITECTURE.md, checked on the source: fray_dask at the bottom (it imports
neither zephyr nor tpu, not even inside a function or by a module name in a string), zephyr and tpu
beside each other, no import circle anywhere in the three packages, no private name imported
from another module, every module under 400 lines."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

from tests.imports import heavy_modules_loaded

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fray_dask", "zephyr", "tpu")
MAX_LINES = 400
# Which package may import which (besides itself).
ALLOWED = {"fray_dask": set(), "zephyr": {"fray_dask"}, "tpu": {"fray_dask"}}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module of ours that `name` (a module or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[tuple[str, str, int]]:
    """(imported module of ours, the name imported, line) for every import in `module`, those
    inside functions included."""
    path = MODULES[module]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [(alias.name, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names = [(f"{base}.{alias.name}", alias.name) for alias in node.names]
        else:
            continue
        for target, name in names:
            resolved = _resolve(target)
            if resolved is not None and resolved != module:
                out.append((resolved, name, node.lineno))
    return out


GRAPH = {module: _imports(module) for module in MODULES}


ABOVE_THE_CORE = ("fray_dask.rl", "fray_dask.executor")


def test_the_fray_dask_core_never_imports_the_packages_above_it():
    """fray_dask/rl/ (the RL coordinators) and fray_dask/executor/ (the step executor) build on
    fray_dask's core (contexts, actors, jobs, files); nothing in the core imports them back, and
    they do not import each other."""
    wrong = [
        f"{module}:{line} imports {target}"
        for module, imports in GRAPH.items()
        if module.startswith("fray_dask")
        for target, _, line in imports
        if target.startswith(ABOVE_THE_CORE)
        and not target.startswith(module.split(".")[0] + "." + module.split(".")[1])
    ]
    assert wrong == []


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down_the_layers(package):
    wrong = [
        f"{module}:{line} imports {target}"
        for module, imports in GRAPH.items()
        if module.split(".")[0] == package
        for target, _, line in imports
        if target.split(".")[0] not in {package} | ALLOWED[package]
    ]
    assert wrong == []


def test_fray_dask_names_no_higher_module_in_a_string():
    """A scheme or plugin found by a module path in a string is an import too."""
    higher = re.compile(r"^(zephyr|tpu)(\.[a-z_]+)+(:\w+)?$")
    named = [
        f"{module}:{node.lineno} {node.value!r}"
        for module, path in MODULES.items()
        if module.startswith("fray_dask")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        if higher.match(node.value)
    ]
    assert named == []


def _cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    edges = defaultdict(set)
    for module, imports in GRAPH.items():
        edges[module].update(target for target, _, _ in imports)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in MODULES:
        if module not in index:
            visit(module)
    return groups


def test_no_import_circles():
    assert _cycles() == []


def test_the_circle_check_finds_a_circle(tmp_path):
    """The check itself can fail: two modules importing each other inside functions."""
    GRAPH["zephyr.plan"].append(("zephyr.backends.dask", "DaskBackend", 0))
    try:
        assert any({"zephyr.plan", "zephyr.backends.dask"} <= set(g) for g in _cycles())
    finally:
        GRAPH["zephyr.plan"].pop()


def test_no_private_names_imported_across_modules():
    private = [
        f"{module}:{line} imports {name} from {target}"
        for module, imports in GRAPH.items()
        for target, name, line in imports
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_under_the_size_limit(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines < MAX_LINES, f"{MODULES[module]} has {lines} lines; split it along a named seam"


@pytest.mark.parametrize(
    "package", ["fray_dask", "fray_dask.rl", "fray_dask.executor", "tpu", "zephyr", "zephyr.io"]
)
def test_every_public_name_resolves_and_costly_ones_load_late(package):
    """Each package lists its public names in `__all__`; those in its `_LAZY` table load their
    module on first use (fray_dask.exports), the rest are imported by the package itself."""
    code = (
        f"import importlib, sys\n"
        f"pkg = importlib.import_module({package!r})\n"
        "lazy = set(pkg._LAZY)\n"
        "assert lazy <= set(pkg.__all__), lazy - set(pkg.__all__)\n"
        "assert all(name not in vars(pkg) for name in lazy)\n"
        "assert all(getattr(pkg, name) is not None for name in pkg.__all__)\n"
        "assert set(pkg.__all__) <= set(dir(pkg))\n"
    )
    assert heavy_modules_loaded(code, ("nothing",)) == []


PURE_CORES = [
    "zephyr.plan",
    "zephyr.stages",
    "zephyr.shuffle.steps",
    "zephyr.shuffle.keys",
    "zephyr.shuffle.join",
    "zephyr.backends.dask_checks",
    "fray_dask.types",
    "fray_dask.sizes",
    "fray_dask.topology",
    "fray_dask.schemes",
    "fray_dask.specs",
    "fray_dask.connection",
    "fray_dask.kube_spec",
    "fray_dask.executor.steps",
    "fray_dask.executor.versions",
    "tpu.manifests",
]


@pytest.mark.parametrize("module", PURE_CORES)
def test_the_pure_cores_load_no_dask_kubernetes_or_io_libraries(module):
    """The modules docs/ARCHITECTURE.md calls pure import without Dask, Kubernetes, pyarrow or
    the filesystem and codec libraries."""
    heavy = ("dask", "distributed", "kubernetes", "dask_kubernetes", "pyarrow", "fsspec")
    assert heavy_modules_loaded(f"import {module}", heavy) == []
