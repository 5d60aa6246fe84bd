"""Shared fixtures: paths to the repository, the shipped models and the compiled CLI."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def cli_binary() -> str:
    """The compiled flashmtp-cli: $FLASHMTP_CLI, else on PATH (pip install), else the developer build."""
    for candidate in (os.environ.get("FLASHMTP_CLI"), shutil.which("flashmtp-cli"),
                      str(ROOT / "build" / "dev" / "flashmtp-cli")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("flashmtp-cli not found: pip install . puts it on PATH, or set FLASHMTP_CLI")


ORACLES = ("torch", "transformers", "tokenizers", "sentencepiece", "gguf", "numpy", "accelerate",
           "hypothesis")


def pytest_report_header() -> list[str]:
    """What a red run on another machine needs first: the CPU, the kernel ISA chosen, the oracles."""
    from importlib import metadata

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    forced = os.environ.get("FLASHMTP_ISA")
    try:
        from flashmtp import _core

        isa = _core.isa() + (f" (FLASHMTP_ISA={forced})" if forced else "")
    except (ImportError, ValueError) as error:  # a forced ISA this CPU lacks raises at import
        isa = f"unavailable: {error}"

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return [f"cpu: {models[0] if models else 'unknown'}; kernels: {isa}",
            "oracles: " + ", ".join(f"{name} {version(name)}" for name in ORACLES)]
