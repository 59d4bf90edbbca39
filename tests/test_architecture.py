"""The house rules the code's shape must keep, checked on the source.

No import cycle between modules (imports inside functions and under TYPE_CHECKING count: a
cycle there still ties the modules together); the packages layered (detectors below alerts
below monitor, the core modules below all three); no function over 60 lines; no module over 400
lines without the reason at its top; the formatter never switched off; no `asyncio.wait_for`.

The modules are found through the package-directory mapping in pyproject.toml (core/ is
`lookout`, monitor/ is `lookout.monitor`, ...), so a module added to a folder is checked
without reinstalling.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
OVER_LIMIT_MARKER = "Over 400 lines because"
# Folders that are not the project's source: environments, build output, caches.
_NOT_SOURCE = {".venv", "venv", "build", "dist", ".git", "node_modules", "__pycache__"}


@dataclass(frozen=True)
class Module:
    name: str  # the import name, e.g. lookout.alerts.engine
    path: Path
    is_package: bool  # an __init__.py: relative imports resolve from the module itself

    @property
    def relative(self) -> str:
        return str(self.path.relative_to(ROOT))


@cache
def modules() -> dict[str, Module]:
    """Every module of the installed packages, by import name, from pyproject's mapping."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    folders = {(ROOT / folder).resolve(): package for package, folder in mapping.items()}
    found: dict[str, Module] = {}
    for folder, package in folders.items():
        for path in sorted(folder.rglob("*.py")):
            # A subfolder mapped to a package of its own is walked under that name.
            owner = max((f for f in folders if path.is_relative_to(f)), key=lambda f: len(f.parts))
            if owner != folder:
                continue
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            found[name] = Module(name, path, is_package)
    assert "lookout" in found and "lookout.monitor" in found, "pyproject's mapping changed"
    return found


@cache
def tree(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))


def _known(name: str) -> str | None:
    """The lookout module an import of `name` loads last: itself or its longest known prefix."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules():
            return candidate
        parts.pop()
    return None


def _imported(module: Module, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        package = module.name.split(".")
        if not module.is_package:
            package.pop()
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    for alias in node.names:
        # `from package import submodule` imports the submodule; a name is from `base`.
        yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base


def imports_of(module: Module) -> set[str]:
    """The lookout modules `module` imports anywhere: top level, in functions, TYPE_CHECKING."""
    found = set()
    for node in ast.walk(tree(module)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for name in _imported(module, node):
                target = _known(name) if _inside(name, "lookout") else None
                if target is not None and target != module.name:
                    found.add(target)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as the modules along it."""
    start = component[0]
    inside = set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node] & inside):
                if succ == start:
                    return [*paths[node], start]
                if succ not in paths:
                    paths[succ] = [*paths[node], succ]
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError(f"no cycle in component {component}")


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(module) for name, module in modules().items()}


def test_no_import_cycle_between_modules() -> None:
    graph = import_graph()
    cycles = [
        " -> ".join(one_cycle(graph, c)) + (f" (all tied: {', '.join(c)})" if len(c) > 2 else "")
        for c in strongly_connected(graph)
    ]
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_the_cycle_finder_finds_and_names_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    [component] = strongly_connected(graph)
    assert component == ["a", "b", "c"]
    assert one_cycle(graph, component) == ["a", "b", "c", "a"]


# What each package may not import: the layers point inward.
_CORE_EXEMPT = {"lookout.__main__"}  # the `python -m lookout` entry point runs the CLI
FORBIDDEN = {
    "lookout.detectors": ("lookout.monitor", "lookout.alerts"),
    "lookout.alerts": ("lookout.monitor",),
}
PACKAGES = ("lookout.monitor", "lookout.detectors", "lookout.alerts")


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _forbidden_for(name: str) -> tuple[str, ...]:
    if not any(_inside(name, p) for p in PACKAGES):  # a core module of the root package
        return () if name in _CORE_EXEMPT else PACKAGES
    return next((f for p, f in FORBIDDEN.items() if _inside(name, p)), ())


def test_packages_are_layered() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, module in modules().items()
        for target in sorted(imports_of(module))
        if any(_inside(target, f) for f in _forbidden_for(name))
    ]
    assert not wrong, "imports against the layers:\n  " + "\n  ".join(wrong)


def test_no_function_over_60_lines() -> None:
    long = []
    for module in modules().values():
        for node in ast.walk(tree(module)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                # From the `def` line (decorators excluded) to the last line of the body.
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module.relative}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n  " + "\n  ".join(sorted(long))


def test_no_module_over_400_lines_without_a_reason() -> None:
    long = []
    for module in modules().values():
        lines = len(module.path.read_text(encoding="utf-8").splitlines())
        if lines <= MAX_MODULE_LINES:
            continue
        first_paragraph = (ast.get_docstring(tree(module)) or "").split("\n\n")[0]
        if OVER_LIMIT_MARKER not in " ".join(first_paragraph.split()):
            long.append(f"{module.relative} ({lines} lines)")
    assert not long, (
        f"modules over {MAX_MODULE_LINES} lines whose docstring's first paragraph does not say "
        f"{OVER_LIMIT_MARKER!r} ...:\n  " + "\n  ".join(sorted(long))
    )


def source_files() -> Iterator[Path]:
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        if not any(p in _NOT_SOURCE or p.endswith(".egg-info") for p in parts):
            yield path


# Built from pieces so this file does not match itself.
_FORMATTER_OFF = re.compile("#" + r"\s*fmt:\s*(skip|off)\b")


def test_the_formatter_is_never_switched_off() -> None:
    marked = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in source_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _FORMATTER_OFF.search(line)
    ]
    assert not marked, "formatter switched off at:\n  " + "\n  ".join(sorted(marked))


_CONFLICT_MARKER = re.compile(r"^(<{7}|>{7}) ")
_TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".sql", ".service", ".json"}


def test_no_merge_conflict_markers_are_left() -> None:
    skipped = {".git", ".venv", "build", "node_modules", "__pycache__"}
    left = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in ROOT.rglob("*")
        if path.suffix in _TEXT_SUFFIXES
        and path.is_file()
        and not skipped & set(path.relative_to(ROOT).parts)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _CONFLICT_MARKER.match(line)
    ]
    assert not left, "merge conflict markers at:\n  " + "\n  ".join(sorted(left))


# SQL statements in string constants: only the storage layer writes (and reads) tables.
_SQL_STATEMENT = re.compile(
    r"^\s*(INSERT\s+(OR\s+\w+\s+)?INTO|CREATE\s+(UNIQUE\s+)?(TABLE|INDEX)|DELETE\s+FROM|"
    r"UPDATE\s+\w+\s+SET|ALTER\s+TABLE|DROP\s+TABLE|SELECT\s.+\sFROM\s)",
    re.IGNORECASE | re.DOTALL,
)
_STORAGE = "lookout.monitor.storage"
# Not SQL the module runs: text that only looks like it.
_SQL_LOOKALIKES = {
    "lookout.monitor.demo.traffic",  # an out-of-distribution prompt of the demo's traffic
    "lookout.sqlite_thread",  # the SQLite thread: settings and its callers' added columns
}


def test_no_module_outside_the_storage_layer_writes_sql() -> None:
    found = [
        f"{module.relative}:{node.lineno}"
        for name, module in modules().items()
        if not _inside(name, _STORAGE) and name not in _SQL_LOOKALIKES
        for node in ast.walk(ast.parse(module.path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _SQL_STATEMENT.match(node.value)
    ]
    assert not found, "SQL outside monitor/storage:\n  " + "\n  ".join(sorted(found))


def test_no_module_waits_with_asyncio_wait_for() -> None:
    """On Python 3.11 `asyncio.wait_for` returns the result, swallowing the cancellation, when
    a task is cancelled just as what it waits for finishes (CPython gh-86296, fixed in 3.12 by
    rebuilding it on `asyncio.timeout`): a component's loop then runs on and its TaskGroup never
    exits, so a stop hangs (the leadership loop did, in tests/monitor/test_pg_alerting.py, about
    one run in ten). `async with asyncio.timeout(...)` has no such window."""
    found = [
        f"{module.relative}:{node.lineno}"
        for module in modules().values()
        for node in ast.walk(tree(module))
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "wait_for"
            and isinstance(node.value, ast.Name)
            and node.value.id == "asyncio"
        )
        or (
            isinstance(node, ast.ImportFrom)
            and node.module == "asyncio"
            and any(alias.name == "wait_for" for alias in node.names)
        )
    ]
    assert not found, "asyncio.wait_for at (use asyncio.timeout):\n  " + "\n  ".join(sorted(found))


@pytest.mark.parametrize(
    ("importer", "source", "expected"),
    [
        ("lookout.alerts.engine", "from lookout.alerts import rules", "lookout.alerts.rules"),
        ("lookout.alerts.engine", "from lookout.series import ALL", "lookout.series"),
        ("lookout.alerts.engine", "from .rules import observe", "lookout.alerts.rules"),
        ("lookout.alerts", "from .rules import observe", "lookout.alerts.rules"),
        ("lookout.monitor.config", "from ..daemon import Daemon", "lookout.monitor.daemon"),
        ("lookout.alerts.engine", "import lookout.monitor.daemon", "lookout.monitor.daemon"),
    ],
)
def test_imports_resolve_to_the_modules_they_load(
    importer: str, source: str, expected: str
) -> None:
    [node] = ast.parse(source).body
    assert isinstance(node, ast.Import | ast.ImportFrom)
    resolved = {_known(n) for n in _imported(modules()[importer], node)}
    assert resolved == {expected}
