"""The shape of the code: one installed namespace, dependency arrows that point one way, short functions."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
# What each layer may import of scalingnote (besides itself). The core depends on nothing else.
ALLOWED = {
    "core": set(),
    "runtime": {"core"},
    "modeling": {"core", "runtime"},
    "index": {"core", "modeling"},
    "evaluation": {"core", "runtime", "modeling", "index"},
    "training": {"core", "runtime", "modeling", "index", "evaluation"},
    "service": {"core", "runtime", "index"},
    "cli": {"core", "runtime", "modeling", "index", "evaluation", "training", "service"},
}
MAX_FUNCTION_LINES = 60


def layer_of(module: str) -> str | None:
    """``scalingnote.service.app`` → ``service``; ``scalingnote.artifacts`` → ``core``; other packages → None."""
    parts = module.split(".")
    if parts[0] != "scalingnote":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != "core" else "core"


def package_modules() -> list[tuple[str, Path]]:
    """(layer, file) of every module the distribution installs."""
    out = []
    for package, folder in PACKAGE_DIRS.items():
        layer = layer_of(package + ".x")
        for path in sorted((REPO / folder).glob("*.py")):
            out.append((layer, path))
    for folder in ("service", "training"):  # their sub-packages
        for path in sorted((REPO / folder).glob("*/*.py")):
            out.append((folder, path))
    return out


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_package_installs_under_the_scalingnote_namespace() -> None:
    assert set(PACKAGE_DIRS) <= set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert all(name == "scalingnote" or name.startswith("scalingnote.") for name in PACKAGE_DIRS)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_what_they_may(layer: str) -> None:
    bad = []
    for own, path in package_modules():
        if own != layer:
            continue
        for module in imported_modules(path):
            other = layer_of(module)
            if other is not None and other != layer and other not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(REPO)} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_core_imports_no_other_package() -> None:
    core = [path for layer, path in package_modules() if layer == "core"]
    assert {p.name for p in core} >= {"artifacts.py", "beir.py", "errors.py", "specs.py"}
    for path in core:
        others = {m for m in imported_modules(path) if layer_of(m) not in (None, "core")}
        assert not others, f"{path.name} imports {others}"
        third_party = {m.split(".")[0] for m in imported_modules(path)} - set(sys.stdlib_module_names)
        assert third_party <= {"scalingnote", "numpy", "pydantic"}, (
            f"{path.name}: {third_party} is not a core dependency"
        )


def test_no_function_is_longer_than_the_limit() -> None:
    long = []
    for _, path in package_modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


def test_the_wheel_holds_only_the_scalingnote_package(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("scalingnote-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"scalingnote", wheel.name.split("-py")[0] + ".dist-info"}
    assert "scalingnote/service/app.py" in names and "scalingnote/training/profiles/cpu.toml" in names
