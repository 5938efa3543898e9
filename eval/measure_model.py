"""Measure a trained chain-arithmetic checkpoint with transformers' generate (the reference).

For each difficulty and temperature it samples N traces per test problem and reports the
single-trace accuracy, majority@N, the accuracy of a vote over the 10% most confident traces
(by lowest group confidence, DeepConf-low's offline form), the AUROC of lowest-group and mean
confidence for correct vs incorrect traces, and the trace lengths. Token confidence comes from
the raw logits (before temperature and top-p, as vLLM reports logprobs by default):
C_i = -mean of the top-20 logprobs, the same formula as deepconf.confidence.

    python -m deepconf.eval.measure_model --model backends/bundled_model \\
        --difficulties s4d2,s6d2,s8d2 --temperatures 0.8 --problems 40 --traces 32

Needs the `train` extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from deepconf.confidence import token_confidence, trace_metrics
from deepconf.errors import ConfigError
from deepconf.eval.chain_tokenizer import build_tokenizer, special_ids
from deepconf.eval.model_stats import auroc, majority
from deepconf.eval.task_chain import Difficulty, boxed_answer, problems, prompt_text
from deepconf.voting import keep_top

try:
    import torch
    from transformers import FalconH1ForCausalLM
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigError(
        "measuring needs torch and transformers: pip install 'deepconf-orchestrator[train]'"
    ) from exc

TOP_K = 20


@torch.no_grad()
def sample_traces(
    model,
    prompt: str,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> list[tuple[str, list[int], np.ndarray]]:
    """n sampled completions of one prompt: (text, token ids, per-token confidences (len,)).

    The ids run up to and including eos; the text is their decoding without special tokens.
    """
    tok = build_tokenizer()
    ids = torch.tensor([tok.encode(prompt).ids] * n)
    eos, pad = special_ids()["eos_token_id"], special_ids()["pad_token_id"]
    torch.manual_seed(seed)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=top_p,
        top_k=0,
        eos_token_id=eos,
        pad_token_id=pad,
        output_logits=True,
        return_dict_in_generate=True,
    )
    gen = out.sequences[:, ids.shape[1] :]  # (n, steps)
    raw = torch.stack(out.logits, dim=1).float()  # (n, steps, V): before temperature/top-p
    top = torch.log_softmax(raw, dim=-1).topk(TOP_K, dim=-1).values.numpy()  # (n, steps, k)
    traces = []
    for i in range(n):
        row = gen[i].tolist()
        length = row.index(eos) + 1 if eos in row else len(row)  # the eos token counts
        confs = token_confidence(top[i, :length])
        traces.append((tok.decode(row[:length]), row[:length], confs))
    return traces


def measure(
    model,
    difficulty: Difficulty,
    n_problems: int,
    n_traces: int,
    temperature: float,
    top_p: float,
    windows: list[int],
    seed: int = 0,
) -> dict:
    probs = problems(difficulty, n_problems, split="test")
    budget = 2 * len(build_tokenizer().encode(probs[0].solution()).ids) + 16
    correct_flags, lengths, lowest, means = [], [], {w: [] for w in windows}, []
    maj_correct = top10_correct = 0
    for j, p in enumerate(probs):
        traces = sample_traces(
            model, prompt_text(p), n_traces, temperature, top_p, budget, seed + j
        )
        answers = [boxed_answer(text) for text, _, _ in traces]
        ok = [a == p.answer for a in answers]
        correct_flags += ok
        lengths += [len(c) for _, _, c in traces]
        means += [float(c.mean()) for _, _, c in traces]
        for w in windows:
            lowest[w] += [trace_metrics(c, window=w).lowest for _, _, c in traces]
        maj_correct += majority(answers) == p.answer
        # Offline DeepConf-low: keep the 10% most confident traces (by lowest group at the
        # first window), then a plain majority among them.
        keep = keep_top(lowest[windows[0]][-n_traces:], 10.0)
        top10_correct += majority([a for a, k in zip(answers, keep, strict=True) if k]) == p.answer
    flags = np.array(correct_flags)
    result = {
        "difficulty": difficulty.name,
        "temperature": temperature,
        "top_p": top_p,
        "problems": n_problems,
        "traces": n_traces,
        "single_accuracy": float(flags.mean()),
        "majority_accuracy": maj_correct / n_problems,
        "lowest@10_majority_accuracy": top10_correct / n_problems,
        "trace_tokens_mean": float(np.mean(lengths)),
        "trace_tokens_min": int(np.min(lengths)),
        "trace_tokens_max": int(np.max(lengths)),
        "auroc_mean": auroc(np.array(means)[flags], np.array(means)[~flags]),
    }
    for w in windows:
        v = np.array(lowest[w])
        result[f"auroc_lowest_w{w}"] = auroc(v[flags], v[~flags])
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m deepconf.eval.measure_model", description=__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--difficulties", default="s4d2,s6d2,s8d2")
    p.add_argument("--temperatures", default="0.8")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--problems", type=int, default=40)
    p.add_argument("--traces", type=int, default=32)
    p.add_argument("--windows", default="8,16,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="append results as JSON lines")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = FalconH1ForCausalLM.from_pretrained(args.model).eval()
    windows = [int(w) for w in args.windows.split(",")]
    results = []
    for d in args.difficulties.split(","):
        for t in args.temperatures.split(","):
            t0 = time.monotonic()
            r = measure(
                model,
                Difficulty.parse(d),
                args.problems,
                args.traces,
                float(t),
                args.top_p,
                windows,
            )
            r["seconds"] = round(time.monotonic() - t0, 1)
            print(json.dumps(r), flush=True)
            results.append(r)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    return results


if __name__ == "__main__":
    main()
