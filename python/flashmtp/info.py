"""``flashmtp info MODEL.gguf``: print a GGUF model's summary (the same text as ``flashmtp-cli info``)."""

from __future__ import annotations

import argparse
import sys

from flashmtp.gguf import GGUFError, GGUFFile


def run_info(args: argparse.Namespace) -> int:
    try:
        with GGUFFile(args.model) as f:
            text = f.summary()
    except GGUFError as e:
        print(f"flashmtp info: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
