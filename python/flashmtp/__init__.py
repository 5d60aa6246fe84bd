"""flashmtp: a local runtime for DeepSeek-V4-class MoE models with MTP speculative decoding.

The native core lives in ``flashmtp._core``; this package is the thin Python layer over it.
"""

from flashmtp import gguf
from flashmtp._core import GGUFError, __version__
from flashmtp.model import Model

__all__ = ["GGUFError", "Model", "__version__", "gguf"]
