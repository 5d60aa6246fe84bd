"""Prefill and generation speed of a real model against llama.cpp: ``flashmtp bench decode`` from a checkout.

    python bench/bench_decode.py -m smollm2-135m-q4_1 --threads 2 --repeats 5 --csv bench-decode.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

# A developer build puts the module beside the Python sources (python/flashmtp), not in site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from flashmtp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "decode", *sys.argv[1:]]))
