"""The package's shape: no import cycles (every import counted, deferred ones included),
and the stages are the only modules that read the Hydra config object."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rsnet"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The rsnet modules a file imports explicitly (``from a import b`` counts ``a.b`` when
    it is a module, else ``a``), at any depth of the file."""
    out = set()
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in known else base)
    return {m for m in out if m in known and m != this}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    known = modules()
    graph = {m: imports_of(p, known) for m, p in known.items()}
    assert "rsnet.stages.context" in graph["rsnet.stages.plan"]  # the scan sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("name", ["DictConfig", "HydraConfig"])
def test_only_stages_and_config_modules_read_the_hydra_config(name):
    """Library modules take plain values; the config object stays with the stages, the
    pipeline (settings checks) and the config schema. Known exceptions are listed."""
    allowed_prefixes = ("rsnet.stages", "rsnet.pipeline", "rsnet.config", "rsnet.validate",
                        "rsnet.sweep")
    readers = sorted(m for m, p in modules().items()
                     if name in p.read_text() and not m.startswith(allowed_prefixes))
    assert readers == KNOWN_CONFIG_READERS.get(name, []), readers


# Library modules that still take the config object (to be narrowed to plain values).
KNOWN_CONFIG_READERS: dict[str, list[str]] = {}


def test_no_function_is_longer_than_80_lines():
    """Long functions hide their phases; split one that grows past this (issue 15's target)."""
    long = sorted((node.end_lineno - node.lineno + 1, f"{module_name(p)}.{node.name}")
                  for p in modules().values() for node in ast.walk(ast.parse(p.read_text()))
                  if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.end_lineno - node.lineno + 1 > 80)
    assert not long, long
