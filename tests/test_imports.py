"""The package layering (DESIGN.md) and no import circle (issue 12), from the source itself.

Layering counts every import statement, also those inside functions. A circle counts the
imports a module runs when it is imported (module and class level, ``if TYPE_CHECKING`` blocks
included); an import inside a function body is late binding, run when the function is called,
and allowed to point back (e.g. ``CrossbarLayer.program`` calling ``crossbar.program``)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("admm", "crossbar", "experiments")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _nodes(tree: ast.AST, functions: bool):
    """Every node of ``tree``; without ``functions``, not those inside function bodies."""
    for node in ast.iter_child_nodes(tree):
        if not functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                               ast.Lambda)):
            continue
        yield node
        yield from _nodes(node, functions)


def _imports(path: Path, functions: bool = True) -> set[str]:
    """Modules of this project that ``path`` imports (``functions``: also inside function
    bodies)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in _nodes(ast.parse(path.read_text()), functions):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def _graph(functions: bool = True) -> dict[str, set[str]]:
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {t for t in _imports(path, functions) if t in files and t != name}
    return graph


def test_layers_admm_and_crossbar_do_not_import_each_other_or_the_run_layer():
    for name, targets in _graph().items():
        top = name.split(".")[0]
        allowed = {"admm": {"admm"}, "crossbar": {"crossbar"},
                   "experiments": set(PACKAGES)}[top]
        bad = [t for t in targets if t.split(".")[0] not in allowed]
        assert not bad, f"{name} imports {bad}"


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of modules in ``graph`` (depth-first search), or None. A package importing
    its own submodules (``__init__`` re-exports) and those importing each other is how a
    package is built, not a circle; every other back edge is one."""
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [node, nxt] if nxt in stack \
                    else [node, nxt]
                if not all(c == cycle[0] or c.startswith(cycle[0] + ".") for c in cycle):
                    return cycle
            elif nxt not in state:
                found = visit(nxt, stack + [node])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_circle():
    graph = _graph(functions=False)
    assert _circle(graph) is None, "import circle: " + " -> ".join(_circle(graph))


def test_the_check_sees_a_circle():
    """The checker itself: the circle the attack found (config -> posttraining -> guard ->
    config), put back, is reported."""
    graph = _graph(functions=False)
    assert "experiments.config" in graph["experiments.guard"]
    graph["experiments.config"] = graph["experiments.config"] | {"experiments.posttraining"}
    assert _circle(graph) is not None


def test_the_admm_group_schema_is_built_from_the_library_config():
    """No mirror class (issue 12): every admm.CompressConfig field a user sets is a key of the
    admm group, with the library's default, generated from the class itself."""
    import dataclasses

    from admm import CompressConfig
    from experiments.config import RUN_LAYER_FIELDS, AdmmSettings

    group = {f.name: f for f in dataclasses.fields(AdmmSettings)}
    for f in dataclasses.fields(CompressConfig):
        if f.name in RUN_LAYER_FIELDS:
            assert f.name not in group or f.name == "constraints"
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        mine = group[f.name]
        got = mine.default if mine.default is not dataclasses.MISSING else mine.default_factory()
        assert list(got) == list(default) if isinstance(default, tuple) else got == default
    assert set(group) - {f.name for f in dataclasses.fields(CompressConfig)} == {"levels",
                                                                               "per_column"}


ORCHESTRATORS = {"run_compress", "_run_compress", "run_device_study", "_run_device_study",
                 "preflight", "_prepare", "compress_inputs", "held_fixed",
                 "fingerprint", "check_resume", "open_run", "budget_search"}
"""The functions of the run layer that unpack the validated experiment (``budget_search``: runs
whole runs, one per budget; ``compress_inputs``:
the compressors' inputs; ``held_fixed``: the caption, also for ``experiments.replot``), and
the run-folder guards, which compare the run's identity, i.e. the whole validated config
(``fingerprint`` reads every fingerprinted section, ``open_run``/``check_resume`` every
checkpoint's fingerprint)."""


def test_stages_take_explicit_arguments_not_the_experiment():
    """Issue 12: below the orchestrators, no stage takes the whole validated experiment
    (``CompressExperiment`` / ``StudyExperiment``), only what it reads."""
    bad = []
    for path in (ROOT / "experiments").glob("*.py"):
        if path.stem == "config":  # the experiment's own schema
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.name not in ORCHESTRATORS:
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(a.annotation is not None and "Experiment" in ast.unparse(a.annotation)
                       for a in args):
                    bad.append(f"{path.stem}.{node.name}")
    assert not bad, f"stages that take the experiment: {bad}"
