"""Guards that keep the house standing: the folders are the stages, data flows one way, the library
never imports Ray, function-level imports only where laziness is needed, modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "facegs"
# the stages in the order data flows (docs/architecture.md); a module may import only its own stage
# and the stages before it
STAGES = ("core", "ingest", "synth", "parser", "label", "splat", "fit", "headframe", "render", "shards", "factory",
          "train", "evaluate", "cli")
# function-level imports that must stay lazy, and why (the comment on the import line says it too)
LAZY_OK = {"gsplat", "gsplat.cuda._torch_impl", "pycolmap", "facegs.ingest"}
MAX_LINES = 400
LONG_OK_MARK = "Long module:"  # a module over MAX_LINES says why in its docstring, after this mark


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(p: Path, type_checking: bool = True) -> tuple[list[str], list[tuple[int, str]]]:
    """(module-level imported modules, [(line, module)] of imports inside functions). With
    ``type_checking``, imports under ``if TYPE_CHECKING:`` count as module level."""
    tree = ast.parse(p.read_text(encoding="utf-8"))
    top, inner = [], []

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and not node.level:
            return [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        return []

    for node in tree.body:
        top += names(node)
        if type_checking and isinstance(node, ast.If):  # TYPE_CHECKING blocks
            for sub in node.body:
                top += names(sub)
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(fn):
            for m in names(node)[:1]:
                inner.append((node.lineno, m))
    return top, inner


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "facegs" else None


def test_nothing_but_init_and_main_at_the_package_root():
    assert sorted(p.name for p in PKG.glob("*.py")) == ["__init__.py", "__main__.py"]
    assert sorted(p.name for p in PKG.iterdir() if p.is_dir() and not p.name.startswith("__")) == sorted(STAGES)


def test_every_stage_says_what_comes_in_and_what_goes_out():
    for stage in STAGES:
        doc = ast.get_docstring(ast.parse((PKG / stage / "__init__.py").read_text())) or ""
        assert "In:" in doc and "Out:" in doc, f"facegs/{stage}/__init__.py must say what comes in and goes out"


def test_data_flows_one_way_and_modules_have_docstrings():
    mods = _modules()
    bad = []
    for name, p in mods.items():
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        assert doc and "TODO" not in doc, f"{name} has no docstring"
        here = _stage(name)
        if here not in STAGES:
            continue
        for imp in _imports(p)[0]:
            there = _stage(imp)
            if there is not None and there in STAGES and STAGES.index(there) > STAGES.index(here):
                bad.append(f"{name} imports {imp} (stage '{there}' comes after '{here}')")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    mods = _modules()
    graph = {n: {i for i in _imports(p, type_checking=False)[0] if i in mods and i != n} for n, p in mods.items()}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
            if m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_function_level_imports_only_where_laziness_is_needed():
    bad = []
    for p in list(_modules().values()) + sorted((REPO / "ray_jobs").glob("*.py")):
        lines = p.read_text().splitlines()
        for lineno, mod in _imports(p)[1]:
            if mod not in LAZY_OK or "# lazy:" not in lines[lineno - 1]:
                bad.append(f"{p.relative_to(REPO)}:{lineno} imports {mod} inside a function")
    assert not bad, "\n".join(bad)


def test_modules_stay_small_unless_they_say_why():
    for name, p in _modules().items():
        n = len(p.read_text().splitlines())
        if n > MAX_LINES:
            doc = ast.get_docstring(ast.parse(p.read_text())) or ""
            assert LONG_OK_MARK in doc, f"{name} has {n} lines (> {MAX_LINES}) and its docstring does not say why"


@pytest.mark.parametrize("entry", ["facegs", "facegs.cli"])
def test_importing_the_library_never_imports_ray(entry):
    code = ("import importlib, pkgutil, sys, facegs\n"
            "for m in pkgutil.walk_packages(facegs.__path__, 'facegs.'):\n"
            "    if m.name != 'facegs.__main__':\n"
            "        importlib.import_module(m.name)\n"
            f"importlib.import_module({entry!r})\n"
            "bad = sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.'))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


FORMAT_IDS = {"facegs.scene", "facegs.refine", "facegs.parser", "facegs.test_set", "facegs.eval_report", "facegs.synth",
              "facegs.ratings", "facegs.schema", "facegs.schema_version", "facegs.yaw_edges", "facegs.pitch_edges",
              "facegs.option"}  # data-format identifiers, not module paths


def _resolves(ref: str) -> bool:
    import importlib

    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for a in parts[i:]:
            if not hasattr(obj, a):
                return False
            obj = getattr(obj, a)
        return True
    return False


def test_every_dotted_reference_in_code_and_docs_resolves():
    """``facegs.x.y`` in docstrings, comments, the README and docs/ names a module or attribute that exists."""
    import re

    pat = re.compile(r"(?<![A-Za-z0-9_/])(facegs(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
    files = [*PKG.rglob("*.py"), *(REPO / "ray_jobs").glob("*.py"), REPO / "README.md", *(REPO / "docs").glob("*.md"),
             REPO / "cluster" / "README.md"]
    bad = [f"{p.relative_to(REPO)}:{i}: {m.group(1)}"
           for p in files for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           for m in pat.finditer(line) if m.group(1) not in FORMAT_IDS and not _resolves(m.group(1).rstrip("."))]
    assert not bad, "stale references:\n" + "\n".join(bad)
