"""The wire side of `deepconf serve`: request models, the config they map to, and the
response, chunk and error objects sent back.

Requests are tolerant of OpenAI fields we do not use (a client's `user`, `metadata`,
`logit_bias`, ... are ignored) and strict where a silent ignore would mislead: the
`deepconf` object forbids unknown keys, and `n > 1`, tools and unsupported prompt shapes are
refused. Precedence for every setting: request -> server default (`deepconf serve` flags)
-> DeepConfConfig default. No I/O here; deepconf/serve/app.py does the serving.

    req = ChatCompletionRequest.model_validate(body)  # ValidationError on bad input
    config = req.to_config(defaults)                  # SettingsError naming the bad key
    best = best_trace(result, ranking_metric(config))
    chat_completion(rid, created, req.model, best, usage(result, 5), summary(result, best, 5))
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deepconf.backend import Prompt, token_usage
from deepconf.config import AnswerConfig, DeepConfConfig, StrictModel
from deepconf.errors import ConfigError
from deepconf.result import Progress, SolveResult
from deepconf.trace import TraceRecord
from deepconf.voting import AnswerKeys

# --- requests ----------------------------------------------------------------------------------

# Counts we pass to the upstream stay in int32, as servers parse them: a larger one is the
# client's mistake (400 here), not an upstream failure after the solve began.
MAX_COUNT = 2**31 - 1


class DeepConfOverrides(StrictModel):
    """The request's `deepconf` object (the openai client sends it with
    ``extra_body={"deepconf": {...}}``). Unknown keys are a 400 naming the key."""

    mode: Literal["online", "offline"] | None = None
    variant: Literal["low", "high"] | None = None
    keep_percent: float | None = None
    budget: int | None = None
    token_budget: int | None = None
    warmup: int | None = None
    tau: float | None = None
    concurrency: int | None = None
    offline_method: str | None = None
    window: int | None = None
    top_logprobs: int | None = None
    answer: AnswerConfig | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _OpenAIRequest(BaseModel):
    """Fields shared by both endpoints, in OpenAI reference order
    (https://platform.openai.com/docs/api-reference/chat/create)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    n: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    # --8<-- vendor extensions (vLLM, SGLang, llama.cpp) and ours
    top_k: int | None = Field(None, ge=1, le=MAX_COUNT)
    deepconf: DeepConfOverrides | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError(
                "n must be 1: DeepConf runs many traces itself and returns the voted one;"
                " set the trace count with deepconf.budget"
            )
        return n

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return stop

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling(self) -> dict[str, Any]:
        """The request's sampling fields that are set; max_tokens is per trace."""
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self._max_tokens(),
            "seed": self.seed,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def _max_tokens(self) -> int | None:
        return self.max_tokens

    def to_config(self, defaults: DeepConfConfig) -> DeepConfConfig:
        """The solve's config: `defaults` overridden by the `deepconf` object and by the
        request's sampling fields. Raises ConfigError whose message names the bad key."""
        data = defaults.model_dump()
        overrides = self.deepconf.model_dump(exclude_none=True) if self.deepconf else {}
        for key in ("window", "top_logprobs"):
            if key in overrides:
                data["confidence"][key] = overrides.pop(key)
        # A small per-request budget shrinks the server's default warm-up to fit, like the
        # CLI does for --budget; an explicit warmup is still checked against the budget.
        if "budget" in overrides and "warmup" not in overrides:
            data["warmup"] = min(data["warmup"], overrides["budget"])
        data.update(overrides)
        if overrides.get("mode") == "offline":
            # The server's policy and keep percent are its online defaults; a request that
            # asks for offline gets offline, not a refusal of settings it never gave.
            data["policy"] = data["keep_percent"] = None
        data["sampling"].update(self._sampling())
        try:
            return DeepConfConfig.model_validate(data)
        except ValidationError as exc:
            raise _settings_error(exc) from exc


class ChatCompletionRequest(_OpenAIRequest):
    """POST /v1/chat/completions. `messages` pass to the upstream unchanged (system
    messages included), so the model's own chat template applies."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_COUNT)
    tools: list[Any] | None = None

    @field_validator("messages")
    @classmethod
    def _roles(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, m in enumerate(messages):
            if not isinstance(m.get("role"), str):
                raise ValueError(f"messages[{i}] has no 'role'")
            if "content" not in m:
                raise ValueError(f"messages[{i}] has no 'content'")
        return messages

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> list[Any] | None:
        if tools:
            raise ValueError("tools are not supported: DeepConf votes on final answers")
        return tools

    def _max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def prompt(self) -> Prompt:
        return self.messages


class CompletionRequest(_OpenAIRequest):
    """POST /v1/completions: one raw prompt string (a list holding one string is accepted)."""

    prompt_: str | list[str] = Field(alias="prompt")
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt_")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("send one prompt per request (a string or a list of one string)")
        return prompt

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, echo: bool) -> bool:
        if echo:
            raise ValueError("echo is not supported")
        return echo

    @property
    def prompt(self) -> Prompt:
        return self.prompt_ if isinstance(self.prompt_, str) else self.prompt_[0]


class SettingsError(ConfigError):
    """The merged DeepConf settings are invalid; `param` names the request key to fix."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _settings_error(exc: ValidationError) -> SettingsError:
    """Name each problem by the request key that set it: deepconf.<key> for DeepConf
    settings (window and top_logprobs live in the config's `confidence`), the plain field
    name for sampling."""
    parts, params = [], []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc[:1] == ["sampling"]:
            param = ".".join(loc[1:])
        elif loc[:1] == ["confidence"]:
            param = "deepconf." + ".".join(loc[1:])
        else:
            param = ".".join(["deepconf", *loc])
        params.append(param)
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{param}: {msg}")
    return SettingsError("invalid DeepConf settings: " + "; ".join(parts), params[0])


def request_error(exc: ValidationError) -> tuple[str, str | None]:
    """(message, param) for a request that failed validation, the first problem first.
    An unknown key inside `deepconf` is named with the keys that are allowed."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden" and loc[:1] == ["deepconf"]:
        allowed = ", ".join(DeepConfOverrides.model_fields)
        return f"unknown DeepConf setting {param!r}: the deepconf object takes {allowed}", param
    if first.get("type") == "missing":
        return f"missing required parameter {param!r}", param
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"invalid value for {param!r}: {msg}", param


# --- the chosen trace and usage ----------------------------------------------------------------


def ranking_metric(config: DeepConfConfig) -> str:
    """The confidence a solve weighs traces by: online the lowest group (Algorithm 2);
    offline the metric of its method (majority: the mean)."""
    if config.mode == "online":
        return "lowest"
    method = config.offline_method.split("@")[0]
    return "mean" if method == "majority" else method


def best_trace(result: SolveResult, metric: str) -> TraceRecord | None:
    """The most confident trace whose answer is the winner (by answer equivalence), else
    the most confident trace that ran to its end, else the longest one. None: no trace."""

    def confidence(t: TraceRecord) -> float:
        value = t.metrics.get(metric) if t.metrics is not None else -math.inf
        return value if math.isfinite(value) else -math.inf

    finished = [t for t in result.traces if t.finished]
    if result.answer is not None:
        keys = AnswerKeys()
        winner = keys.key(result.answer)
        matching = [t for t in finished if t.answer is not None and keys.key(t.answer) == winner]
        if matching:
            return max(matching, key=confidence)
    if finished:
        return max(finished, key=confidence)
    return max(result.traces, key=lambda t: t.tokens, default=None)


def usage(result: SolveResult, prompt_tokens_per_trace: int | None) -> dict[str, int]:
    """True spend: completion_tokens counts every generated token of every trace (pruned
    and cancelled ones included); prompt_tokens is the upstream's per-trace prompt count
    times the traces launched (0 when the upstream never reported it)."""
    prompt = (prompt_tokens_per_trace or 0) * len(result.traces)
    return token_usage(prompt, result.tokens.total)


def summary(
    result: SolveResult, best: TraceRecord | None, prompt_tokens_per_trace: int | None
) -> dict[str, Any]:
    """The `deepconf` object of a response: the vote and one line per trace."""
    return {
        "answer": result.answer,
        "majority": result.majority_dict(),  # plain majority beside DeepConf, always
        "votes": [
            {"answer": v.answer, "count": v.count, "weight": finite(v.weight)} for v in result.votes
        ],
        "beta": finite(result.beta),
        "threshold": finite(result.threshold),
        "stop_reason": result.stop_reason,
        "fallback": result.fallback,
        "mode": result.mode,
        "variant": result.variant,
        # Which rule decided, as `deepconf solve --json` names it: online the policy in
        # words, offline the method (the other is null).
        "policy": dict(result.policy) if result.policy is not None else None,
        "offline_method": result.offline_method,
        "unjudged_answers": result.unjudged_answers,
        "tokens": result.tokens.to_dict(),
        "prompt_tokens_per_trace": prompt_tokens_per_trace,
        "wall_time": round(result.wall_time, 4),
        "chosen_trace": best.index if best is not None else None,
        "traces": [
            {
                "index": t.index,
                "phase": t.phase,
                "status": str(t.status),
                "tokens": t.tokens,
                "answer": t.answer,
                "lowest": finite(t.metrics.lowest) if t.metrics is not None else None,
            }
            for t in result.traces
        ],
    }


def finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity (Starlette refuses them, clients choke): send null."""
    return value if value is not None and math.isfinite(value) else None


def progress_payload(p: Progress) -> dict[str, Any]:
    """The `deepconf` object of a progress chunk."""
    return {
        "event": "progress",
        "phase": p.phase,
        "launched": p.launched,
        "budget": p.budget,
        "completed": p.completed + p.truncated,
        "pruned": p.pruned,
        "failed": p.failed,
        "in_flight": p.in_flight,
        "leader": p.leader,
        "beta": finite(p.beta),
        "threshold": finite(p.threshold),
        "tokens": p.tokens,
    }


# --- responses ---------------------------------------------------------------------------------


def chat_completion(
    rid: str,
    created: int,
    model: str,
    best: TraceRecord | None,
    usage_: dict[str, int],
    deepconf: dict[str, Any],
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": best.text if best else ""}
    if best is not None and best.reasoning:
        message["reasoning_content"] = best.reasoning
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(best)}
        ],
        "usage": usage_,
        "deepconf": deepconf,
    }


def completion(
    rid: str,
    created: int,
    model: str,
    best: TraceRecord | None,
    usage_: dict[str, int],
    deepconf: dict[str, Any],
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": completion_text(best),
                "logprobs": None,
                "finish_reason": finish_reason(best),
            }
        ],
        "usage": usage_,
        "deepconf": deepconf,
    }


def completion_text(best: TraceRecord | None) -> str:
    """The completions API has no reasoning field: a trace's reasoning text (when the
    upstream split it off) comes first, as the model wrote it."""
    return (best.reasoning + best.text) if best is not None else ""


def finish_reason(best: TraceRecord | None) -> str:
    """The chosen trace's finish reason ("stop" when it gave none)."""
    return (best.finish_reason if best is not None else None) or "stop"


def chunk(
    chat: bool,
    rid: str,
    created: int,
    model: str,
    *,
    delta: dict[str, Any] | None = None,
    finish: str | None = None,
    deepconf: dict[str, Any] | None = None,
    usage_: dict[str, int] | None = None,
    empty_choices: bool = False,
) -> dict[str, Any]:
    """One streamed chunk. Chat: `delta` is the message delta; completions: `delta["text"]`
    is the text. `empty_choices` gives the usage-only last chunk OpenAI sends."""
    head = {"id": rid, "created": created, "model": model}
    if empty_choices:
        choices: list[dict[str, Any]] = []
    elif chat:
        choices = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    else:
        text = (delta or {}).get("text", "")
        choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
    out: dict[str, Any] = {
        **head,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "choices": choices,
    }
    if usage_ is not None:
        out["usage"] = usage_
    if deepconf is not None:
        out["deepconf"] = deepconf
    return out


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape, which the openai client turns into its typed exceptions."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
