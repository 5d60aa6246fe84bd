"""Serving throughput and latency against llama.cpp's server: ``flashmtp bench serve`` from a checkout.

    python bench/bench_serve.py -m qwen2.5-coder-0.5b-q4_k_m --clients 1,4 --duration 30 --csv bench-serve.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

# A developer build puts the module beside the Python sources (python/flashmtp), not in site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from flashmtp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "serve", *sys.argv[1:]]))
