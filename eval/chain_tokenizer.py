"""The bundled model's character-level tokenizer and chat template.

One token per printable ASCII character plus newline, and four special tokens. Built with
the `tokenizers` library so the shipped tokenizer.json loads anywhere a Hugging Face
tokenizer does (transformers, our engine, llama.cpp-style loaders). The vocabulary (~100)
comfortably exceeds the 20 top logprobs DeepConf reads per token.

No BOS is added on encode: the model is trained on the bare prompt text, so a completion
request's prompt and a chat request's rendered template encode to the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from deepconf.eval.task_chain import PROMPT_LEADS

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARS = ["\n", *(chr(c) for c in range(32, 127))]

# Renders [{"role": "user", "content": "37+58-19"}] into exactly the training prompt.
# System messages are dropped (the model knows none); only the last user turn counts.
# The natural ways to pose the same problem ("Compute 37+58-19.", "What is 37 + 58 - 19?")
# become the bare expression the model was trained on, so every door to the model (our
# engine, serve-model, transformers, llama.cpp) reads them alike; a message that is not an
# expression once those words, spaces, newlines, a trailing "Solution:" (the training prompt
# itself) and one trailing ".", "?" or "=" are gone passes
# through unchanged. task_chain.parse_prompt accepts the same forms (a test holds them equal).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(content='', expr='', ok=true) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.content = message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.expr = ns.content | trim -%}"
    "{%- for lead in " + repr([w for lead in PROMPT_LEADS for w in (lead, lead.lower())]) + " -%}"
    "{%- if ns.expr.startswith(lead) -%}{%- set ns.expr = ns.expr[lead | length:] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.expr = ns.expr | replace(' ', '') | replace('\\n', '') -%}"
    "{%- if ns.expr.endswith('Solution:') -%}{%- set ns.expr = ns.expr[:-9] -%}{%- endif -%}"
    "{%- if ns.expr[-1:] in ['.', '?', '='] -%}{%- set ns.expr = ns.expr[:-1] -%}{%- endif -%}"
    "{%- for ch in ns.expr -%}{%- if ch not in '0123456789+-' -%}{%- set ns.ok = false -%}"
    "{%- endif -%}{%- endfor -%}"
    "Problem: {{ ns.expr if ns.ok and ns.expr else ns.content | trim }}{{ '\\n' }}"
    "{%- if add_generation_prompt %}Solution: {% endif -%}"
)


def vocabulary() -> dict[str, int]:
    return {tok: i for i, tok in enumerate([*SPECIALS, *CHARS])}


def build_tokenizer() -> Tokenizer:
    vocab = vocabulary()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token; [\s\S] also matches the newline.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    return tok


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1024,
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(folder: str | Path) -> None:
    """Write tokenizer.json and tokenizer_config.json into a model folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n")


def special_ids() -> dict[str, int]:
    v = vocabulary()
    return {"pad_token_id": v[PAD], "bos_token_id": v[BOS], "eos_token_id": v[EOS]}
