"""The ``flashmtp`` command line: ``flashmtp info MODEL.gguf``, ``flashmtp run -m MODEL -p PROMPT``,
``flashmtp chat -m MODEL``, ``flashmtp convert HF_DIR -o OUT.gguf``, ``flashmtp bench kernels``,
``flashmtp bench decode -m MODEL``, ``flashmtp bench v4slice``, ``flashmtp bench mtp -m MODEL --mtp HEAD``,
``flashmtp serve -m MODEL``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flashmtp.model import Model


def _run_info(args: argparse.Namespace) -> int:
    from flashmtp.info import run_info

    return run_info(args)


def _run_convert(args: argparse.Namespace) -> int:
    from flashmtp.convert import run_convert

    return run_convert(args)


def _run_bench_kernels(args: argparse.Namespace) -> int:
    from flashmtp.bench.kernels import run_bench_kernels

    return run_bench_kernels(args)


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _run_generate(args: argparse.Namespace) -> int:
    import time

    from flashmtp.model import Model

    try:
        resolve_model(args)
        t0 = time.perf_counter()
        model = Model(args.model, threads=args.threads, mtp=args.mtp)
        check_draft_head(model, args.draft)
        load_s = time.perf_counter() - t0
        for piece in model.generate(args.prompt, max_tokens=args.n, temperature=args.temp, top_k=args.top_k,
                                    top_p=args.top_p, min_p=args.min_p, seed=args.seed, stream=True,
                                    n_ctx=args.ctx, draft=args.draft, draft_mode=args.draft_mode):
            sys.stdout.write(piece)
            sys.stdout.flush()
    except (ValueError, OSError) as e:  # GGUFError is a ValueError
        print(f"flashmtp run: error: {e}", file=sys.stderr)
        return 1
    print(flush=True)  # end the text line before the stats on stderr
    stats = model.last_stats
    eos = " (stopped at EOS)" if stats.stopped_at_eos else ""
    print(f"load:      {load_s:.3f} s", file=sys.stderr)
    print(f"prompt:    {stats.n_prompt} tokens, {stats.prompt_tokens_per_s:.2f} tokens/s", file=sys.stderr)
    print(f"generated: {stats.n_generated} tokens, {stats.generated_tokens_per_s:.2f} tokens/s{eos}",
          file=sys.stderr)
    if model.has_mtp and args.draft != 0:
        print(stats.speculative.summary(model.engine.draft_head_bytes), end="", file=sys.stderr)
    return 0


def resolve_model(args: argparse.Namespace) -> None:
    """No -m: the shipped model with its MTP head (flashmtp.shipped). Raises FileNotFoundError if missing."""
    if args.model is None:
        from flashmtp.shipped import shipped_model

        main, head = shipped_model()
        args.model = str(main)
        args.mtp = args.mtp or str(head)


def check_draft_head(model: Model, draft: int | str) -> None:
    """--draft N without a head is an error, not a silent no-op (auto falls back to off)."""
    if draft not in ("auto", 0) and not model.has_mtp:
        raise ValueError("--draft needs an MTP draft head: pass --mtp HEAD.gguf (or a model file that "
                         "carries its MTP block)")


def _draft_length(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if not 0 <= value <= 8:
        raise argparse.ArgumentTypeError(f"expected auto or an integer in [0, 8], got {value}")
    return value


def _add_mtp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mtp", default=None, metavar="HEAD.gguf",
                        help="MTP sidecar GGUF: its head drafts tokens the model verifies in one batch")
    parser.add_argument("--draft", type=_draft_length, default="auto",
                        help="draft tokens per round with a head: 1..8, 0 off, auto (default: the length "
                             "that measures fastest)")
    parser.add_argument("--draft-mode", default="coupled", choices=["coupled", "residual", "greedy"],
                        help="coupled (default) and greedy give the same text as without MTP for a seed; "
                             "residual is classic speculative sampling (same distribution)")


def _run_chat(args: argparse.Namespace) -> int:
    from flashmtp.chat_cli import run_chat

    return run_chat(args)


def _run_bench_serve(args: argparse.Namespace) -> int:
    from flashmtp.bench.serve import run_bench_serve

    return run_bench_serve(args)


def _run_serve(args: argparse.Namespace) -> int:
    from flashmtp.server import run_serve

    return run_serve(args)


def _run_bench_v4slice(args: argparse.Namespace) -> int:
    from flashmtp.bench.v4slice import run_bench_v4slice

    return run_bench_v4slice(args)


def _run_bench_mtp(args: argparse.Namespace) -> int:
    from flashmtp.bench.mtp import run_bench_mtp

    return run_bench_mtp(args)


def _run_bench_decode(args: argparse.Namespace) -> int:
    from flashmtp.bench.decode import run_bench_decode
    from flashmtp.testing.models import MODELS, fetch

    if args.model in MODELS:  # a known real model: fetched (and cached) on first use
        args.model = str(fetch(args.model))
    return run_bench_decode(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashmtp", description="flashmtp: local MoE runtime with MTP")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="summarise a GGUF model file")
    info.add_argument("model", help="path to a .gguf file (the first part of a split model)")
    info.set_defaults(run=_run_info)

    run = sub.add_parser("run", help="generate text from a prompt")
    run.add_argument("-m", "--model", default=None,
                     help="path to a .gguf file (default: the shipped tiny-v4 model with its MTP head)")
    run.add_argument("-p", "--prompt", required=True)
    run.add_argument("-n", "--max-tokens", dest="n", type=int, default=128, help="tokens to generate at most")
    run.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    run.add_argument("--top-k", type=int, default=40, help="0 disables")
    run.add_argument("--top-p", type=float, default=0.95, help="1 disables")
    run.add_argument("--min-p", type=float, default=0.05, help="0 disables")
    run.add_argument("--seed", type=_non_negative_int, default=0)
    run.add_argument("-t", "--threads", type=int, default=2)
    run.add_argument("-c", "--ctx", type=int, default=0, help="context positions (0: prompt + max tokens)")
    _add_mtp_options(run)
    run.set_defaults(run=_run_generate)

    chat = sub.add_parser("chat", help="interactive chat with the model's chat template (stdin lines)")
    chat.add_argument("-m", "--model", default=None,
                      help="path to a .gguf file (default: the shipped tiny-v4 model with its MTP head)")
    chat.add_argument("--system", default=None, help="system message")
    chat.add_argument("-n", "--max-tokens", dest="n", type=int, default=512, help="tokens per reply at most")
    chat.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    chat.add_argument("--top-k", type=int, default=40, help="0 disables")
    chat.add_argument("--top-p", type=float, default=0.95, help="1 disables")
    chat.add_argument("--min-p", type=float, default=0.05, help="0 disables")
    chat.add_argument("--seed", type=_non_negative_int, default=0)
    chat.add_argument("-t", "--threads", type=int, default=2)
    chat.add_argument("-c", "--ctx", type=int, default=0,
                      help="context positions (0: 4096, at most the training context)")
    _add_mtp_options(chat)
    chat.set_defaults(run=_run_chat)
    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat, completions, tools, metrics)")
    from flashmtp.server import add_arguments as add_serve_arguments

    add_serve_arguments(serve)
    _add_mtp_options(serve)
    serve.set_defaults(run=_run_serve)
    convert = sub.add_parser("convert", help="convert a DeepSeek-V4 Hugging Face checkpoint to GGUF")
    convert.add_argument("hf_dir", help="checkpoint directory: config.json, *.safetensors, tokenizer.json")
    convert.add_argument("-o", "--output", required=True,
                         help="output .gguf; the MTP block, if any, goes to NAME-mtp.gguf beside it")
    convert.add_argument("--quant", default="q8_0", metavar="RECIPE",
                         help="f32, bf16, q8_0 (default), q4_k / q3_k / mxfp4 (routed experts; other "
                              "matrices q8_0); norms, hyper-connection, sinks, ape and router stay f32")
    convert.add_argument("-t", "--threads", type=_non_negative_int, default=0,
                         help="quantization threads (0: one per core)")
    convert.add_argument("--no-progress", action="store_true", help="no progress bar")
    convert.set_defaults(run=_run_convert)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    kernels = bench_sub.add_parser("kernels", help="GEMV bandwidth and batched matmul cost per weight type")
    kernels.add_argument("--threads", type=int, default=2)
    kernels.add_argument("--types", default="", help="comma-separated weight types (default: all)")
    kernels.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    kernels.add_argument("--csv", default="bench-kernels.csv", help="write the table here as CSV")
    # Matrix size; the smoke test shrinks it (the bandwidth buffer is 16x this).
    kernels.add_argument("--size-mb", type=float, default=64.0, help=argparse.SUPPRESS)
    kernels.set_defaults(run=_run_bench_kernels)
    decode = bench_sub.add_parser("decode", help="prefill (pp) and generation (tg) tokens/s of a model, "
                                                 "flashmtp against llama.cpp")
    decode.add_argument("-m", "--model", required=True,
                        help="a .gguf file, or a known real model name (see flashmtp.testing.models)")
    decode.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    decode.add_argument("--pp", default="128,512", help="comma-separated prefill batch sizes")
    decode.add_argument("--tg", type=int, default=128, help="single-token decodes per generation run")
    decode.add_argument("--tg-prompt", type=int, default=128, help="prompt tokens before each generation run")
    decode.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    decode.add_argument("--no-llama-cpp", action="store_true", help="measure flashmtp only")
    decode.add_argument("--csv", default="", help="also write the figures here as CSV")
    # The bandwidth probe's buffer (far above the last-level cache); the smoke test shrinks it.
    decode.add_argument("--bandwidth-mb", type=float, default=1024.0, help=argparse.SUPPRESS)
    decode.set_defaults(run=_run_bench_decode)
    v4slice = bench_sub.add_parser("v4slice", help="decode and verify speed of a 2-layer V4-Flash-shaped "
                                                   "random model, projected to the 43-layer model")
    from flashmtp.bench.v4slice import add_arguments

    add_arguments(v4slice)
    v4slice.set_defaults(run=_run_bench_v4slice)
    mtp = bench_sub.add_parser("mtp", help="MTP speculative decoding: tokens/s off / draft 1-3 / auto and "
                                           "acceptance per draft position, on held-out code and prose")
    from flashmtp.bench.mtp import add_arguments as add_mtp_arguments

    add_mtp_arguments(mtp)
    mtp.set_defaults(run=_run_bench_mtp)
    bench_serve = bench_sub.add_parser("serve", help="requests/s, tokens/s, TTFT and latency of the server "
                                                     "under N concurrent clients, beside llama.cpp's server")
    from flashmtp.bench.serve import add_arguments as add_bench_serve_arguments

    add_bench_serve_arguments(bench_serve)
    bench_serve.set_defaults(run=_run_bench_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from flashmtp import __version__

        print(f"flashmtp {__version__}")
        return 0
    if not args.command:
        parser.print_help()
        return 2
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
