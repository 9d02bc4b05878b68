"""Package layering rules that import-linter (``lint-imports``, run by .ci/run) cannot see.

import-linter follows ``import`` statements; the library could still load a recipe script through
``importlib.import_module("hftl.recipes....")``. Recipe scripts sit on top of the library: only the CLI
(``hftl run``/``hftl validate``) may import them.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import hftl
from hftl.hub.run_files import SECTIONS

LIBRARY = Path(hftl.__file__).parent
ALLOWED = {LIBRARY / "cli.py", *(LIBRARY / "commands").glob("*.py")}  # `hftl run` / `hftl validate`


def _recipe_imports(tree: ast.AST) -> list[int]:
    """Lines importing ``hftl.recipes`` statically or through ``importlib.import_module``."""
    lines = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                names = [str(arg.values[0].value)]
            elif isinstance(arg, ast.Constant):
                names = [str(arg.value)]
        lines += [
            node.lineno for n in names if n == "hftl.recipes" or n.startswith(("hftl.recipes.", "recipes"))
        ]
    return lines


def test_the_library_never_imports_a_recipe_script():
    found = {
        str(path.relative_to(LIBRARY.parent)): lines
        for path in sorted(LIBRARY.rglob("*.py"))
        if path not in ALLOWED and (lines := _recipe_imports(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert not found, f"library modules importing a recipe script (file: lines): {found}"


def test_the_rule_sees_dynamic_and_static_imports():
    code = (
        "import importlib\n"
        "from hftl.recipes.finetune import RECIPE\n"
        "importlib.import_module(f'hftl.recipes.{name}')\n"
        "import_module('hftl.recipes.adapt')\n"
        "importlib.import_module('hftl.data')\n"
    )
    assert _recipe_imports(ast.parse(code)) == [2, 3, 4]


@pytest.mark.parametrize("recipe", ["adapt", "distill", "embed", "fewshot", "finetune", "meta", "multitask"])
def test_cards_read_sections_with_the_recipes_own_dataclasses(recipe):
    """A card fills a section's defaults from :data:`hftl.hub.run_files.SECTIONS`: the recipe's class."""
    sections = importlib.import_module(f"hftl.recipes.{recipe}").RECIPE.SECTIONS
    for key, cls in sections.items():
        if key in SECTIONS:
            assert SECTIONS[key] is cls, f"{recipe}: section `{key}` is {cls}, the card reads {SECTIONS[key]}"


def test_test_modules_import_shared_helpers_not_each_other():
    """Shared test code lives in tests/helpers.py: a test module can be run, moved or deleted on its own."""
    tests = Path(__file__).parent
    names = {p.stem for p in tests.rglob("test_*.py")}
    found = {}
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            if any(m.split(".")[-1] in names for m in modules):
                found.setdefault(str(path.relative_to(tests)), []).append(node.lineno)
    assert not found, f"test modules importing other test modules (file: lines): {found}"
