"""`flashmtp bench mtp -m MAIN --mtp HEAD [--mtp HEAD2 ...]`: what MTP speculative decoding buys, by task.

For each head file (e.g. the same head at Q4_K and at Q3_K) and each domain (held-out Python standard
library code, held-out public-domain prose: flashmtp.testing.corpus), greedy generation of --tokens tokens
after each of --prompts prompts, with MTP off, draft 1, 2, 3 and auto, interleaved prompt by prompt so that
a slow spell of a shared machine falls on every setting alike. Reports tokens/s (generation only, the
prompt's prefill excluded), the speedup over MTP off, the acceptance at each draft position, accepted drafts
per verify round, and whether the text equals MTP off's (it must: greedy output is identical by
construction). Optional: a CSV, a PNG plot (matplotlib), and with --v4slice a projection to V4-Flash's
dimensions: the v4slice's measured decode and verify times (flashmtp.bench.v4slice), scaled to 43 layers,
combined with the acceptance measured here per position:
    speedup(k) = E(k) * t_main(1) / (t_draft_first + (k - 1) t_draft_step + t_main(k + 1)),
    E(k) = 1 + a_1 + a_1 a_2 + ... (the expected tokens a round of k drafts emits),
with t_main(n) = 43 x one layer's time for n tokens + the output head's, and a draft step = one layer + the
head for one token (the MTP block is one V4 layer with the shared output matrix).

llama.cpp rows (llama-cpp-python, in a separate process: flashmtp.bench.mtp_llama_cpp, which says how
llama.cpp drafts): MTP off and draft 1..3 (its draft-mtp has no auto length) on the same prompt token ids,
greedy; "same text" compares with its own MTP off. When it cannot run the files, the table's header line says
why (its loader's error line). On the shipped model (models/tiny-v4-q4_k.gguf) llama-cpp-python 0.3.36 cannot:
llama_model_load_from_file fails with "DeepSeek-V4 loader only supports compression ratios 0, 4, and 128"
(the model's block 2 is HCA at ratio 32, V4-Flash's is 128). Measured beyond that on random models of the
shipped dimensions converted by `flashmtp convert`: with ratio 128 instead, llama_init_from_model aborts
(GGML_ASSERT(ggml_nelements(a) == ne0*ne1) in ggml_reshape_2d, from
llama_model_deepseek4::graph::build_attention_impl; head 64 with RoPE 16); with head 256 (RoPE 64) it aborts
on GGML_ASSERT(n_embd_head >= n_embd_head_rope) (the indexer's 32-wide heads); with indexer heads of 128
too (V4-Flash's proportions) both contexts build and the loop runs, with flashmtp's tokens and acceptance
per position (tests/python/test_bench_mtp.py).
"""

from __future__ import annotations

import argparse
import csv
import functools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SETTINGS: tuple[int | str, ...] = (0, 1, 2, 3, "auto")
LLAMA_CPP_SETTINGS = (0, 1, 2, 3)  # its draft-mtp has no auto length
FLASHMTP, LLAMA_CPP = "flashmtp", "llama.cpp"
DOMAINS = ("code", "prose")


def setting_name(setting: int | str) -> str:
    return "off" if setting == 0 else f"draft {setting}"


@dataclass
class Cell:
    """One (head, domain, setting): sums over prompts."""
    generated: int = 0
    seconds: float = 0.0
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    tried_at: list[int] = field(default_factory=lambda: [0] * 8)
    accepted_at: list[int] = field(default_factory=lambda: [0] * 8)
    same_text: int = 0
    prompts: int = 0
    rates: list[float] = field(default_factory=list)  # tokens/s of each prompt

    def add(self, stats, same: bool) -> None:
        spec = stats.speculative
        self.record(stats.n_generated, stats.generate_s, spec.drafted, spec.accepted,
                    spec.rounds, spec.tried_at, spec.accepted_at, same)

    def record(self, generated: int, seconds: float, drafted: int, accepted: int, rounds: int,
               tried_at: list[int], accepted_at: list[int], same: bool) -> None:
        self.generated += generated
        self.seconds += seconds
        self.rates.append(generated / seconds)
        self.drafted += drafted
        self.accepted += accepted
        self.rounds += rounds
        self.tried_at = [a + b for a, b in zip(self.tried_at, tried_at, strict=True)]
        self.accepted_at = [a + b for a, b in zip(self.accepted_at, accepted_at, strict=True)]
        self.same_text += same
        self.prompts += 1

    @property
    def tokens_per_s(self) -> float:
        """Median over prompts."""
        return statistics.median(self.rates) if self.rates else 0.0

    def speedup(self, off: Cell) -> float:
        """Median over prompts of this setting's tokens/s over MTP off's on the same prompt."""
        return statistics.median(a / b for a, b in zip(self.rates, off.rates, strict=True))

    def acceptance_at(self, i: int) -> float | None:
        return self.accepted_at[i] / self.tried_at[i] if self.tried_at[i] else None


def make_prompts(domain: str, n: int, chars: int) -> list[str]:
    """n prompts of about `chars` characters: the opening of n held-out documents spread over the split
    (from a line start, so code prompts begin at a statement)."""
    from flashmtp.testing.corpus import held_out_documents

    docs = [d for d in held_out_documents(domain) if len(d) > 2 * chars]
    if len(docs) < n:
        raise ValueError(f"only {len(docs)} held-out {domain} documents are long enough")
    picked = [docs[int(i)] for i in np.linspace(0, len(docs) - 1, n)]
    out = []
    for doc in picked:
        # skip a licence header or title: start a third of the way in, at a line start
        start = doc.find("\n", len(doc) // 3) + 1
        out.append(doc[start:start + chars])
    return out


def run_head(main: str, head: str, threads: int, prompts: dict[str, list[str]], tokens: int,
             settings: tuple[int | str, ...]) -> dict[tuple[str, str], Cell]:
    from flashmtp.model import Model

    model = Model(main, threads=threads, mtp=head)
    model.generate(next(iter(prompts.values()))[0], max_tokens=8, temperature=0)  # warm-up
    cells: dict[tuple[str, str], Cell] = {}
    for domain, domain_prompts in prompts.items():
        for prompt in domain_prompts:
            plain = None
            for setting in settings:
                text = model.generate(prompt, max_tokens=tokens, temperature=0, mtp=setting != 0,
                                      draft=setting if setting != 0 else "auto")
                plain = text if setting == 0 else plain
                cells.setdefault((domain, setting_name(setting)), Cell()).add(model.last_stats, text == plain)
    return cells


def run_llama_cpp(main: str, head: str, threads: int, prompts: dict[str, list[str]], tokens: int
                  ) -> dict[tuple[str, str], Cell] | str:
    """llama.cpp's cells (flashmtp.bench.mtp_llama_cpp) on the prompts as flashmtp tokenizes them, in a
    separate process; a string: why not."""
    from flashmtp import _core
    from flashmtp.bench import run_in_process
    from flashmtp.bench.decode import llama_cpp_unavailable_reason
    from flashmtp.bench.mtp_llama_cpp import measure

    if (reason := llama_cpp_unavailable_reason()) is not None:
        return f"llama_cpp is not importable ({reason}); pip install '.[bench]'"

    tokenizer = _core.Tokenizer.from_gguf(main)
    ids = {d: [tokenizer.encode(p, True, False) for p in ps] for d, ps in prompts.items()}
    ok, got = run_in_process(measure, main, head, threads, ids, tokens, LLAMA_CPP_SETTINGS)
    if not ok:
        return got
    cells: dict[tuple[str, str], Cell] = {}
    for domain, per_prompt in got.items():
        for runs in per_prompt:
            plain = runs[0].tokens
            for setting, r in zip(LLAMA_CPP_SETTINGS, runs, strict=True):
                cells.setdefault((domain, setting_name(setting)), Cell()).record(
                    len(r.tokens), r.seconds, r.drafted, r.accepted, r.rounds, r.tried_at, r.accepted_at,
                    r.tokens == plain)
    return cells


def _other_cpu_share(start: tuple[float, float], wall: float) -> float:
    from flashmtp.bench.decode import cpu_seconds

    busy, own = cpu_seconds()
    return max(0.0, (busy - start[0]) - (own - start[1])) / (wall * (os.cpu_count() or 1))


@functools.cache
def v4slice_times(experts: str, threads: int, max_batch: int) -> tuple[dict[str, float], int]:
    """The v4slice's median decode times per batch size (flashmtp.bench.v4slice.measure), and its layer
    count; measured once per run."""
    from flashmtp.bench.v4slice import (
        DIMS,
        FLASHMTP,
        Deepseek4Params,
        Workload,
        build_slice,
        measure_in_process,
    )

    path = build_slice("flash", experts, progress=True)
    p = Deepseek4Params.from_config(DIMS["flash"])
    got = measure_in_process(FLASHMTP, str(path), threads, Workload(256, max_batch, 5, 1), p.vocab_size)
    if isinstance(got, str):
        raise RuntimeError(f"the v4slice could not be measured: {got}")
    return got, p.n_layer


def project_v4slice(experts: str, threads: int, acceptance: list[float], max_draft: int = 3) -> list[float]:
    """Projected speedups for draft 1..max_draft at V4-Flash dimensions (see the module docstring)."""
    from flashmtp.bench.v4slice import FULL_MODEL_LAYERS

    got, n_layer = v4slice_times(experts, threads, max_draft + 1)
    layer = {n: got[f"body{n}"] / n_layer for n in range(1, max_draft + 2)}
    head = {n: got[f"t{n}"] - got[f"body{n}"] for n in range(1, max_draft + 2)}
    main = {n: FULL_MODEL_LAYERS * layer[n] + head[n] for n in layer}
    draft_first, draft_step = layer[2] + head[1], layer[1] + head[1]
    out = []
    for k in range(1, max_draft + 1):
        expected = 1 + sum(float(np.prod(acceptance[:i + 1])) for i in range(k))
        out.append(expected * main[1] / (draft_first + (k - 1) * draft_step + main[k + 1]))
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def run_bench_mtp(args: argparse.Namespace) -> int:
    from flashmtp.bench.decode import cpu_seconds

    heads = args.mtp
    try:
        prompts = {d: make_prompts(d, args.prompts, args.prompt_chars) for d in args.domains}
    except Exception as e:  # noqa: BLE001 (the corpus needs pip to reach the index for the prose)
        print(f"flashmtp bench mtp: error: could not build the prompts: {e}", file=sys.stderr)
        return 1
    print(f"main {args.model}; {args.threads} threads; {args.prompts} prompts per domain of "
          f"~{args.prompt_chars} chars; {args.tokens} tokens each, greedy")
    results: dict[tuple[str, str], dict[tuple[str, str], Cell]] = {}  # (engine, head) -> cells
    start, wall0 = cpu_seconds(), time.perf_counter()
    for head in heads:
        results[FLASHMTP, head] = run_head(args.model, head, args.threads, prompts, args.tokens, SETTINGS)
    for head in [] if args.no_llama_cpp else heads:
        got = run_llama_cpp(args.model, head, args.threads, prompts, args.tokens)
        if isinstance(got, str):
            print(f"llama.cpp: not measured with {Path(head).name}: {got}")
        else:
            results[LLAMA_CPP, head] = got
    other = _other_cpu_share(start, time.perf_counter() - wall0)

    header = ["engine", "head", "domain", "setting", "tok/s (median)", "speedup (median)", "accepted",
              "acc@1", "acc@2", "acc@3", "acc/round", "same text"]
    rows = []
    for (engine, head), cells in results.items():
        for domain in args.domains:
            off = cells[(domain, "off")]
            for setting in SETTINGS if engine == FLASHMTP else LLAMA_CPP_SETTINGS:
                c = cells[(domain, setting_name(setting))]
                rows.append([engine, Path(head).name, domain, setting_name(setting), f"{c.tokens_per_s:.1f}",
                             f"{c.speedup(off):.2f}x", f"{c.accepted}/{c.drafted}" if c.drafted else "-",
                             *(_fmt(c.acceptance_at(i), ".0%") for i in range(3)),
                             f"{c.accepted / c.rounds:.2f}" if c.rounds else "-",
                             f"{c.same_text}/{c.prompts}"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        cells_ = zip(r, widths, strict=True)
        print("  ".join(str(v).rjust(w) if i >= 4 else str(v).ljust(w) for i, (v, w) in enumerate(cells_)))
    print(f"other processes took {other:.0%} of the machine's CPU during the run"
          + (" (noisy: compare ratios)" if other > 0.05 else ""))

    if args.v4slice:
        print(f"\nprojection to V4-Flash (43 layers, experts {args.v4slice}), from v4slice timings and the "
              "acceptance above (draft 3 runs):")
        for (engine, head), cells in results.items():
            for domain in args.domains if engine == FLASHMTP else []:
                c = cells[(domain, "draft 3")]
                acceptance = [c.acceptance_at(i) or 0.0 for i in range(3)]
                speedups = project_v4slice(args.v4slice, args.threads, acceptance)
                print(f"  {Path(head).name:<24} {domain:<6} " +
                      "  ".join(f"draft {k + 1}: {s:.2f}x" for k, s in enumerate(speedups)))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    if args.plot:
        plot(results, args.domains, args.plot)
    return 0


def plot(results: dict[tuple[str, str], dict[tuple[str, str], Cell]], domains: list[str], out: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install '.[bench]')", file=sys.stderr)
        return
    fig, (speed, accept) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [setting_name(s) for s in SETTINGS]
    groups = [(key, domain) for key in results for domain in domains]
    width = 0.8 / len(groups)
    for g, ((engine, head), domain) in enumerate(groups):
        cells = results[engine, head]
        off = cells[(domain, "off")]
        label = f"{engine}: {Path(head).stem} / {domain}"
        speed.bar(np.arange(len(names)) + g * width,  # llama.cpp has no auto bar
                  [cells[(domain, n)].speedup(off) if (domain, n) in cells else np.nan for n in names],
                  width, label=label)
        c = cells[(domain, "draft 3")]
        accept.plot([1, 2, 3], [c.acceptance_at(i) or 0 for i in range(3)], marker="o", label=label)
    speed.axhline(1.0, color="grey", lw=0.8)
    speed.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    speed.set_ylabel("tokens/s relative to MTP off")
    speed.set_title("speed")
    speed.legend(fontsize=7)
    accept.set_xticks([1, 2, 3])
    accept.set_xlabel("draft position")
    accept.set_ylabel("acceptance (given the earlier drafts accepted)")
    accept.set_ylim(0, 1)
    accept.set_title("acceptance by draft position (draft 3)")
    accept.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True, help="main deepseek4 GGUF")
    parser.add_argument("--mtp", action="append", required=True, metavar="HEAD.gguf",
                        help="MTP sidecar; repeat to compare heads (e.g. Q4_K and Q3_K)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per domain")
    parser.add_argument("--prompt-chars", type=int, default=600)
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    parser.add_argument("--v4slice", choices=["q4_k", "mxfp4"], default=None,
                        help="also project the speedup to V4-Flash dimensions on the cached v4slice")
    parser.add_argument("--no-llama-cpp", action="store_true", help="measure flashmtp only")
    parser.add_argument("--csv", default=None, help="write the table here")
    parser.add_argument("--plot", default=None, help="write a PNG plot here (needs matplotlib)")


