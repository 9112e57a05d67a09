"""The architecture holds: import-linter's contracts (pyproject.toml) are kept, and a
deliberate violation of each kind breaks them; no module imports another's private
names."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("decision/core/prepared.py", "import grpc", "speak no gRPC"),
    ("decision/store/layout.py", "import decision.core.engine", "Rooms"),
    ("kernels/scoring.py", "import decision.errors", "Kernels are plain"),
    ("decision/demo.py", "from decision.v1 import decision_pb2", "generated stubs"),
])
def test_a_deliberate_violation_breaks_a_contract(tmp_path, module, line, contract):
    for name in ("decision", "kernels"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyi"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # a deliberate violation\n")
    out = _lint(tmp_path)
    assert out.returncode != 0, out.stdout
    assert "1 broken" in out.stdout
    broken = [ln for ln in out.stdout.splitlines() if ln.rstrip().endswith("BROKEN")]
    assert broken and contract in " ".join(out.stdout.split()), out.stdout


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in ("decision", "kernels"):
                continue
            found += [f"{path.relative_to(ROOT)}: from {node.module} import {a.name}"
                      for a in node.names if a.name.startswith("_")]
    return found


def test_no_module_imports_private_names_of_another():
    sources = [p for d in ("decision", "kernels", "benchmarks") for p in (ROOT / d).rglob("*.py")
               if "v1" not in p.parts]
    assert [hit for p in sources for hit in _private_imports(p)] == []
