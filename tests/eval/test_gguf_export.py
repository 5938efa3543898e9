"""GGUF export (deepconf.eval.gguf_export): the vocabulary llama.cpp needs, the refusals, and
llama.cpp's own forward pass on the exported file against our numpy model.

The parity tests load the file with llama-cpp-python in process (no server) and compare the
log-softmax of its logits with FalconH1Model.forward at every position. They need the
`llama` extra and skip without it; the vocabulary tests need nothing but the project.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from support.llama_server import bundled_gguf
from support.tiny_model import write_tiny_model

from deepconf.backends.bundled import bundled_model_path
from deepconf.backends.falcon_h1 import FalconH1Model
from deepconf.backends.falcon_h1.config import FalconH1Config, load_config
from deepconf.backends.falcon_h1.tokenizer import load_tokenizer
from deepconf.errors import ModelLoadError
from deepconf.eval.gguf_export import (
    BYTE_TO_UNICODE,
    CONTROL,
    INERT_MERGE,
    NORMAL,
    byte_level,
    check_exportable,
    gguf_vocab,
)
from deepconf.eval.task_chain import Difficulty, make_problem, prompt_text

# A prompt in the shipped model's trained form and a solution of the kind it writes: spaces,
# newline, digits, operators, the boxed answer.
PROBLEM = make_problem(Difficulty(steps=4, digits=3), seed=10**9)
TEXT = prompt_text(PROBLEM) + "417+385=802. 802-206=596. 596+733=1329. \\boxed{1329}"


def test_byte_map_is_gpt2s():
    """GPT-2's byte map: a bijection onto 256 printable characters in which printable ASCII
    stands for itself, space is 'Ġ' and newline 'Ċ'."""
    assert len(set(BYTE_TO_UNICODE.values())) == 256
    assert all(BYTE_TO_UNICODE[b] == chr(b) for b in range(ord("!"), ord("~") + 1))
    assert (BYTE_TO_UNICODE[ord(" ")], BYTE_TO_UNICODE[ord("\n")]) == ("Ġ", "Ċ")
    assert byte_level("é 1\n") == "Ã©Ġ1Ċ"


def test_shipped_vocabulary_in_byte_level_form():
    """Every token id keeps its place; characters are byte-level strings, the four special
    tokens keep their text as control tokens; one merge that can never apply (llama.cpp
    refuses a BPE file without merges); EOS is <eos> (2), where our engine stops."""
    folder = bundled_model_path()
    cfg = load_config(folder)
    vocab = gguf_vocab(folder, cfg)
    tok = load_tokenizer(folder)
    assert len(vocab.tokens) == cfg.vocab_size == 100
    for i, token in enumerate(vocab.tokens):
        if i < 4:
            assert (token, vocab.types[i]) == (tok.id_to_token(i), CONTROL)
        else:
            assert (token, vocab.types[i]) == (byte_level(tok.id_to_token(i)), NORMAL)
    assert vocab.merges == [INERT_MERGE]
    assert (vocab.bos_id, vocab.eos_ids, vocab.pad_id, vocab.unk_id) == (1, (2,), 0, 3)
    assert vocab.chat_template == tok.chat_template


def test_multibyte_characters_get_merges(tmp_path):
    """A one-character vocabulary with a two-byte character: its byte-level form has two
    symbols, so a merge rebuilds it (and the inert merge is not needed)."""
    folder = bundled_model_path()
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["vocab"]["é"] = 100
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    for name in ("tokenizer_config.json", "config.json"):
        (tmp_path / name).write_text((folder / name).read_text())
    cfg = FalconH1Config.from_dict(load_config(folder).raw | {"vocab_size": 101})
    vocab = gguf_vocab(tmp_path, cfg)
    assert vocab.tokens[100] == "Ã©"
    assert vocab.merges == ["Ã ©"]


def test_multi_character_wordlevel_tokens_are_refused(tmp_path):
    folder = bundled_model_path()
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"]["vocab"]["ab"] = 100
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    cfg = FalconH1Config.from_dict(load_config(folder).raw | {"vocab_size": 101})
    with pytest.raises(ModelLoadError, match="'ab' \\(id 100\\) is not one character"):
        gguf_vocab(tmp_path, cfg)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"mamba_rms_norm": True, "mamba_norm_before_gate": True}, "mamba_norm_before_gate"),
        ({"time_step_limit": [0.001, 100.0]}, "does not clamp dt"),
        ({"mamba_proj_bias": True}, "ssm_in has no bias"),
        ({"projectors_bias": True}, "ssm_out has no bias"),
    ],
)
def test_what_llama_cpp_cannot_compute_is_refused(change, reason):
    """Exporting these would give a file that loads and computes something else."""
    cfg = FalconH1Config.from_dict(load_config(bundled_model_path()).raw | change)
    with pytest.raises(ModelLoadError, match=reason):
        check_exportable(cfg)


# ------------------------------------------------------------------ llama.cpp parity


def _llama(path):
    """The file loaded in process, with a float32 KV cache: llama.cpp's default float16
    cache alone moves log-probs by up to ~0.014 on the shipped model (1e-3 typical), which
    would hide an export error of that size."""
    llama_cpp = pytest.importorskip("llama_cpp")
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(
        model_path=str(path), n_ctx=256, logits_all=True, verbose=False, type_k=f32, type_v=f32
    )


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _max_logprob_gap(llm, model: FalconH1Model, ids: list[int]) -> float:
    llm.reset()
    llm.eval(ids)
    ours = _log_softmax(model.forward(np.array([ids]))[0])  # (t, V)
    theirs = _log_softmax(np.asarray(llm.scores[: len(ids)]))  # (t, V)
    return float(np.abs(ours - theirs).max())


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    pytest.importorskip("gguf")
    return _llama(bundled_gguf(tmp_path_factory))


def test_llama_cpp_tokenizes_like_the_checkpoint(shipped):
    """Token ids from llama.cpp's byte-level BPE equal the HF tokenizer's, spaces and
    newlines included, with no BOS added; and they decode back to the text."""
    tok = load_tokenizer(bundled_model_path())
    ids = shipped.tokenize(TEXT.encode(), add_bos=False, special=True)
    assert ids == tok.encode(TEXT)
    assert shipped.tokenize(TEXT.encode(), add_bos=True) == ids  # the file says: no BOS
    assert shipped.detokenize(ids).decode() == TEXT


def test_shipped_model_logprobs_match_numpy(shipped):
    """llama.cpp's log-softmax at every position of a trained-form prompt and solution is
    our numpy model's over the whole vocabulary, to float32 rounding (measured: 2.1e-5 at
    most over 91 positions x 100 tokens)."""
    ids = load_tokenizer(bundled_model_path()).encode(TEXT)
    model = FalconH1Model.from_pretrained(bundled_model_path())
    assert _max_logprob_gap(shipped, model, ids) < 1e-4


def test_multipliers_fold_like_the_numpy_model(tmp_path):
    """A random checkpoint with every muP multiplier away from 1 and tied embeddings (so
    the output matrix differs from the embedding) computes the same log-probs in llama.cpp
    as in our numpy model: each multiplier is folded where the numpy model applies it."""
    pytest.importorskip("gguf")
    from deepconf.eval.gguf_export import export_gguf

    folder = write_tiny_model(
        tmp_path / "tiny",
        tie_word_embeddings=True,
        embedding_multiplier=1.3,
        lm_head_multiplier=0.7,
        mlp_multipliers=[0.8, 1.2],
        attention_in_multiplier=0.9,
        attention_out_multiplier=1.1,
        key_multiplier=0.6,
        ssm_in_multiplier=1.25,
        ssm_out_multiplier=0.8,
        ssm_multipliers=[0.5, 1.5, 0.7, 1.3, 0.9],
    )
    llm = _llama(export_gguf(folder, tmp_path / "tiny.gguf"))
    ids = load_tokenizer(folder).encode("Hello, wörld! 12+34=46\n" * 2)
    assert _max_logprob_gap(llm, FalconH1Model.from_pretrained(folder), ids) < 1e-4
