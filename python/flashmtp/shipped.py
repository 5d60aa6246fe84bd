"""The model flashmtp ships: tiny-v4, a small DeepSeek-V4 (every layer type, hash and routed MoE, mHC)
trained with its MTP head on Python standard library code and public-domain prose (models/tiny-v4.md, the
recipe in models/recipes/train_tiny_v4.py). `pip install .` puts the files inside the package
(flashmtp/models/); a checkout has them in models/. `flashmtp run` and `flashmtp chat` use it when no -m is
given, with its MTP head.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MAIN", "MTP", "shipped_model"]

MAIN = "tiny-v4-q4_k.gguf"     # the main model: routed experts Q4_K, other matrices Q8_0
MTP = "tiny-v4-q4_k-mtp.gguf"  # its MTP head (a sidecar sharing the main embedding and output matrix)


def shipped_model() -> tuple[Path, Path]:
    """(main model, MTP sidecar) paths: the installed package's copy, else the checkout's models/."""
    package = Path(__file__).resolve().parent
    for root in (package / "models", package.parents[1] / "models"):
        if (root / MAIN).is_file() and (root / MTP).is_file():
            return root / MAIN, root / MTP
    raise FileNotFoundError(f"the shipped model ({MAIN}, {MTP}) is neither in {package / 'models'} nor in "
                            f"{package.parents[1] / 'models'}: reinstall flashmtp (pip install .) or pass -m")
