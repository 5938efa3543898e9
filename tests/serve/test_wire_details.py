"""Details of serve's wire objects a client reads field by field: the message and param of a
settings error (each problem named by the request key that set it), and the progress chunk's
`deepconf` object. Written against mutants of deepconf/serve/wire.py that the end-to-end
tests let live (`.ci/mutation deepconf/serve/wire.py`)."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from deepconf.config import DeepConfConfig
from deepconf.result import Progress
from deepconf.serve.wire import (
    ChatCompletionRequest,
    DeepConfOverrides,
    _settings_error,
    chat_completion,
    chunk,
    completion,
    progress_payload,
    request_error,
)
from deepconf.trace import TraceRecord, TraceStatus


def test_a_settings_error_names_every_problem_by_its_request_key() -> None:
    """DeepConf settings are deepconf.<key> (window lives in the config's confidence, but the
    request sets it as deepconf.window), sampling ones the plain field (with its index for a
    list item), pydantic's "Value error, " dropped; the first problem is the param."""
    bad = {
        "tau": 2.0,
        "confidence": {"window": 0},
        "sampling": {"temperature": -1, "stop": ["a", 3]},
        "answer": {"patterns": ["("]},
    }
    with pytest.raises(ValidationError) as raised:
        DeepConfConfig.model_validate(bad)
    error = _settings_error(raised.value)
    head = "invalid DeepConf settings: "
    assert str(error).startswith(head)
    parts = str(error).removeprefix(head).split("; ")
    params = ["deepconf.tau", "deepconf.window", "temperature", "stop.1"]
    # pydantic's own wording, as pydantic words it (not pinned here)
    said = [e["msg"] for e in raised.value.errors()]
    assert parts[:4] == [f"{param}: {msg}" for param, msg in zip(params, said, strict=False)]
    assert parts[4].startswith("deepconf.answer.patterns: answer pattern '(' is not a valid regex")
    assert len(parts) == 5
    assert error.param == "deepconf.tau"


def progress(**kw: object) -> Progress:
    fields: dict[str, object] = {
        "phase": "online",
        "in_flight": 3,
        "completed": 5,
        "pruned": 2,
        "failed": 1,
        "cancelled": 4,
        "truncated": 6,
        "threshold": 12.5,
        "leader": "42",
        "beta": 0.75,
        "tokens": 1234,
        "launched": 21,
        "budget": 64,
    }
    return Progress(**(fields | kw))  # type: ignore[arg-type]


def test_a_progress_chunk_carries_every_count_by_name() -> None:
    """Completed counts the traces cut at max_tokens too (they ran to their end and vote);
    cancelled traces are not reported (the solve stopped them, they say nothing)."""
    assert progress_payload(progress()) == {
        "event": "progress",
        "phase": "online",
        "launched": 21,
        "budget": 64,
        "completed": 11,
        "pruned": 2,
        "failed": 1,
        "in_flight": 3,
        "leader": "42",
        "beta": 0.75,
        "threshold": 12.5,
        "tokens": 1234,
    }


def test_a_progress_chunk_sends_null_for_a_value_json_cannot_hold() -> None:
    payload = progress_payload(progress(beta=math.nan, threshold=None, leader=None))
    assert (payload["beta"], payload["threshold"], payload["leader"]) == (None, None, None)
    assert progress_payload(progress(threshold=-math.inf))["threshold"] is None


USAGE = {"prompt_tokens": 1, "completion_tokens": 9, "total_tokens": 10}


def chosen(text: str) -> TraceRecord:
    """A chosen trace whose reasoning the upstream split off, cut at max_tokens."""
    return TraceRecord(
        3, "offline", TraceStatus.COMPLETED, 9, text=text, reasoning="Think.",
        finish_reason="length",
    )  # fmt: skip


def test_a_completions_response_has_the_openai_shape() -> None:
    """The legacy completions API: a text_completion whose one choice carries the chosen
    trace's reasoning then its text (the API has no reasoning field) and its finish reason."""
    best = chosen(" so 7.")
    assert completion("cmpl-1", 1700000000, "m", best, USAGE, {"answer": "7"}) == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "text": "Think. so 7.", "logprobs": None,
                     "finish_reason": "length"}],
        "usage": USAGE,
        "deepconf": {"answer": "7"},
    }  # fmt: skip
    empty = completion("cmpl-2", 1, "m", None, USAGE, {})["choices"]
    assert empty == [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]


def refusal(body: dict) -> tuple[str, str | None]:
    body = {"model": "m", "messages": [{"role": "user", "content": "q"}]} | body
    with pytest.raises(ValidationError) as raised:
        ChatCompletionRequest.model_validate(body)
    return request_error(raised.value)


def test_a_refused_request_names_its_key_and_what_to_do() -> None:
    """A missing field is named as missing; an unknown deepconf key lists the keys there
    are; our own validators' messages come without pydantic's "Value error, "."""
    with pytest.raises(ValidationError) as raised:
        ChatCompletionRequest.model_validate({"model": "m"})
    assert request_error(raised.value) == ("missing required parameter 'messages'", "messages")
    allowed = ", ".join(DeepConfOverrides.model_fields)
    assert allowed.startswith("mode, variant, keep_percent, budget")
    assert refusal({"deepconf": {"windw": 3}}) == (
        f"unknown DeepConf setting 'deepconf.windw': the deepconf object takes {allowed}",
        "deepconf.windw",
    )
    assert refusal({"stop": ["a"] * 5}) == (
        "invalid value for 'stop': at most 4 stop sequences are allowed",
        "stop",
    )


def test_stream_chunks_have_the_openai_shape() -> None:
    """Chat deltas, completions text, and the usage-only last chunk with no choices."""
    assert chunk(True, "r", 1, "m", delta={"content": "x"}, finish="stop") == {
        "id": "r", "created": 1, "model": "m", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None,
                     "finish_reason": "stop"}],
    }  # fmt: skip
    assert chunk(False, "r", 1, "m", delta={"text": "x"}) == {
        "id": "r", "created": 1, "model": "m", "object": "text_completion",
        "choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": None}],
    }  # fmt: skip
    assert chunk(True, "r", 1, "m", usage_={"total_tokens": 3}, empty_choices=True,
                 deepconf={"answer": "7"}) == {
        "id": "r", "created": 1, "model": "m", "object": "chat.completion.chunk",
        "choices": [], "usage": {"total_tokens": 3}, "deepconf": {"answer": "7"},
    }  # fmt: skip


def test_a_chat_completion_has_the_openai_shape() -> None:
    """The chosen trace's text as the assistant's content, its reasoning (when the upstream
    split it off) as reasoning_content, and its finish reason; without a trace, empty."""
    best = chosen("so 7.")
    assert chat_completion("chatcmpl-1", 1700000000, "m", best, USAGE, {"answer": "7"}) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "length",
                     "message": {"role": "assistant", "content": "so 7.",
                                 "reasoning_content": "Think."}}],
        "usage": USAGE,
        "deepconf": {"answer": "7"},
    }  # fmt: skip
    plain = TraceRecord(4, "offline", TraceStatus.COMPLETED, 2, text="7")
    choice = chat_completion("c", 1, "m", plain, USAGE, {})["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "7"}
    assert choice["finish_reason"] == "stop"
    empty = chat_completion("c", 1, "m", None, USAGE, {})["choices"][0]["message"]
    assert empty == {"role": "assistant", "content": ""}
