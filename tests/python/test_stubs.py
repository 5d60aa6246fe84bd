"""python/flashmtp/_core.pyi lists every class and function the compiled module has (oracle: pybind11-stubgen
run on the built module now). Names are compared, not text, so formatting differences between stubgen or numpy
versions do not matter; a binding added without regenerating the stub fails here."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import flashmtp
import pytest

STUB = Path(flashmtp.__file__).parent / "_core.pyi"


def public_names(stub_text: str) -> set[str]:
    names = set()
    for node in ast.parse(stub_text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{n.name}" for n in node.body if isinstance(n, ast.FunctionDef)}
    return names


@pytest.mark.skipif(importlib.util.find_spec("pybind11_stubgen") is None,
                    reason="pybind11-stubgen not installed (pip install '.[test]')")
def test_stub_is_current(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(flashmtp.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-m", "pybind11_stubgen", "flashmtp._core", "-o", str(tmp_path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    fresh = public_names((tmp_path / "flashmtp" / "_core.pyi").read_text())
    committed = public_names(STUB.read_text())
    assert fresh == committed, (f"regenerate: pybind11-stubgen flashmtp._core -o python "
                                f"(missing {sorted(fresh - committed)}, stale {sorted(committed - fresh)})")
