"""Hugging Face transformers as a logits oracle for a GGUF file, and figures comparing two sets of logits.

transformers reads the same GGUF file, dequantizes every tensor to float32 (through the gguf package) and runs
its own PyTorch implementation of the architecture on float activations: an implementation written
independently of ours, on the same weights. Needs torch, transformers and accelerate (the `test` extra).

    oracle = load_transformers(path)                 # minutes of CPU for a 0.5B model: load once
    reference = transformers_logits(oracle, ids)     # float32 [n_tokens, n_vocab]
    stats = compare_logits(ours, reference)          # top-1 agreement, |diff|, KL(oracle || ours)
    print(stats)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def load_transformers(path: str | os.PathLike[str], threads: int = 2) -> Any:
    """The GGUF file as a transformers causal LM in float32 on the CPU, eager attention, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def transformers_logits(model: Any, ids: np.ndarray) -> np.ndarray:
    """float32 logits [n_tokens, n_vocab] of the token ids decoded in one forward pass from position 0."""
    import torch

    with torch.inference_mode():
        out = model(torch.from_numpy(np.asarray(ids, dtype=np.int64))[None], use_cache=False)
    return out.logits[0].float().numpy()


@dataclass(frozen=True)
class LogitStats:
    """How far logits are from an oracle's over the same positions."""

    n_positions: int
    top1: float          # fraction of positions whose argmax agrees with the oracle's
    n_confident: int     # positions where the oracle's top-2 margin exceeds `margin`
    top1_confident: float
    margin: float
    max_abs_diff: float  # max over every logit of |ours - oracle|
    mean_kl: float       # KL(oracle || ours) of the softmax distributions, nats: mean and max over positions
    max_kl: float

    def __str__(self) -> str:
        return (f"{self.n_positions} positions: top-1 {self.top1:.2%}, top-1 where the oracle's margin > "
                f"{self.margin:g}: {self.top1_confident:.2%} of {self.n_confident}, max |diff| "
                f"{self.max_abs_diff:.3f}, KL(oracle || ours) mean {self.mean_kl:.2e} max {self.max_kl:.2e}")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare_logits(ours: np.ndarray, oracle: np.ndarray, margin: float = 0.5) -> LogitStats:
    """Figures for ours against oracle, both [n_positions, n_vocab]. A position whose oracle top-2 logits are
    within `margin` of each other is a near-tie: rounding alone may swap its top-1, so it is counted apart."""
    if ours.shape != oracle.shape or ours.ndim != 2:
        raise ValueError(f"logits of shape {ours.shape} and {oracle.shape}: expected the same [n, n_vocab]")
    agree = ours.argmax(-1) == oracle.argmax(-1)
    top2 = np.partition(oracle, -2, axis=-1)[:, -2:]  # the two largest, in either order
    confident = np.abs(top2[:, 1] - top2[:, 0]) > margin
    log_p, log_q = log_softmax(oracle), log_softmax(ours)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)  # [n_positions]
    return LogitStats(
        n_positions=len(ours),
        top1=float(agree.mean()),
        n_confident=int(confident.sum()),
        top1_confident=float(agree[confident].mean()) if confident.any() else float("nan"),
        margin=margin,
        max_abs_diff=float(np.abs(ours.astype(np.float64) - oracle).max()),
        mean_kl=float(kl.mean()),
        max_kl=float(kl.max()),
    )
