"""The import graph keeps the layers of design section 3: each layer imports only itself and the
layers below it, entry modules import library modules and never each other, and nothing outside
``tasks/`` branches on a task's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "medgrounder"
ENTRY = ("train", "evaluate", "predict", "score", "prepare", "synth", "summary", "tables")
# bottom to top; a module's layer is its first component below medgrounder
LAYERS = {"core": 0, "metrics": 1, "tasks": 2, "data": 3, "models": 4, "utils": 5, "pipeline": 5,
          **dict.fromkeys(ENTRY, 6), "__init__": 6, "conf": 6}
TASK_NAMES = {"identify", "grounding", "vqa", "refer", "caption"}


def _modules() -> dict[str, ast.Module]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): ast.parse(p.read_text())
            for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(tree: ast.Module) -> set[str]:
    """Every medgrounder module imported anywhere in the file (in functions too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medgrounder"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("medgrounder")}
    return out


MODULES = _modules()


def test_every_module_has_a_layer():
    assert {_layer(m) for m in MODULES} <= set(LAYERS), sorted({_layer(m) for m in MODULES} - set(LAYERS))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    mine = _layer(module)
    wrong = sorted(i for i in _imports(MODULES[module])
                   if LAYERS[_layer(i)] > LAYERS[mine] or (_layer(i) in ENTRY and _layer(i) != mine))
    assert not wrong, f"{module} ({mine}) imports {wrong}"


def _task_name_comparisons(tree: ast.Module) -> list[int]:
    """Lines comparing something with a task's name (``== "vqa"``, ``in ("identify", ...)``)."""
    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and any(names(operand) & TASK_NAMES for operand in [node.left, *node.comparators])]


def test_no_task_name_branches_outside_the_tasks_package():
    found = {m: lines for m, tree in MODULES.items() if _layer(m) != "tasks"
             and (lines := _task_name_comparisons(tree))}
    assert not found, f"task names compared outside medgrounder.tasks: {found}"


def test_the_checks_see_what_they_look_for():
    assert _task_name_comparisons(ast.parse('if task in ("identify", "grounding"):\n    pass')) == [1]
    assert _task_name_comparisons(ast.parse('x = get_task("refer")')) == []
    assert _imports(ast.parse("def f():\n    from medgrounder.train import main")) == {"medgrounder.train"}
