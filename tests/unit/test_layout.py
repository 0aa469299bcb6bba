"""The product stays apart from what tests, bench and demo use to run it."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ("devsupport", "tests", "bench", "demo")


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_product_never_imports_test_support() -> None:
    found = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) & set(SUPPORT))
        for path in sorted((ROOT / "bgrscrpt_ioc").rglob("*.py"))
    }
    assert {path: roots for path, roots in found.items() if roots} == {}


def test_only_the_product_is_packaged() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["bgrscrpt_ioc*"]
