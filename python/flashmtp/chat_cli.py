"""`flashmtp chat -m MODEL`: an interactive conversation on stdin/stdout.

Each input line is a user message; the reply streams to stdout, one line of statistics per reply to stderr.
``/reset`` forgets the conversation (the --system message stays), ``/exit`` or end of input quits. Works the
same when stdin is a pipe (no prompt is shown then), so scripts and tests drive it with plain lines.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

import jinja2

from flashmtp.chat import Chat


def repl(chat: Chat, lines: TextIO, out: TextIO, err: TextIO, interactive: bool) -> None:
    """Runs the conversation over the lines of `lines`; a prompt on err when interactive."""
    while True:
        if interactive:
            err.write("> ")
            err.flush()
        line = lines.readline()
        if not line:  # end of input
            break
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            chat.reset()
            err.write("(conversation cleared)\n")
            continue
        if not text.strip():
            continue
        try:
            for piece in chat.send(text, stream=True):
                out.write(piece)
                out.flush()
        # The conversation no longer fits the context, or the template refused it: it is left as it was.
        except (ValueError, jinja2.TemplateError) as e:
            err.write(f"flashmtp chat: error: {e} (/reset starts over)\n")
            continue
        out.write("\n")
        out.flush()
        s = chat.last_stats
        err.write(f"[prompt: {s.n_prompt - s.n_reused} new tokens ({s.n_reused} cached), "
                  f"{s.prompt_tokens_per_s:.2f} tokens/s; reply: {s.n_generated} tokens, "
                  f"{s.generated_tokens_per_s:.2f} tokens/s"
                  + (f"; mtp: {s.speculative.accepted} of {s.speculative.drafted} drafts accepted"
                     if s.speculative.drafted else "") + "]\n")
        err.flush()


def run_chat(args: argparse.Namespace) -> int:
    from flashmtp.cli import check_draft_head, resolve_model
    from flashmtp.model import Model

    try:
        resolve_model(args)
        t0 = time.perf_counter()
        model = Model(args.model, threads=args.threads, mtp=args.mtp)
        check_draft_head(model, args.draft)
        chat = Chat(model, system=args.system, n_ctx=args.ctx or None, max_tokens=args.n,
                    temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    seed=args.seed, draft=args.draft, draft_mode=args.draft_mode)
        print(f"load: {time.perf_counter() - t0:.3f} s", file=sys.stderr)
        repl(chat, sys.stdin, sys.stdout, sys.stderr, sys.stdin.isatty())
    except (ValueError, OSError, jinja2.TemplateError) as e:  # GGUFError is a ValueError
        print(f"flashmtp chat: error: {e}", file=sys.stderr)
        return 1
    return 0
