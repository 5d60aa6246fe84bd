"""The shipped trained DeepSeek-V4, tiny-v4 (models/tiny-v4-*.gguf; recipe models/recipes/train_tiny_v4.py,
card models/tiny-v4.md): a main model (BF16, Q4_K experts) and its MTP sidecars (BF16, Q4_K, Q3_K).

Oracles: the sidecars' metadata against the main file's (llama.cpp's sidecar layout, shared/spec/gguf.md);
greedy generation against a loop written here from session.decode + argmax; the model being trained at all
against the perplexity of a uniform guess (4096) on a stdlib-style snippet written here (not training data);
the Q4_K model against the BF16 one (top-1 agreement, perplexity ratio).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from flashmtp import _core
from flashmtp.model import Model

MODELS = Path(__file__).resolve().parents[2] / "models"
MAINS = {"bf16": MODELS / "tiny-v4-bf16.gguf", "q4_k": MODELS / "tiny-v4-q4_k.gguf"}
SIDECARS = {q: MODELS / f"tiny-v4-{q}-mtp.gguf" for q in ("bf16", "q4_k", "q3_k")}
PROMPT = "import os\nimport sys\n\n\ndef main():\n"
# Stdlib-style Python written for this test (not in the training data).
CODE = '''import os
import sys


class FileSizes:
    """Collect the size of each file under a directory."""

    def __init__(self, root):
        self.root = root
        self.sizes = {}

    def scan(self):
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    self.sizes[path] = os.path.getsize(path)
                except OSError as exc:
                    print("%s: %s" % (path, exc), file=sys.stderr)
        return self.sizes


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    for root in argv:
        sizes = FileSizes(root).scan()
        for path in sorted(sizes):
            print("%s: %d bytes" % (path, sizes[path]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def metadata(path: Path) -> dict:
    return dict(_core.GGUFFile.open(str(path)).metadata_items())


@pytest.fixture(scope="module")
def bf16() -> Model:
    return Model(MAINS["bf16"], threads=2)


@pytest.fixture(scope="module")
def snippet(bf16: Model) -> list[int]:
    return bf16.tokenize(CODE)


def logits_of(model: Model, tokens: list[int]) -> np.ndarray:
    return np.asarray(model.session(n_ctx=len(tokens)).decode(np.array(tokens, dtype=np.int32)))


def perplexity(logits: np.ndarray, tokens: list[int]) -> float:
    z = logits[:-1].astype(np.float64)
    log_probs = z - z.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    return math.exp(-log_probs[np.arange(len(tokens) - 1), tokens[1:]].mean())


@pytest.mark.parametrize("quant", list(SIDECARS))
def test_sidecars_match_the_main_model(quant: str) -> None:
    main, side = metadata(MAINS["bf16"]), metadata(SIDECARS[quant])
    n_main = main["deepseek4.block_count"]
    assert side["general.architecture"] == main["general.architecture"] == "deepseek4"
    assert side["deepseek4.block_count"] == n_main + 1 and side["deepseek4.nextn_predict_layers"] == 1
    for key in ("deepseek4.embedding_length", "deepseek4.embedding_length_out", "deepseek4.vocab_size",
                "deepseek4.expert_count", "deepseek4.attention.sliding_window"):
        assert side[key] == main[key], key
    assert list(side["deepseek4.attention.compress_ratios"])[-1] == 0  # the MTP block is window-only


@pytest.mark.parametrize("quant", list(MAINS))
def test_greedy_generation_matches_a_decode_loop(quant: str) -> None:
    model = Model(MAINS[quant], threads=2)
    text = model.generate(PROMPT, max_tokens=24, temperature=0)
    tokens = model.tokenize(PROMPT)
    session = model.session(n_ctx=len(tokens) + 24)
    logits = session.decode(np.array(tokens, dtype=np.int32), n_logits=1)[0]
    out: list[int] = []
    while len(out) < 24:
        out.append(int(np.argmax(logits)))
        if model.tokenizer.is_eog(out[-1]):
            break
        logits = session.decode(np.array(out[-1:], dtype=np.int32), n_logits=1)[0]
    assert text == model.detokenize([t for t in out if not model.tokenizer.is_eog(t)])
    assert text.strip()


def test_trained_and_quantized(bf16: Model, snippet: list[int]) -> None:
    reference = logits_of(bf16, snippet)
    quantized = logits_of(Model(MAINS["q4_k"], threads=2), snippet)
    ppl_bf16, ppl_q4k = perplexity(reference, snippet), perplexity(quantized, snippet)
    # Measured: BF16 15.4, Q4_K 15.5; top-1 agreement 0.968.
    assert ppl_bf16 < 30  # a uniform guess is 4096
    assert ppl_q4k < 1.1 * ppl_bf16
    assert (reference.argmax(1) == quantized.argmax(1)).mean() > 0.9
