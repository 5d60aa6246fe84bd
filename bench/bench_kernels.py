"""GEMV bandwidth and batched-matmul cost per weight type: ``flashmtp bench kernels`` from a checkout.

    python bench/bench_kernels.py --threads 2 --types q4_K,q4_0 --repeats 5 --csv bench-kernels.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

# A developer build puts the module beside the Python sources (python/flashmtp), not in site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from flashmtp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "kernels", *sys.argv[1:]]))
