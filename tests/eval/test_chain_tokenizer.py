"""The bundled model's character tokenizer and chat template."""

from __future__ import annotations

import json

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from deepconf.eval.chain_tokenizer import (
    CHAT_TEMPLATE,
    build_tokenizer,
    save_tokenizer,
    special_ids,
    tokenizer_config,
)
from deepconf.eval.task_chain import (
    Difficulty,
    chat_messages,
    parse_prompt,
    problems,
    prompt_text,
)


def _render(messages, add_generation_prompt=True):
    # The environment Hugging Face uses for chat templates.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt
    )


def test_round_trips_task_text_one_token_per_character():
    """Prompt + solution text encodes to one id per character and decodes back exactly."""
    tok = build_tokenizer()
    for p in problems(Difficulty(5, 3), 5):
        text = prompt_text(p) + p.solution()
        ids = tok.encode(text).ids
        assert len(ids) == len(text)
        assert special_ids()["pad_token_id"] not in ids  # no unknown or special tokens
        assert tok.decode(ids) == text


def test_vocabulary_exceeds_top_k_and_specials_are_distinct():
    """The vocabulary comfortably exceeds the 20 top logprobs; pad/bos/eos are distinct."""
    tok = build_tokenizer()
    assert tok.get_vocab_size() >= 32
    ids = special_ids()
    assert len(set(ids.values())) == 3
    assert tok.decode([ids["eos_token_id"]], skip_special_tokens=False) == "<eos>"
    assert tok.encode("<eos>").ids == [ids["eos_token_id"]]


def test_chat_template_renders_exactly_the_training_prompt():
    """A user message holding the expression renders to the completion prompt, with or
    without a system message; without the generation prompt it stops before 'Solution: '."""
    p = problems(Difficulty(4, 2), 1)[0]
    assert _render(chat_messages(p)) == prompt_text(p)
    with_system = [{"role": "system", "content": "be brief"}, *chat_messages(p)]
    assert _render(with_system) == prompt_text(p)
    assert _render(chat_messages(p), add_generation_prompt=False) == f"Problem: {p.expression}\n"


def test_saved_files_load_back(tmp_path):
    """save_tokenizer writes a tokenizer.json that loads and a config naming eos and the
    template."""
    save_tokenizer(tmp_path)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.decode(tok.encode("12+3=15. \\boxed{15}").ids) == "12+3=15. \\boxed{15}"
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg == tokenizer_config()
    assert cfg["eos_token"] == "<eos>" and cfg["chat_template"] == CHAT_TEMPLATE


NATURAL = [
    "{e}",
    "Compute {e}.",
    "compute {e}",
    "What is {s}?",
    "Calculate {s} =",
    "  Evaluate {e}.  ",
    "Problem: {e}",
]


@pytest.mark.parametrize("form", NATURAL)
def test_natural_prompts_render_the_training_prompt_as_parse_prompt_reads_them(form):
    """ "Compute 37+58-19." and the other natural forms render to the exact prompt the model
    was trained on, and task_chain.parse_prompt (the in-family check) reads the same
    expression from them: both doors agree on what the model is asked."""
    for p in problems(Difficulty(4, 3), 4) + problems(Difficulty(2, 1), 2):
        spaced = p.expression.replace("+", " + ").replace("-", " - ")
        content = form.format(e=p.expression, s=spaced)
        assert _render([{"role": "user", "content": content}]) == prompt_text(p)
        parsed = parse_prompt(content)
        assert parsed is not None and parsed.expression == p.expression


def test_other_messages_pass_through_unchanged():
    """A message that is not an expression once the lead words go stays as written."""
    for content in ("Tell me a joke.", "Compute the area of a circle.", "What is 2*3?"):
        assert _render([{"role": "user", "content": content}]) == f"Problem: {content}\nSolution: "


@pytest.mark.parametrize("renderer", ["transformers", "llama_cpp"])
def test_other_runtimes_render_the_natural_prompt_alike(renderer):
    """transformers and llama-cpp-python (which serve these weights too) render "Compute
    ..." with the shipped template exactly as our engine does."""
    content = [{"role": "user", "content": "Compute 216+973+738-425-756-352."}]
    want = "Problem: 216+973+738-425-756-352\nSolution: "
    if renderer == "transformers":
        transformers = pytest.importorskip("transformers")
        tok = transformers.PreTrainedTokenizerFast(
            tokenizer_object=build_tokenizer(), chat_template=CHAT_TEMPLATE
        )
        got = tok.apply_chat_template(content, tokenize=False, add_generation_prompt=True)
    else:
        chat_format = pytest.importorskip("llama_cpp.llama_chat_format")
        formatter = chat_format.Jinja2ChatFormatter(CHAT_TEMPLATE, "<eos>", "<bos>")
        got = formatter(messages=content).prompt
    assert got == want
