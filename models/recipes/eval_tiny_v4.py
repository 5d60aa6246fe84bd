"""Quality figures of tiny-v4 with the PyTorch reference (transformers' V4 + flashmtp.testing.ds4_mtp_ref):

- held-out perplexity of the main model (code, prose): windows of --seq tokens of the held-out split;
- MTP draft-1 acceptance: the main model continues held-out prompts greedily; at every generated position
  the MTP layer, fed the main streams and the main model's own greedy next token, drafts the token after
  it; accepted when that equals the main model's greedy token there. This is what a draft of 1 gets in
  greedy speculative decoding. Also the teacher-forced variant (MTP fed the real next token of the
  held-out text, compared with the main model's greedy prediction after it);
- the same acceptance for the MTP head read back from GGUF sidecars (dequantized with the ``gguf``
  package: Q4_K, Q3_K, ...), the main model staying F32.

    PYTHONPATH=python python models/recipes/eval_tiny_v4.py --run /tmp/tiny-v4 \\
        --sidecar q4_k=models/tiny-v4-q4_k-mtp.gguf --sidecar q3_k=models/tiny-v4-q3_k-mtp.gguf

``--run`` is train_tiny_v4.py's output directory (its hf/ checkpoint and data/ token ids). Prints a
Markdown table and writes it as JSON to RUN/eval.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import gguf
import numpy as np
import torch
from flashmtp.testing.ds4_mtp_ref import _RELEASE_TO_MODULE, Deepseek4MtpReference, forward_with_streams
from safetensors.torch import load_file
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

DOMAINS = ("code", "prose")


def load_run(hf: Path) -> tuple[DeepseekV4ForCausalLM, dict[str, torch.Tensor]]:
    """The main model (from its save_pretrained checkpoint) and the mtp.0.* tensors."""
    config = DeepseekV4Config.from_pretrained(hf)
    model = DeepseekV4ForCausalLM.from_pretrained(hf, config=config, dtype=torch.float32).eval()
    return model, load_file(str(hf / "mtp.safetensors"))


def sidecar_state(path: Path, n_layer: int, n_expert: int) -> dict[str, torch.Tensor]:
    """The mtp.0.* tensors of a flashmtp sidecar GGUF, dequantized to float32 (inverse of the converter's
    naming and layout: eh_proj split into e_proj | h_proj, stacked experts split per expert)."""
    from flashmtp.convert import deepseek4 as ds4

    reader = gguf.GGUFReader(str(path))
    tensors = {}
    for t in reader.tensors:
        shape = [int(d) for d in reversed(t.shape)]  # ggml {ne0, ne1, ...} -> numpy [..., ne1, ne0]
        data = gguf.dequantize(t.data, t.tensor_type).reshape(shape)
        tensors[t.name] = torch.tensor(np.asarray(data, dtype=np.float32))
    b = f"blk.{n_layer}."
    release_of = {ds4._BLOCK[k]: k for k in _RELEASE_TO_MODULE if k in ds4._BLOCK}  # GGUF -> release name
    out = {}
    for name, t in tensors.items():
        if name.startswith("output_hc_"):
            release = {"output_hc_fn.weight": "hc_head_fn", "output_hc_base.weight": "hc_head_base",
                       "output_hc_scale.weight": "hc_head_scale"}[name]
            out[f"mtp.0.{release}"] = t
        elif name == b + "nextn.eh_proj.weight":
            e_proj, h_proj = t.chunk(2, dim=1)
            out["mtp.0.e_proj.weight"], out["mtp.0.h_proj.weight"] = e_proj, h_proj
        elif name.startswith(b + "nextn."):
            out["mtp.0." + {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight",
                            "shared_head_norm.weight": "norm.weight"}[name.removeprefix(b + "nextn.")]] = t
        elif name.removeprefix(b) in {v for v in ds4._EXPERT_W.values()}:
            w = {v: k for k, v in ds4._EXPERT_W.items()}[name.removeprefix(b)]
            for e in range(n_expert):
                out[f"mtp.0.ffn.experts.{e}.{w}.weight"] = t[e]
        elif name.startswith(b):
            out["mtp.0." + release_of[name.removeprefix(b)]] = t
        else:
            raise ValueError(f"{path}: unexpected tensor {name}")
    return out


def held_out_windows(ids: np.ndarray, seq: int, n: int) -> torch.Tensor:
    """The first n non-overlapping windows of seq tokens: int64 [n, seq]."""
    n = min(n, len(ids) // seq)
    return torch.from_numpy(ids[: n * seq].reshape(n, seq).astype(np.int64))


@torch.no_grad()
def perplexity(model: DeepseekV4ForCausalLM, windows: torch.Tensor, batch: int) -> float:
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits = model(w).logits[:, :-1]
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum")
        total, count = total + float(ce), count + w[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def greedy_sequences(model: DeepseekV4ForCausalLM, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """prompts [N, P] continued greedily by the main model (full recompute each step): [N, P + new_tokens]."""
    seq = prompts
    for _ in range(new_tokens):
        seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@torch.no_grad()
def acceptance(model: DeepseekV4ForCausalLM, heads: dict[str, Deepseek4MtpReference], sequences: torch.Tensor,
               start: int) -> dict[str, float]:
    """Draft-1 acceptance of each head on sequences [N, L] whose tokens from ``start`` on are the main
    model's greedy continuation. At position t (t >= start - 1) the main model has predicted token t+1;
    the head, fed the main streams at t and token t+1 (as the runtime's MTP cache is: real tokens up to
    there), drafts token t+2, accepted when it equals the main model's prediction at t+1."""
    logits, streams = forward_with_streams(model, sequences[:, :-1])  # positions 0..L-2
    greedy = logits.argmax(-1)  # [N, L-1]: the main model's prediction of token t+1
    lo = start - 1
    # 1.0 unless a near-tie flips between the generation passes and this one (batch shapes differ).
    out = {"consistent": float((greedy[:, lo:] == sequences[:, lo + 1:]).float().mean())}
    for name, head in heads.items():
        mtp_logits, _ = head.forward_batch(streams, sequences[:, 1:])
        drafts = mtp_logits.argmax(-1)[:, lo:-1]  # position t = lo..L-3 drafts token t+2
        out[name] = float((drafts == greedy[:, lo + 1:]).float().mean())
    return out


@torch.no_grad()
def teacher_forced_acceptance(model: DeepseekV4ForCausalLM, head: Deepseek4MtpReference,
                              windows: torch.Tensor, batch: int) -> float:
    """MTP fed the real next token, against the main model's greedy prediction after that token."""
    hits, count = 0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        logits, streams = forward_with_streams(model, w[:, :-1])
        mtp_logits, _ = head.forward_batch(streams, w[:, 1:])
        drafts = mtp_logits.argmax(-1)[:, :-1]  # position t -> token t+2
        target = logits.argmax(-1)[:, 1:]  # the main's prediction of token t+2, given the real t+1
        hits, count = hits + int((drafts == target).sum()), count + target.numel()
    return hits / count


@torch.no_grad()
def runtime_agreement(model: DeepseekV4ForCausalLM, path: Path, tokens: torch.Tensor,
                      threads: int) -> dict[str, float]:
    """flashmtp's logits for ``tokens`` [T] (one prefill of the GGUF ``path``) against the PyTorch model:
    the worst position's max |ours - theirs| / max |theirs|, and top-1 agreement."""
    from flashmtp import _core

    theirs = model(tokens[None]).logits[0].double().numpy()
    ours = np.asarray(_core.Engine(str(path), threads).session().decode(tokens.numpy().astype(np.int32)))
    rel = np.abs(ours - theirs).max(axis=1) / np.abs(theirs).max(axis=1)
    return {"max_rel_error": float(rel.max()), "top1": float((ours.argmax(1) == theirs.argmax(1)).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="train_tiny_v4.py's --out directory")
    parser.add_argument("--sidecar", action="append", default=[], metavar="NAME=PATH",
                        help="an MTP sidecar GGUF to evaluate as a head (repeatable)")
    parser.add_argument("--main-gguf", action="append", default=[], metavar="NAME=PATH",
                        help="a main-model GGUF whose flashmtp logits to compare with PyTorch (repeatable)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--windows", type=int, default=128, help="held-out windows per domain (perplexity)")
    parser.add_argument("--prompts", type=int, default=32, help="greedy continuations per domain")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    model, mtp_state = load_run(args.run / "hf")
    embed, lm_head = model.model.embed_tokens.weight.detach(), model.lm_head.weight.detach()
    heads = {"f32": Deepseek4MtpReference(model.config, mtp_state, embed, lm_head).eval()}
    for spec in args.sidecar:
        name, path = spec.split("=", 1)
        state = sidecar_state(Path(path), model.config.num_hidden_layers, model.config.n_routed_experts)
        heads[name] = Deepseek4MtpReference(model.config, state, embed, lm_head).eval()

    results: dict[str, dict[str, float]] = {}
    for domain in DOMAINS:
        ids = np.load(args.run / "data" / f"test-{domain}.npy")
        windows = held_out_windows(ids, args.seq, args.windows)
        r = {"perplexity": perplexity(model, windows, 16),
             "teacher_forced_f32": teacher_forced_acceptance(model, heads["f32"], windows[:32], 16)}
        # Prompts: every 4th held-out window's first --prompt-tokens tokens (spread over the split).
        prompts = held_out_windows(ids, args.prompt_tokens, args.prompts * 4)[::4][: args.prompts]
        sequences = greedy_sequences(model, prompts, args.new_tokens)
        r |= {f"accept_{k}": v for k, v in acceptance(model, heads, sequences, args.prompt_tokens).items()}
        results[domain] = r
        print(f"{domain}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()), flush=True)

    for spec in args.main_gguf:
        name, path = spec.split("=", 1)
        for domain in DOMAINS:
            snippet = held_out_windows(np.load(args.run / "data" / f"test-{domain}.npy"), args.seq, 1)[0]
            r = runtime_agreement(model, Path(path), snippet, args.threads)
            results[domain] |= {f"runtime_{name}_{k}": v for k, v in r.items()}
            print(f"{domain} runtime {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)

    keys = list(results["code"])
    print("\n| figure | " + " | ".join(DOMAINS) + " |\n|---|" + "---|" * len(DOMAINS))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{results[d][k]:.4f}" for d in DOMAINS) + " |")
    (args.run / "eval.json").write_text(json.dumps(results, indent=1))
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
