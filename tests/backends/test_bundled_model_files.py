"""The shipped model folder: every file present, a Falcon-H1 hybrid config, a tokenizer that
round-trips task text, a chat template that renders the training prompt, defaults that match
the contract, and a size that fits in the package."""

from __future__ import annotations

import json
from pathlib import Path

from jinja2.sandbox import ImmutableSandboxedEnvironment
from safetensors import safe_open
from tokenizers import Tokenizer

import deepconf.backends
from deepconf.eval.task_chain import TASK_ID, Difficulty, chat_messages, problems, prompt_text

FOLDER = Path(deepconf.backends.__file__).parent / "bundled_model"
FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "MODEL_CARD.md",
    "deepconf.json",
)


def _json(name: str) -> dict:
    return json.loads((FOLDER / name).read_text())


def test_all_files_are_shipped_and_small():
    """Every file the bundled backend needs is present and the folder is under 20 MB."""
    for name in FILES:
        assert (FOLDER / name).is_file(), f"missing {name}"
    total = sum(p.stat().st_size for p in FOLDER.iterdir() if p.is_file())
    assert total < 20 * 2**20, f"bundled model is {total / 2**20:.1f} MB"


def test_config_is_a_falcon_h1_hybrid_with_consistent_shapes():
    """config.json is a Falcon-H1 config whose every layer holds attention and Mamba2 in the
    checkpoint, with the tensor shapes the config implies."""
    cfg = _json("config.json")
    assert cfg["model_type"] == "falcon_h1"
    assert cfg["architectures"] == ["FalconH1ForCausalLM"]
    d, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    d_ssm, heads = cfg["mamba_d_ssm"], cfg["mamba_n_heads"]
    assert d_ssm % heads == 0
    conv_dim = d_ssm + 2 * cfg["mamba_n_groups"] * cfg["mamba_d_state"]
    with safe_open(str(FOLDER / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        shape = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    assert shape["model.embed_tokens.weight"] == (cfg["vocab_size"], d)
    for i in range(L):
        pre = f"model.layers.{i}."
        assert shape[pre + "self_attn.q_proj.weight"] == (
            cfg["num_attention_heads"] * cfg["head_dim"],
            d,
        )
        assert shape[pre + "mamba.in_proj.weight"] == (d_ssm + conv_dim + heads, d)
        assert shape[pre + "mamba.conv1d.weight"] == (conv_dim, 1, cfg["mamba_d_conv"])
        assert shape[pre + "mamba.A_log"] == (heads,)
        assert (pre + "mamba.norm.weight" in keys) == cfg["mamba_rms_norm"]
    assert not any(k.startswith(f"model.layers.{L}.") for k in keys)


def test_tokenizer_round_trips_task_text_and_knows_eos():
    """tokenizer.json encodes task text one id per character, decodes it back exactly, has
    more tokens than the 20 top logprobs, and its eos id is the config's."""
    tok = Tokenizer.from_file(str(FOLDER / "tokenizer.json"))
    assert tok.get_vocab_size() >= 32
    assert tok.get_vocab_size() <= _json("config.json")["vocab_size"]
    for p in problems(Difficulty(8, 3), 4):
        text = prompt_text(p) + p.solution()
        ids = tok.encode(text).ids
        assert len(ids) == len(text) and tok.decode(ids) == text
    eos = _json("tokenizer_config.json")["eos_token"]
    assert tok.token_to_id(eos) == _json("config.json")["eos_token_id"]


def test_chat_template_renders_the_training_prompt():
    """The shipped chat template turns a user message with the expression into exactly the
    completion prompt the model was trained on."""
    template = _json("tokenizer_config.json")["chat_template"]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    for p in problems(Difficulty(6, 2), 3):
        text = env.from_string(template).render(
            messages=chat_messages(p), add_generation_prompt=True
        )
        assert text == prompt_text(p)


def test_deepconf_defaults_follow_the_contract():
    """deepconf.json names the task and holds the sampling defaults the engine reads."""
    dc = _json("deepconf.json")
    assert dc["task"] == TASK_ID
    assert dc["top_logprobs"] == 20
    assert isinstance(dc["window"], int) and 4 <= dc["window"] <= 256
    assert 0.0 < dc["temperature"] <= 2.0
    assert 0.0 < dc["top_p"] <= 1.0
    assert isinstance(dc["max_tokens"], int) and dc["max_tokens"] >= 64
    Difficulty.parse(dc["difficulty"])


def test_model_card_records_the_measured_defaults():
    """The model card states the window, temperature and difficulty deepconf.json ships."""
    card = (FOLDER / "MODEL_CARD.md").read_text()
    dc = _json("deepconf.json")
    assert f"window {dc['window']}" in card
    assert f"temperature {dc['temperature']}" in card
    assert dc["difficulty"] in card
