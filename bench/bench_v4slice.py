"""Decode and verify speed of a V4-Flash-shaped 2-layer slice, projected to the 43-layer model, against
llama.cpp: ``flashmtp bench v4slice`` from a checkout.

    python bench/bench_v4slice.py --experts q4_k --threads 2 --csv bench-v4slice.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

# A developer build puts the module beside the Python sources (python/flashmtp), not in site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from flashmtp.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "v4slice", *sys.argv[1:]]))
