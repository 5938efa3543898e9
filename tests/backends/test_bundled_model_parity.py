"""The shipped bundled model gives the same logits in transformers' FalconH1ForCausalLM and
in our numpy engine: the export is a real Falcon-H1 checkpoint, not one only we can read."""

import numpy as np
import pytest

from deepconf.backends.bundled import bundled_model_path
from deepconf.backends.falcon_h1 import FalconH1Model, load_tokenizer
from deepconf.eval import task_chain

# The parity extra (torch, transformers): without it this module is skipped.
torch = pytest.importorskip("torch")  # the parity extra: CI installs it
FalconH1ForCausalLM = pytest.importorskip("transformers").FalconH1ForCausalLM

pytestmark = pytest.mark.parity


def test_shipped_model_logits_match_transformers():
    """A held-out prompt plus its reference solution (68 tokens, past the Mamba chunk of 64):
    every position's logits agree within 1e-4 of the largest logit."""
    folder = bundled_model_path()
    problem = task_chain.make_problem(task_chain.Difficulty(steps=4, digits=3), seed=10**9)
    text = task_chain.prompt_text(problem) + problem.solution()
    ids = np.array([load_tokenizer(folder).encode(text)])  # (1, T)
    assert ids.shape[1] > 64

    ours = FalconH1Model.from_pretrained(folder).forward(ids)  # (1, T, V)
    hf = FalconH1ForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    scale = np.abs(theirs).max()
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * scale, rtol=0)
    # And the model actually solves it greedily at every step of the reference chain.
    assert (ours[0, :-1].argmax(-1) == ids[0, 1:])[-len(problem.solution()) :].mean() > 0.9
