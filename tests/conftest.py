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
