"""The package's shape: imports flow one way, modules and functions stay short, module
paths that were never released are gone."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "maskadapter"
SOURCES = sorted(PACKAGE.rglob("*.py")) + [ROOT / "app.py"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports, at any depth of its code (function-level
    imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def test_no_import_cycles_and_no_imports_from_the_entry_point():
    files = {module_name(p): p for p in SOURCES if p.is_relative_to(PACKAGE)}
    known = set(files)
    graph = {name: imported_modules(path, known) - {name} for name, path in files.items()}
    for name, targets in graph.items():
        assert "maskadapter.__main__" not in targets, f"{name} imports the entry point"
    # a package __init__ is not an edge of its own: importing maskadapter.engine.x runs it first anyway
    graph = {n: {t for t in ts if t != "maskadapter"} for n, ts in graph.items() if n != "maskadapter"}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] + [target] if target in trail else [node, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def function_lengths(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]  # the docstring
            if body:
                yield f"{path.name}:{node.lineno} {node.name}", body[-1].end_lineno - body[0].lineno + 1


def test_modules_and_functions_are_short():
    long_modules = {str(p.relative_to(ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 450}
    assert not long_modules, f"modules over 450 lines: {long_modules}"
    long_functions = {name: n for p in SOURCES for name, n in function_lengths(p) if n > 80}
    assert not long_functions, f"function bodies over 80 lines: {long_functions}"


def test_the_checks_see_a_cycle_and_a_long_function(tmp_path):
    """The two checks above can fail: a made-up cycle and a long function are found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("from a import x\n")
    assert imported_modules(a, {"b"}) == {"b"} and imported_modules(b, {"a"}) == {"a"}
    c = tmp_path / "c.py"
    c.write_text('def f():\n    """doc"""\n' + "    x = 1\n" * 81)
    assert [n for _, n in function_lengths(c)] == [81]


OLD_PATHS = ("maskadapter.segmenter", "maskadapter.masks", "maskadapter.batch", "maskadapter.evaluate")


@pytest.mark.parametrize("old", OLD_PATHS)
def test_unreleased_old_module_paths_are_gone(old):
    """No import hook keeps paths that were never released alive: Python's own error."""
    with pytest.raises(ModuleNotFoundError, match=f"No module named '{old}'"):
        importlib.import_module(old)


def test_old_python_m_command_fails_plainly():
    done = subprocess.run(
        [sys.executable, "-m", "maskadapter.batch", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "No module named maskadapter.batch" in done.stderr, done.stderr
    assert not (ROOT / "maskadapter" / "_moved.py").exists()


def test_every_package_folder_is_installed():
    """pyproject.toml lists each package folder (setuptools installs only those listed)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(init) for init in PACKAGE.rglob("__init__.py")}
    assert folders <= listed, sorted(folders - listed)


def test_public_names_load_on_first_use():
    """``import maskadapter`` (and its light modules: settings, errors) loads no torch; each
    public name then resolves to the object its module defines, once, and an unknown
    name is an AttributeError naming it."""
    import subprocess

    code = (
        "import sys, maskadapter, maskadapter.settings, maskadapter.errors\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]

    import maskadapter

    homes = {
        "Segmenter": "maskadapter.engine.segmenter", "Settings": "maskadapter.settings",
        "MaskAdapterHead": "maskadapter.modeling.adapter", "InputError": "maskadapter.errors",
        "build_vocabulary": "maskadapter.engine.vocabulary", "semantic_map": "maskadapter.engine.painting",
    }  # fmt: skip
    for name in maskadapter.__all__:
        value = getattr(maskadapter, name)
        assert value is getattr(maskadapter, name) and name in dir(maskadapter)
        if name in homes:
            assert value.__module__ == homes[name], name
    assert maskadapter.VILD_TEMPLATES is importlib.import_module("maskadapter.engine.clip_features").VILD_TEMPLATES
    with pytest.raises(AttributeError, match="no attribute 'Segmentr'"):
        maskadapter.Segmentr  # noqa: B018
