"""The package's shape: no import cycle, no import hidden inside a function, short functions."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "neuronlens"


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _target(node: ast.ImportFrom | ast.Import, modules) -> list[str]:
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    if isinstance(node, ast.ImportFrom):  # `from pkg import sub` imports the submodule too
        names += [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n in modules]


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {
        name: {
            t
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for t in _target(node, modules)
            if t != name
        }
        for name, tree in modules.items()
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_neuronlens_import_inside_a_function():
    late = []
    for name, tree in _modules().items():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "neuronlens"
                ):
                    late.append(f"{name}.{fn.name}: from {node.module}")
                elif isinstance(node, ast.Import) and any(
                    a.name.startswith("neuronlens") for a in node.names
                ):
                    late.append(f"{name}.{fn.name}: import")
    assert not late, late


def test_private_names_stay_in_their_module():
    crossing = [
        f"{name}: {node.module}.{a.name}"
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neuronlens")
        for a in node.names
        if a.name.startswith("_")
    ]
    assert not crossing, crossing


def test_every_function_fits_on_a_screen():
    long = [
        f"{name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines"
        for name, tree in _modules().items()
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        and fn.end_lineno - fn.lineno + 1 > 80
    ]
    assert not long, long
