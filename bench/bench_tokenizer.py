"""Tokenizer encode speed on about 1 MB of real text, per model, with the sentencepiece library beside the
SPM vocabulary when installed: the same pieces and scores (the oracle of tests/python/test_tokenizer_spm.py),
but without llama.cpp's cutting out of special and user-defined tokens, so its token counts differ on code.

    python bench/bench_tokenizer.py --size 1000000 --repeats 5

Texts: Python standard library sources (code; Gemma's user-defined newline and space-run tokens cut them into
lines) and one paragraph of prose without newlines (one span: the merge queue sees it whole). Prints the
median MB/s of process CPU time, which a busy shared machine disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import sysconfig
import time
from pathlib import Path

# A developer build puts the module beside the Python sources (python/flashmtp), not in site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))

from flashmtp import _core  # noqa: E402
from flashmtp.testing.models import fetch  # noqa: E402

MODELS = ["gemma3-270m-q4_k_m", "smollm2-135m-q4_1", "qwen2.5-coder-0.5b-q4_k_m"]


def texts(size: int) -> dict[str, str]:
    code = []
    total = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        code.append(path.read_text(encoding="utf-8", errors="replace"))
        total += len(code[-1])
        if total > size:
            break
    sentence = "It was the best of times, it was the worst of times, it was the age of wisdom. "
    prose = sentence * (size // len(sentence) + 1)
    return {"code": "".join(code).encode()[:size].decode("utf-8", "ignore"), "prose": prose[:size]}


def cpu_seconds(encode, text: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        encode(text)
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="bytes of each text")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    samples = texts(args.size)
    print(f"{'tokenizer':<42} {'text':<6} {'MB/s':>7} {'tokens':>9}")
    for name in args.models.split(","):
        path = str(fetch(name))
        tokenizer = _core.Tokenizer.from_gguf(path)
        runners = {f"flashmtp {name} ({tokenizer.model})":
                   lambda text, t=tokenizer: t.encode(text, add_special=False)}
        if tokenizer.model == "llama" and importlib.util.find_spec("sentencepiece"):
            from test_tokenizer_spm import sentencepiece_model

            runners[f"sentencepiece {name}"] = sentencepiece_model(path).encode
        for label, encode in runners.items():
            for kind, text in samples.items():
                seconds = cpu_seconds(encode, text, args.repeats)
                n_tokens = len(encode(text))
                print(f"{label:<42} {kind:<6} {len(text.encode()) / 1e6 / seconds:7.2f} {n_tokens:9d}")


if __name__ == "__main__":
    main()
