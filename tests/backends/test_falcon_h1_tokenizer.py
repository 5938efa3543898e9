"""The tokenizer wrapper: tokenizer.json, the jinja chat template, and every eos id."""

import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from deepconf.backends.falcon_h1 import load_tokenizer
from deepconf.errors import ModelLoadError

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer(folder, template=CHATML):
    """A word-level tokenizer with ChatML special tokens, plus the config files around it."""
    words = ["<pad>", "<bos>", "<|im_end|>", "<|im_start|>", "user", "assistant", "what", "is", "2"]
    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["<pad>", "<bos>", "<|im_end|>", "<|im_start|>"])
    tok.save(str(folder / "tokenizer.json"))
    tok_cfg = {"bos_token": "<bos>", "eos_token": {"content": "<|im_end|>"}}
    if template is not None:
        tok_cfg["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 1}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 1]}))


def test_encode_decode_and_eos_ids(tmp_path):
    """Text round-trips, and eos ids come from config, generation_config and eos_token."""
    write_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    ids = tok.encode("what is 2")
    assert ids == [6, 7, 8] and tok.decode(ids) == "what is 2"
    assert tok.eos_token_ids == (1, 2) and tok.eos_token_id == 1


def test_chat_template_renders_with_generation_prompt(tmp_path):
    """The checkpoint's template renders messages plus the assistant prompt; its special
    tokens encode to their own ids."""
    write_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path)
    text = tok.apply_chat_template([{"role": "user", "content": "what is 2"}])
    assert text == "<bos><|im_start|>user\nwhat is 2<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode(text)[:3] == [1, 3, 4]


def test_no_template_gives_none(tmp_path):
    """Without a chat template apply_chat_template returns None (the caller uses raw text)."""
    write_tokenizer(tmp_path, template=None)
    assert load_tokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "x"}]) is None


def test_template_cannot_reach_python_internals(tmp_path):
    """The sandbox refuses attribute tricks in a hostile template."""
    write_tokenizer(tmp_path, template="{{ messages.__class__.__mro__ }}")
    tok = load_tokenizer(tmp_path)
    with pytest.raises(ModelLoadError, match="chat_template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_broken_files_raise_model_load_error(tmp_path):
    """A missing or unparsable tokenizer.json, or invalid jinja, names the file."""
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json: file not found"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json: cannot be parsed"):
        load_tokenizer(tmp_path)
    write_tokenizer(tmp_path, template="{% for %}")
    with pytest.raises(ModelLoadError, match="chat_template"):
        load_tokenizer(tmp_path)
