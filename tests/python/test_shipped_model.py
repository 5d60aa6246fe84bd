"""The shipped default model (flashmtp.shipped: models/tiny-v4-q4_k.gguf with its Q4_K MTP head) as a user
meets it: `flashmtp run` with no -m, and greedy generation with and without MTP giving the same text.
Oracle: plain greedy decoding of the same model (MTP must not change a token), and the head's drafts being
accepted on code (it was trained for that: models/tiny-v4.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import flashmtp
from flashmtp.shipped import shipped_model

CODE = "import os\nimport sys\n\n\ndef main(argv):\n    "


def test_greedy_text_is_the_same_with_and_without_mtp() -> None:
    main, head = shipped_model()
    model = flashmtp.Model(main, threads=2, mtp=head)
    plain = model.generate(CODE, max_tokens=96, temperature=0, mtp=False)
    for draft in (1, 2, 3, "auto"):
        assert model.generate(CODE, max_tokens=96, temperature=0, draft=draft) == plain, draft
    model.generate(CODE, max_tokens=96, temperature=0, draft=2)
    spec = model.last_stats.speculative
    assert spec.accepted > spec.drafted // 4  # a trained head: measured about 60-80% on this prompt



def test_a_prompt_longer_than_a_pass() -> None:
    """A prompt of ~1300 tokens is decoded in passes of 512 (runtime/engine.cpp); the head catches up from the
    last pass's streams. Greedy and seeded text the same with and without MTP, drafts accepted."""
    main, head = shipped_model()
    model = flashmtp.Model(main, threads=2, mtp=head)
    prompt = (Path(flashmtp.__file__).parent / "model.py").read_text()[:4000]
    assert len(model.tokenize(prompt)) > 1024
    plain = model.generate(prompt, max_tokens=48, temperature=0, mtp=False)
    assert model.generate(prompt, max_tokens=48, temperature=0, draft=2) == plain
    assert model.last_stats.speculative.accepted > 0
    seeded = model.generate(prompt, max_tokens=48, temperature=0.8, seed=3, mtp=False)
    assert model.generate(prompt, max_tokens=48, temperature=0.8, seed=3, draft=2) == seeded

def test_run_without_a_model_uses_the_shipped_one(cli_binary: str) -> None:
    main, head = shipped_model()
    python = subprocess.run([sys.executable, "-m", "flashmtp", "run", "-p", CODE, "-n", "48", "--temp", "0"],
                            capture_output=True, text=True, check=True)
    assert "mtp:" in python.stderr and "acceptance by draft position" in python.stderr
    compiled = subprocess.run([cli_binary, "run", "-m", str(main), "--mtp", str(head), "-p", CODE, "-n", "48",
                               "--temp", "0"], capture_output=True, text=True, check=True)
    assert compiled.stdout == python.stdout
