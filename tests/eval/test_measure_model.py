"""The transformers-based measurement: AUROC, majority, and per-token confidences that match
a full forward pass over the generated text."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepconf.backends.bundled import bundled_model_path
from deepconf.confidence import token_confidence
from deepconf.eval.chain_tokenizer import build_tokenizer, special_ids
from deepconf.eval.model_stats import auroc, majority


def _auroc_loop(pos, neg):
    """Slow reference: every (positive, negative) pair, ties worth half."""
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


@settings(max_examples=50, deadline=None)
@given(
    pos=st.lists(st.integers(0, 5).map(float), min_size=1, max_size=12),
    neg=st.lists(st.integers(0, 5).map(float), min_size=1, max_size=12),
)
def test_auroc_matches_the_pairwise_definition(pos, neg):
    """The vectorised AUROC equals the pairwise count, ties included."""
    assert auroc(np.array(pos), np.array(neg)) == _auroc_loop(pos, neg)


def test_auroc_edges():
    """Perfect separation is 1, reversed is 0, an empty class is undefined (None)."""
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([2.0])) == 0.0
    assert auroc(np.array([]), np.array([1.0])) is None


def test_majority_ignores_missing_answers():
    """The most frequent answer wins; None (no boxed answer) never does."""
    assert majority([None, None, 3, 3, 5]) == 3
    assert majority([None]) is None


def test_sampled_confidences_match_a_full_forward():
    # torch is the parity/train extra: only this test needs it, the rest run without it.
    torch = pytest.importorskip("torch")
    FalconH1ForCausalLM = pytest.importorskip("transformers").FalconH1ForCausalLM
    from deepconf.eval.measure_model import sample_traces

    """Each trace's confidences are -mean top-20 logprobs of the raw (untempered) logits at
    every generated position up to and including eos, the same values a full forward over
    prompt + trace gives; traces stop at eos or at the token budget."""
    model = FalconH1ForCausalLM.from_pretrained(bundled_model_path()).eval()
    tok = build_tokenizer()
    eos = special_ids()["eos_token_id"]
    prompt = "Problem: 3+4-5\nSolution: "
    prompt_ids = tok.encode(prompt).ids
    traces = sample_traces(model, prompt, 3, 1.0, 1.0, 40, seed=1)
    assert all(ids[-1] == eos for _, ids, _ in traces)  # the trained model stops
    for text, ids, confs in traces:
        assert len(confs) == len(ids) <= 40
        assert eos not in ids[:-1]  # nothing after eos is kept
        assert text == tok.decode(ids)
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + ids])).logits[0]
        lp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], -1).topk(20, -1).values
        np.testing.assert_allclose(confs, token_confidence(lp.numpy()), rtol=1e-4, atol=1e-4)
    short = sample_traces(model, prompt, 2, 1.0, 1.0, 5, seed=1)
    assert [len(ids) for _, ids, _ in short] == [5, 5]
