"""The package layering and no import circle (issues 12 and 20; docs/reliability.md), from the
source itself.

Both rules count every import statement of the project's own modules: at module and class level
and inside function bodies. An import in a function body runs when the function is called, not
when the module is imported, but a circle through it is a circle all the same: neither module
can be read, tested or moved without the other. The circle check leaves out the body of an
``if TYPE_CHECKING:`` block (its ``else`` branch counts): those imports never run, and naming a
type of a module that imports you is what they are for. The layering check counts them too (a
type from another package is still a dependency on it). Imports by string
(``importlib.import_module``) are not seen; the packages use none.

A package's ``__init__`` importing (re-exporting) its own submodules, and those importing their
package, is how a package is built, not a circle: a circle whose modules all lie in one package
and that passes through that package's ``__init__`` is allowed. Any other circle is broken (the
shared piece moved into a lower module both import, or a callable passed in), or its back edge
is listed in :data:`ALLOWED_CIRCLES`, which may only shrink."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "memxbar"
"""The namespace folder; module names here are relative to it (``crossbar.plan``)."""
PACKAGES = ("admm", "crossbar", "experiments")

ALLOWED_CIRCLES: dict[str, str] = {}
"""Import edges ``"a -> b"`` allowed to close a circle, each with why (e.g.
``{"experiments.schema -> experiments.config": "..."}``, the last one, gone with issue 20). Goal:
empty. An entry that no longer closes a circle fails
:func:`test_every_allowed_circle_is_still_needed`, so the list only shrinks; a new circle is
broken, not added here."""


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST, type_checking: bool):
    """Every node of ``tree``, function bodies included; without ``type_checking``, not those in
    the body of an ``if TYPE_CHECKING:`` block (its ``else`` branch runs, so it counts)."""
    for node in ast.iter_child_nodes(tree):
        if not type_checking and _is_type_checking(node):
            for child in node.orelse:
                yield child
                yield from _nodes(child, type_checking)
            continue
        yield node
        yield from _nodes(node, type_checking)


def _imports_of(source: str, module: str, package: str, type_checking: bool = True) -> set[str]:
    """The names of this project that ``source`` (module ``module`` of package ``package``)
    imports, anywhere in it: modules, and ``module.name`` for every ``from module import name``
    (``name`` may be a submodule). Without ``type_checking``, not inside ``if TYPE_CHECKING:``."""
    out = set()
    for node in _nodes(ast.parse(source, module), type_checking):
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
        names = [n.removeprefix("memxbar.") for n in names]
        out |= {n for n in names if n.split(".")[0] in PACKAGES}
    return out


def _graph(type_checking: bool = True) -> dict[str, set[str]]:
    """Module -> the project's modules it imports (every import; ``type_checking``: also those
    in ``if TYPE_CHECKING:`` blocks)."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = _imports_of(path.read_text(), name, package, type_checking)
        graph[name] = {t for t in imported if t in files and t != name}
    return graph


def test_layers_admm_and_crossbar_do_not_import_each_other_or_the_run_layer():
    for name, targets in _graph().items():
        top = name.split(".")[0]
        allowed = {"admm": {"admm"}, "crossbar": {"crossbar"},
                   "experiments": set(PACKAGES)}[top]
        bad = [t for t in targets if t.split(".")[0] not in allowed]
        assert not bad, f"{name} imports {bad}"


def _components(graph: dict[str, set[str]], nodes: set[str]) -> list[list[str]]:
    """The strongly connected components of ``graph`` restricted to ``nodes`` (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v] & nodes):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            out.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def _circle(graph: dict[str, set[str]], allowed=()) -> list[str] | None:
    """A circle of imports in ``graph`` that is neither package building nor closed only by
    ``allowed`` edges (``"a -> b"``), as ``[a, b, ..., a]``; None when there is none.

    A circle is package building when the innermost package holding all its modules is on it
    (its ``__init__``). So every other circle lies, for some package ``P`` (or the whole
    project), among ``P``'s modules without ``P`` itself and spans two of ``P``'s members
    (direct submodules or subpackages): found as a strongly connected component of that subgraph
    spanning two members, and reported as its first edge between members closed by a shortest
    path back."""
    graph = {a: {b for b in bs if f"{a} -> {b}" not in allowed} for a, bs in graph.items()}
    packages = sorted({n for n in graph if any(m.startswith(n + ".") for m in graph)})
    for package in ["", *packages]:
        prefix = package + "." if package else ""
        nodes = {n for n in graph if n.startswith(prefix)}

        def member(n: str, prefix: str = prefix) -> str:
            return n[len(prefix):].split(".")[0]

        for component in _components(graph, nodes):
            inside = set(component)
            crossing = [(a, b) for a in component for b in sorted(graph[a] & inside)
                        if member(a) != member(b)]
            if not crossing:
                continue
            a, b = crossing[0]
            back: dict[str, str | None] = {b: None}  # shortest path b -> ... -> a in the circle
            queue = deque([b])
            while a not in back:
                v = queue.popleft()
                for w in sorted(graph[v] & inside):
                    if w not in back:
                        back[w] = v
                        queue.append(w)
            path = [a]
            while back[path[-1]] is not None:
                path.append(back[path[-1]])
            return [a, *reversed(path)]
    return None


def test_no_import_circle_but_the_allowed():
    circle = _circle(_graph(type_checking=False), ALLOWED_CIRCLES)
    assert circle is None, (
        "import circle: " + " -> ".join(circle) + "; break it (move the shared piece into a "
        "lower module both import, or pass a callable), do not add it to ALLOWED_CIRCLES")


def test_every_allowed_circle_is_still_needed():
    """ALLOWED_CIRCLES only shrinks: an entry that closes no circle (the others still allowed)
    is removed."""
    graph = _graph(type_checking=False)
    stale = [edge for edge in ALLOWED_CIRCLES
             if _circle(graph, set(ALLOWED_CIRCLES) - {edge}) is None]
    assert not stale, f"ALLOWED_CIRCLES entries no longer needed, remove them: {stale}"


def test_every_import_counts():
    """Function bodies and class bodies count; an ``if TYPE_CHECKING:`` body counts only for
    the layering (its ``else`` always)."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import crossbar.plan\n"
        "if TYPE_CHECKING:\n"
        "    from .device import DeviceModel\n"
        "else:\n"
        "    from crossbar import cost\n"
        "def f():\n"
        "    from .convert import program\n"
        "class C:\n"
        "    from . import streams\n"
        "    def m(self):\n"
        "        import admm.obc\n"
    )
    runs = {"crossbar.plan", "crossbar", "crossbar.cost", "crossbar.convert",
            "crossbar.convert.program", "crossbar.streams", "admm.obc"}
    assert _imports_of(source, "crossbar.layers", "crossbar", type_checking=False) == runs
    assert _imports_of(source, "crossbar.layers", "crossbar") == runs | {
        "crossbar.device", "crossbar.device.DeviceModel"}


def test_the_check_sees_a_circle():
    """The checker itself: circles found (the one the attack found, config -> posttraining ->
    guard -> config; one leaving a package through its ``__init__``; one into a subpackage that
    skips its ``__init__``), package building not, an allowed edge not."""
    attack = {"experiments": set(), "experiments.config": {"experiments.posttraining"},
              "experiments.posttraining": {"experiments.guard"},
              "experiments.guard": {"experiments.config"}}
    assert _circle(attack) == ["experiments.config", "experiments.posttraining",
                               "experiments.guard", "experiments.config"]
    assert _circle(attack, {"experiments.guard -> experiments.config"}) is None
    building = {"p": {"p.a", "p.b"}, "p.a": {"p"}, "p.b": {"p", "p.a"}}
    assert _circle(building) is None
    assert _circle(building | {"p.a": {"p", "p.b"}}) == ["p.a", "p.b", "p.a"]
    leaving = {"p": {"p.a"}, "p.a": {"q.x"}, "q": set(), "q.x": {"p"}}
    assert _circle(leaving) is not None
    sub = {"p": {"p.s"}, "p.s": {"p.s.a"}, "p.s.a": {"p.b"}, "p.b": {"p.s"}}
    assert _circle(sub) is not None
    assert _circle(sub | {"p.b": set()}) is None


def test_the_crossbar_circle_stays_broken():
    """Issue 20: ``CrossbarLayer.program`` imported ``crossbar.convert`` (in its body), which
    imports ``crossbar.layers``. Programming and calibrating now live with the layers
    (``crossbar.convert`` re-exports them); the import put back is a circle again."""
    graph = _graph(type_checking=False)
    assert "crossbar.convert" not in graph["crossbar.layers"]
    assert "crossbar.layers" in graph["crossbar.convert"]
    graph["crossbar.layers"] = graph["crossbar.layers"] | {"crossbar.convert"}
    circle = _circle(graph, ALLOWED_CIRCLES)
    assert circle is not None and {"crossbar.layers", "crossbar.convert"} <= set(circle)


def test_the_admm_group_schema_is_built_from_the_library_config():
    """No mirror class (issue 12): every admm.CompressConfig field a user sets is a key of the
    admm group, with the library's default, generated from the class itself."""
    import dataclasses

    from memxbar.admm import CompressConfig
    from memxbar.experiments.compressors.settings import RUN_LAYER_FIELDS, AdmmSettings

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


ORCHESTRATORS = {
    # the compress run (experiments.pipeline) and its parts
    "run_compress", "compress_run", "_compress", "_chips", "_metrics", "chip_design",
    # the device study (experiments.study) and its parts
    "run_device_study", "_run_device_study", "_study_chips", "_sweeps", "_grids",
    "_layer_sensitivity", "_write_study",
    # what both runs share (experiments.stages)
    "preflight", "prepare", "compress_inputs", "held_fixed",
    "fingerprint", "check_resume", "open_run", "budget_search"}
"""The functions of the run layer that unpack the validated experiment: the two runs, split
into parts of at most 80 lines (``budget_search``: runs whole runs, one per budget;
``compress_inputs``:
the compressors' inputs; ``held_fixed``: the caption, also for ``experiments.replot``), and
the run-folder guards, which compare the run's identity, i.e. the whole validated config
(``fingerprint`` reads every fingerprinted section, ``open_run``/``check_resume`` every
checkpoint's fingerprint)."""


def test_stages_take_explicit_arguments_not_the_experiment():
    """Issue 12: below the orchestrators, no stage takes the whole validated experiment
    (``CompressExperiment`` / ``StudyExperiment``), only what it reads."""
    bad = []
    for path in (ROOT / "experiments").rglob("*.py"):
        if path.stem in ("config", "settings"):  # the experiment's loader and its classes
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and node.name not in ORCHESTRATORS:
                args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                if any(a.annotation is not None and "Experiment" in ast.unparse(a.annotation)
                       for a in args):
                    bad.append(f"{path.stem}.{node.name}")
    assert not bad, f"stages that take the experiment: {bad}"
