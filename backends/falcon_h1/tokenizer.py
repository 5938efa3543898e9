"""The checkpoint's tokenizer (``tokenizer.json``) and chat template, behind one small class.

Not here: any vocabulary of our own. The BPE, pre-tokenizer and post-processor come from
``tokenizer.json`` through HF ``tokenizers``; the chat template is the jinja ``chat_template``
of ``tokenizer_config.json`` (or a ``chat_template.jinja`` file), rendered in a sandbox with
``add_generation_prompt=True``. End-of-sequence ids are gathered from config.json,
generation_config.json and tokenizer_config.json's ``eos_token`` (any may list several).

    tok = load_tokenizer("checkpoint/")
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "2+2?"}]))
    text = tok.decode(ids)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from deepconf.errors import ModelLoadError

from .config import read_json

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"


class Tokenizer:
    """encode/decode plus the chat template and the stop ids of one checkpoint."""

    def __init__(
        self,
        tokenizer: HFTokenizer,
        *,
        eos_token_ids: Sequence[int] = (),
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
    ) -> None:
        self._tok = tokenizer
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})
        self._template: jinja2.Template | None = None
        if chat_template is not None:
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
            )
            env.globals["raise_exception"] = _raise_template_error
            try:
                self._template = env.from_string(chat_template)
            except jinja2.TemplateError as exc:
                raise ModelLoadError(
                    f"{TOKENIZER_CONFIG_FILE}: field 'chat_template' is not valid jinja ({exc})"
                ) from exc

    @property
    def eos_token_id(self) -> int | None:
        """The main end-of-sequence id (``eos_token_ids`` holds every stop id)."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Special tokens written in the text (e.g. from the chat
        template) map to their ids; the post-processor's BOS is added only when asked."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> str | None:
        """The prompt text for ``messages``; None when the checkpoint has no chat template."""
        if self._template is None:
            return None
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except jinja2.TemplateError as exc:
            raise ModelLoadError(f"chat_template: rendering failed ({exc})") from exc


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint folder: tokenizer.json, plus the optional config files."""
    folder = Path(path)
    file = folder / TOKENIZER_FILE
    if not file.is_file():
        raise ModelLoadError(f"{TOKENIZER_FILE}: file not found in {folder}")
    try:
        hf = HFTokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ModelLoadError(f"{TOKENIZER_FILE}: cannot be parsed ({exc})") from exc

    tok_cfg = (
        read_json(folder / TOKENIZER_CONFIG_FILE)
        if (folder / TOKENIZER_CONFIG_FILE).is_file()
        else {}
    )
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None and (folder / TEMPLATE_FILE).is_file():
        template = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    if template is not None and not isinstance(template, str):
        raise ModelLoadError(f"{TOKENIZER_CONFIG_FILE}: field 'chat_template' must be a string")

    special = {
        key: text
        for key in ("bos_token", "eos_token", "pad_token", "unk_token")
        if (text := _token_text(tok_cfg.get(key))) is not None
    }
    eos: list[int] = []
    for name in ("config.json", "generation_config.json"):
        if (folder / name).is_file():
            eos += _ids(read_json(folder / name).get("eos_token_id"))
    if "eos_token" in special and (eos_id := hf.token_to_id(special["eos_token"])) is not None:
        eos.append(eos_id)
    return Tokenizer(hf, eos_token_ids=eos, chat_template=template, special_tokens=special)
