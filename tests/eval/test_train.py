"""The training script on a micro Falcon-H1 config: it learns, it is reproducible, and its
export is a Hugging Face folder transformers loads back."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

# torch first: deepconf.eval.train imports it at import time (the train extra).
torch = pytest.importorskip("torch")  # the train extra: CI installs it
transformers = pytest.importorskip("transformers")
from deepconf.eval import train  # noqa: E402
from deepconf.eval.chain_tokenizer import CHAT_TEMPLATE, build_tokenizer  # noqa: E402
from deepconf.eval.task_chain import TASK_ID, Difficulty, parse_prompt  # noqa: E402

MICRO = [
    "--hidden", "32", "--layers", "2", "--intermediate", "48", "--heads", "2",
    "--kv-heads", "1", "--head-dim", "16", "--d-ssm", "32", "--mamba-heads", "4",
    "--d-state", "8", "--chunk", "16", "--batch-size", "4", "--threads", "1",
    "--mix", "s1d1,s2d1", "--val-difficulties", "s1d1", "--val-problems", "2",
    "--warmup", "2", "--log-every", "1000",
]  # fmt: skip


def _run(tmp_path, name, steps):
    out = tmp_path / name
    summary = train.main(["--out", str(out), "--steps", str(steps), "--eval-every", "1000", *MICRO])
    return out / "model", summary


def test_export_loads_in_transformers_with_the_hybrid_structure(tmp_path):
    """A few steps export config, safetensors, tokenizer and deepconf.json; transformers
    loads the folder back to the same logits, and every layer holds attention and Mamba2."""
    folder, summary = _run(tmp_path, "a", 3)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "deepconf.json",
        "training.json",
    ):
        assert (folder / name).is_file(), name
    assert summary["steps"] == 3 and summary["tokens"] > 0
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "falcon_h1" and cfg["num_hidden_layers"] == 2
    assert cfg["vocab_size"] == build_tokenizer().get_vocab_size()
    dc = json.loads((folder / "deepconf.json").read_text())
    assert dc["task"] == TASK_ID and dc["top_logprobs"] == 20
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"] == (
        CHAT_TEMPLATE
    )

    model = transformers.FalconH1ForCausalLM.from_pretrained(folder).eval()
    names = {n for n, _ in model.named_parameters()}
    for i in range(2):
        assert f"model.layers.{i}.self_attn.q_proj.weight" in names
        assert f"model.layers.{i}.mamba.in_proj.weight" in names
    ids = torch.tensor([build_tokenizer().encode("Problem: 1+2\nSolution: ").ids])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], cfg["vocab_size"])
    assert torch.isfinite(logits).all()


def test_same_seed_same_weights(tmp_path):
    """Two runs with the same seed and steps export identical weights."""
    from safetensors.numpy import load_file

    a, _ = _run(tmp_path, "a", 2)
    b, _ = _run(tmp_path, "b", 2)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


def test_loss_falls_when_training_on_the_task():
    """Thirty steps on the micro config bring the solution-token loss well below its start."""
    args = train.parse_args(["--out", "unused", *MICRO])
    torch.manual_seed(0)
    model = train.FalconH1ForCausalLM(train.model_config(args, build_tokenizer().get_vocab_size()))
    batcher = train.Batcher([Difficulty(1, 1)], 8, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        ids, labels, _ = batcher.next()
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3])


def test_batches_mask_the_prompt_and_padding():
    """Labels cover exactly the solution tokens and eos of each row; prompt and pad are -100."""
    batcher = train.Batcher([Difficulty(2, 1)], 4, seed=1)
    ids, labels, n_tok = batcher.next()
    tok = build_tokenizer()
    for row_ids, row_lab in zip(ids.tolist(), labels.tolist(), strict=True):
        kept = [t for t in row_lab if t != -100]
        text = tok.decode(kept[:-1])
        assert kept[-1] == tok.token_to_id("<eos>")
        assert text.endswith("}") and "Problem" not in text
        start = row_lab.index(kept[0])
        assert tok.decode(row_ids[:start]).startswith("Problem: ")
        assert tok.decode(row_ids[:start]).endswith("\nSolution: ")
    assert n_tok == int((ids != tok.token_to_id("<pad>")).sum())


def test_lr_schedule_warms_up_then_anneals():
    """Warmup rises linearly to the peak; cosine reaches min_ratio at the end, and the
    wall-clock fraction can only move the schedule forward."""
    f = [train.lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert train.lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert train.lr_factor(20, 100, 10, 0.1, time_frac=1.0) == pytest.approx(0.1)
    assert train.lr_factor(20, 100, 10, 0.1, time_frac=0.0) > 0.9


class _FakeSolver:
    """Stands in for the model in generate(): answers every prompt with the reference
    solution, offset by `error` in the boxed answer, then eos and ragged padding."""

    def __init__(self, error: int) -> None:
        self.error = error
        self.tok = build_tokenizer()

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def generate(self, ids, **kw):
        rows = []
        for row in ids.tolist():
            p = parse_prompt(self.tok.decode(row))
            text = p.solution().replace(f"{{{p.answer}}}", f"{{{p.answer + self.error}}}")
            rows.append([*row, *self.tok.encode(text).ids, kw["eos_token_id"]])
        width = max(len(r) for r in rows) + 3
        return torch.tensor([r + [kw["pad_token_id"]] * (width - len(r)) for r in rows])


def test_greedy_accuracy_grades_generated_text():
    """greedy_accuracy is 1.0 when every completion boxes the right answer and 0.0 when
    every one is off by one, over prompts of several lengths."""
    d = Difficulty(3, 2)
    assert train.greedy_accuracy(_FakeSolver(0), d, 12) == 1.0
    assert train.greedy_accuracy(_FakeSolver(1), d, 12) == 0.0
