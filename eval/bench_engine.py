"""Benchmark: the bundled numpy engine against transformers' FalconH1ForCausalLM.generate.

Both decode the same checkpoint from the same prompt, B sequences at once, with plain sampling
(temperature 1, no top-p/top-k) and EOS ignored, so every sequence makes exactly T tokens.
Decode speed excludes the prompt: for the engine, the steps after the first (the first step
prefills); for transformers, (time for T tokens - time for 1 token). The engine also computes
top-20 raw logprobs for every token; generate computes none. Each (implementation, batch)
runs in its own process so the peak RSS (VmHWM, or getrusage) belongs to that run alone.

    python -m deepconf.eval.bench_engine --model path/to/falcon-h1      # batch 1, 16, 64
    python -m deepconf.eval.bench_engine --batches 1 8 --tokens 64      # the bundled model

Without torch/transformers (the parity extra) the transformers column is skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = "Problem: 37+58-19+64\nSolution: "


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass  # not Linux: fall back to getrusage below
    return None


def _rss_mb() -> float:
    return _status_mb("VmRSS") or float("nan")


def _peak_mb() -> float:
    # VmHWM and VmRSS come from the same accounting, so peak >= any RSS read earlier.
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_numpy(path: Path, batch: int, tokens: int, threads: int | None) -> dict[str, Any]:
    from deepconf.backends.bundled import _TextDecoder, limit_blas_threads
    from deepconf.backends.engine import Engine, SamplingParams
    from deepconf.backends.falcon_h1 import FalconH1Model, load_tokenizer

    model = FalconH1Model.from_pretrained(path)
    used = limit_blas_threads(model.config, threads)
    tok = load_tokenizer(path)
    ids = tok.encode(PROMPT)
    engine = Engine(model, _TextDecoder(tok), max_batch=batch, max_len=len(ids) + tokens + 1)
    loaded = _rss_mb()

    def one_round(n_tokens: int, tag: str) -> tuple[float, float]:
        for i in range(batch):
            params = SamplingParams(
                temperature=1.0, max_tokens=n_tokens, seed=i, logprobs=20, ignore_eos=True
            )
            engine.add_request(f"{tag}{i}", ids, params)
        t0 = time.perf_counter()
        engine.step()  # prefill (shared) + first token
        t1 = time.perf_counter()
        while engine.has_work:
            engine.step()
        return t1 - t0, time.perf_counter() - t1

    one_round(4, "warm")
    before = engine.stats.tokens_generated
    first, rest = one_round(tokens, "run")
    return {
        "tokens_generated": engine.stats.tokens_generated - before,  # the run's, counted
        "decode_tok_s": batch * (tokens - 1) / rest,
        "first_step_s": first,
        "threads": used,
        "peak_rss_mb": _peak_mb(),
        "loaded_rss_mb": loaded,
    }


def run_transformers(path: Path, batch: int, tokens: int, threads: int | None) -> dict[str, Any]:
    import torch
    from transformers import FalconH1ForCausalLM

    from deepconf.backends.falcon_h1 import load_tokenizer

    torch.manual_seed(0)
    if threads is not None:
        torch.set_num_threads(threads)
    model = FalconH1ForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(path).encode(PROMPT)] * batch)
    loaded = _rss_mb()

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                pad_token_id=0,
            )
        return time.perf_counter() - t0

    timed(4)  # warm-up
    one = timed(1)
    full = timed(tokens)
    return {
        "decode_tok_s": batch * (tokens - 1) / max(full - one, 1e-9),
        "first_step_s": one,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": _peak_mb(),
        "loaded_rss_mb": loaded,
    }


def _worker(kind: str, path: Path, batch: int, tokens: int, threads: int | None) -> dict | None:
    cmd = [
        sys.executable,
        "-m",
        "deepconf.eval.bench_engine",
        "--model",
        str(path),
        "--worker",
        kind,
        "--batches",
        str(batch),
        "--tokens",
        str(tokens),
    ]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        print(f"[{kind} batch {batch}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: bundled)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS threads for numpy and torch threads (default: the engine's own choice, "
        "1 for small models, and torch's default)",
    )
    p.add_argument("--worker", choices=["numpy", "transformers"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from deepconf.backends.bundled import resolve_model_path

    path = resolve_model_path(args.model)
    if args.tokens < 2:
        p.error("--tokens must be at least 2")
    if args.worker:
        run = run_numpy if args.worker == "numpy" else run_transformers
        print(json.dumps(run(path, args.batches[0], args.tokens, args.threads)))
        return
    have_torch = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    if not have_torch:
        print(
            "note: torch/transformers are not installed"
            " (pip install 'deepconf-orchestrator[parity]'); the transformers column is skipped"
        )
    print(f"model {path}  tokens/sequence {args.tokens}  (decode tokens/s; peak RSS MiB)")
    threads: list[str] = []
    print(
        f"{'batch':>5}  {'numpy tok/s':>11}  {'hf tok/s':>9}  {'ratio':>6}  "
        f"{'numpy MiB':>9}  {'hf MiB':>7}"
    )
    for batch in args.batches:
        ours = _worker("numpy", path, batch, args.tokens, args.threads)
        theirs = (
            _worker("transformers", path, batch, args.tokens, args.threads) if have_torch else None
        )
        if ours is None:
            continue
        hf_speed = f"{theirs['decode_tok_s']:9.0f}" if theirs else f"{'-':>9}"
        ratio = f"{ours['decode_tok_s'] / theirs['decode_tok_s']:6.1f}" if theirs else f"{'-':>6}"
        hf_mem = f"{theirs['peak_rss_mb']:7.0f}" if theirs else f"{'-':>7}"
        print(
            f"{batch:>5}  {ours['decode_tok_s']:11.0f}  {hf_speed}  {ratio}  "
            f"{ours['peak_rss_mb']:9.0f}  {hf_mem}"
        )
        threads = [f"numpy BLAS threads: {ours['threads'] or 'default'}"]
        if theirs:
            threads.append(f"torch threads: {theirs['threads']}")
    print("; ".join(threads))


if __name__ == "__main__":
    main()
