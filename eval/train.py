"""Train the bundled Falcon-H1 model on the chain-arithmetic task (CPU, torch + transformers).

    python -m deepconf.eval.train --out runs/full --steps 4000 --max-minutes 55

It trains transformers' own `FalconH1ForCausalLM` (its pure-PyTorch fallbacks run on the CPU),
so the exported folder is an exact Hugging Face Falcon-H1 checkpoint: every layer runs
attention and Mamba2 in parallel, as in the released models. Loss covers the solution tokens
only. Seeded and reproducible for a given --steps (the wall-clock limit only stops early).

The folder written to <out>/model (refreshed at every validation) holds config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json,
deepconf.json and training.json. Needs the `train` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

from deepconf.errors import ConfigError
from deepconf.eval.chain_tokenizer import build_tokenizer, save_tokenizer, special_ids
from deepconf.eval.task_chain import (
    TASK_ID,
    Difficulty,
    grade,
    problems,
    prompt_text,
    training_stream,
)

try:
    import torch
    from transformers import FalconH1Config, FalconH1ForCausalLM
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError(
        "training needs torch and transformers: pip install 'deepconf-orchestrator[train]'"
    ) from exc

# digits 1: short chains only; digits 2 and 3: the range the default difficulty is picked from.
# Two-digit chains carry most of the weight: the default difficulty is picked among them.
DEFAULT_MIX = ",".join(
    [f"s{s}d1" for s in range(1, 4)]
    + [f"s{s}d2" for s in range(1, 11)]
    + [f"s{s}d3" for s in range(1, 6)]
)
VALIDATION_DIFFICULTIES = "s3d2,s6d2,s4d3"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deepconf.eval.train", description=__doc__)
    p.add_argument("--out", type=Path, required=True, help="run folder (model goes in out/model)")
    # The shipped model's run (backends/bundled_model/training.json records the command).
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (sets the schedule)")
    p.add_argument("--max-minutes", type=float, default=55.0, help="stop early after this long")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mix", default=DEFAULT_MIX, help="comma-separated training difficulties")
    p.add_argument("--val-difficulties", default=VALIDATION_DIFFICULTIES)
    p.add_argument("--val-problems", type=int, default=32, help="per validation difficulty")
    p.add_argument("--eval-every", type=int, default=600)
    p.add_argument("--log-every", type=int, default=25)
    # Architecture (Falcon-H1 hybrid; every layer has attention and Mamba2 in parallel).
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--d-ssm", type=int, default=256)
    p.add_argument("--mamba-heads", type=int, default=8)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--chunk", type=int, default=64)
    return p.parse_args(argv)


def model_config(args: argparse.Namespace, vocab_size: int) -> FalconH1Config:
    return FalconH1Config(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        mamba_d_ssm=args.d_ssm,
        mamba_n_heads=args.mamba_heads,
        mamba_d_head=args.d_ssm // args.mamba_heads,
        mamba_d_state=args.d_state,
        mamba_n_groups=1,
        mamba_d_conv=4,
        mamba_chunk_size=args.chunk,
        # The gated RMSNorm, gate then norm, as the trained checkpoints use.
        mamba_rms_norm=True,
        mamba_norm_before_gate=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        **special_ids(),
    )


class Batcher:
    """Padded (input_ids, labels) batches from the training stream, one difficulty each."""

    def __init__(self, mix: list[Difficulty], batch_size: int, seed: int) -> None:
        self.tok = build_tokenizer()
        self.eos = special_ids()["eos_token_id"]
        self.pad = special_ids()["pad_token_id"]
        self.rng = random.Random(f"batches/{seed}")
        self.streams = {d: training_stream([d], seed=seed * 1000 + i) for i, d in enumerate(mix)}
        self.mix = mix
        self.batch_size = batch_size

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def next(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        stream = self.streams[self.rng.choice(self.mix)]
        rows, labels = [], []
        for _ in range(self.batch_size):
            p = next(stream)
            prompt = self.encode(prompt_text(p))
            sol = [*self.encode(p.solution()), self.eos]
            rows.append(prompt + sol)
            # Loss on the solution only: the prompt is given, never generated.
            labels.append([-100] * len(prompt) + sol)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            lab[i, : len(lb)] = torch.tensor(lb)
        return ids, lab, sum(len(r) for r in rows)


def lr_factor(
    step: int, total: int, warmup: int, min_ratio: float, time_frac: float = 0.0
) -> float:
    """Linear warmup, then cosine from 1 down to min_ratio.

    Progress is the larger of step progress and `time_frac` (elapsed / wall-clock limit), so
    a run cut short by the clock on a busy machine still ends annealed. When the step count
    binds first (the normal case) the schedule depends on steps only and is reproducible.
    """
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, max((step - warmup) / max(1, total - warmup), time_frac))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def greedy_accuracy(model, difficulty: Difficulty, n: int, max_extra: int = 24) -> float:
    """Greedy validation accuracy on n validation problems of one difficulty.

    Prompts are grouped by token length so each generate call needs no padding (padding
    masks in hybrid models are a separate code path we do not want to depend on here).
    """
    tok = build_tokenizer()
    eos, pad = special_ids()["eos_token_id"], special_ids()["pad_token_id"]
    probs = problems(difficulty, n, split="validation")
    groups: dict[int, list] = {}
    for p in probs:
        groups.setdefault(len(prompt_text(p)), []).append(p)
    model.eval()
    correct = 0
    for group in groups.values():
        ids = torch.tensor([tok.encode(prompt_text(p)).ids for p in group])
        budget = max(len(tok.encode(p.solution()).ids) for p in group) + max_extra
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        for p, row in zip(group, out[:, ids.shape[1] :].tolist(), strict=True):
            correct += grade(p, tok.decode(row))
    model.train()
    return correct / n


def export(model, folder: Path, summary: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    save_tokenizer(folder)
    deepconf = {
        "task": TASK_ID,
        "top_logprobs": 20,
        # Provisional sampling defaults; the model card records the measured choice.
        "window": 16,
        "temperature": 0.8,
        "top_p": 1.0,
        "max_tokens": 256,
    }
    dc_path = folder / "deepconf.json"
    if dc_path.exists():  # keep measured defaults written after a previous export
        deepconf.update(json.loads(dc_path.read_text()))
    dc_path.write_text(json.dumps(deepconf, indent=2) + "\n")
    (folder / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    mix = [Difficulty.parse(d) for d in args.mix.split(",")]
    val = [Difficulty.parse(d) for d in args.val_difficulties.split(",") if d]

    batcher = Batcher(mix, args.batch_size, args.seed)
    vocab = build_tokenizer().get_vocab_size()
    model = FalconH1ForCausalLM(model_config(args, vocab))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params:,}  vocab {vocab}  mix {len(mix)} difficulties", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    out_model = args.out / "model"
    t0 = time.monotonic()
    tokens = 0
    loss_avg = None
    history: list[dict] = []
    summary: dict = {}
    step = 0
    time_frac = 0.0
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(
                step - 1, args.steps, args.warmup, args.min_lr_ratio, time_frac
            )
        ids, labels, n_tok = batcher.next()
        logits = model(input_ids=ids).logits  # (b, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += n_tok
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        elapsed = time.monotonic() - t0
        time_frac = elapsed / (args.max_minutes * 60)
        if step % args.log_every == 0:
            print(
                f"step {step} loss {loss_avg:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"tokens {tokens:,} {tokens / elapsed:.0f} tok/s {elapsed / 60:.1f} min",
                flush=True,
            )
        out_of_time = elapsed > args.max_minutes * 60
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            accs = {d.name: greedy_accuracy(model, d, args.val_problems) for d in val}
            history.append({"step": step, "loss": loss_avg, "greedy_accuracy": accs})
            print(f"step {step} validation greedy accuracy {accs}", flush=True)
            summary = {
                "command": "python -m deepconf.eval.train " + " ".join(sys.argv[1:]),
                "params": n_params,
                "steps": step,
                "tokens": tokens,
                "minutes": round((time.monotonic() - t0) / 60, 2),
                "loss": loss_avg,
                "validation": history,
                "args": {k: str(v) for k, v in vars(args).items()},
            }
            export(model, out_model, summary)
        if out_of_time:
            print(f"stopping at step {step}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    print(f"done: {step} steps, {tokens:,} tokens, exported to {out_model}", flush=True)
    return summary


if __name__ == "__main__":
    main()
