"""The run layer stays readable (issue 20): no file in ``memxbar/experiments/`` over 600 lines, no
function over 80 lines; each concern in its own room (DESIGN.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

RUN_LAYER = Path(__file__).resolve().parents[1] / "memxbar" / "experiments"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_file_of_the_run_layer_is_over_600_lines():
    long = {p.relative_to(RUN_LAYER).as_posix(): n for p in RUN_LAYER.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_of_the_run_layer_is_over_80_lines():
    long = {}
    for path in RUN_LAYER.rglob("*.py"):
        for node in _functions(ast.parse(path.read_text())):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(RUN_LAYER).as_posix()}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checks_see_a_long_function():
    source = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    (node,) = _functions(ast.parse(source))
    assert node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
