"""The configuration tree: strict pydantic models, one field per CLI flag.

User config is strict (`extra="forbid"`, validated ranges, messages that say what to
change); server payloads are parsed tolerantly elsewhere. Nothing here does I/O.

    config = DeepConfConfig(mode="online", variant="low", budget=64,
                            confidence=ConfidenceConfig(window=64))
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Mode = Literal["online", "offline"]
Variant = Literal["low", "high"]
Metric = Literal["mean", "tail", "bottom", "lowest"]

# DeepConf-low keeps the top 10% of warm-up traces, DeepConf-high the top 90%. We expose the
# keep fraction by name because a raw "percentile" flips meaning between the paper's files;
# `keep_percent` (--keep-percent) sets it directly, still as a percent kept.
KEEP_PERCENT: dict[str, float] = {"low": 10.0, "high": 90.0}

METRICS: tuple[str, ...] = ("mean", "tail", "bottom", "lowest")
# Offline methods: "majority", "<metric>" (weighted, no filter), "<metric>@<eta>" (keep the
# top eta% by the metric, then vote weighted by it).
METHOD_PATTERN = re.compile(rf"^(?:majority|(?P<metric>{'|'.join(METRICS)})(?:@(?P<eta>10|90))?)$")

# Online policies by name (deepconf.policies builds them; its docstring has the table).
POLICY_NAMES: tuple[str, ...] = (
    "deepconf-low",
    "deepconf-high",
    "deepconf-adaptive",
    "majority",
    "tau",
    "esc",
    "beta",
    "dirichlet",
    "beta-z",
    "conf-beta",
    "cisc",
    "self-certainty",
)
# The policies whose filter keeps the top eta% of the warm-up: --keep-percent sets their eta
# (tests/policies/test_keep_percent.py holds this list to the policies deepconf.policies builds).
KEEP_POLICIES: tuple[str, ...] = (
    "deepconf-low",
    "deepconf-high",
    "deepconf-adaptive",
    "self-certainty",
)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ConfidenceConfig(StrictModel):
    """How token and group confidence are computed. Thresholds only transfer between runs
    with the same k, window and logprob mode, so trace files record all of them."""

    top_logprobs: int = Field(
        20, ge=1, le=100, description="k: top logprobs per token (paper: 20)."
    )
    window: int = Field(2048, ge=1, description="Group window in tokens (paper: 2048).")
    tail: int = Field(2048, ge=1, description="Tokens in the tail-confidence metric.")
    bottom_fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="Fraction of lowest groups in the bottom metric."
    )


class SamplingConfig(StrictModel):
    """Per-trace sampling sent to the backend (Falcon-H1R's recommended defaults)."""

    temperature: float = Field(0.6, ge=0.0, le=5.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=1, description="Top-k sampling (servers that support it).")
    max_tokens: int = Field(8192, ge=1, description="Maximum tokens per trace.")
    # >= 0: numpy's generators (the bundled engine) refuse negative seeds; <= 2^63 - 1: the
    # int64 servers take, with room for seed + i over any budget below 2^63.
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Trace i gets seed + i; none: unseeded."
    )
    system: str | None = Field(None, description="System prompt for chat APIs.")
    stop: list[str] = Field(default_factory=list, description="Stop strings.")


class AnswerConfig(StrictModel):
    """How a trace's final answer is found in its text."""

    patterns: list[str] = Field(
        default_factory=list,
        description="Extra regexes tried when no \\boxed{} is found; group 1 is the answer.",
    )
    fallbacks: bool = Field(True, description="Also accept 'Answer: X' / 'answer is X'.")
    choices: str | None = Field(
        None, description="Multiple-choice letters (e.g. 'ABCD'): answers normalise to a letter."
    )

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"answer pattern {p!r} is not a valid regex: {exc}") from exc
        return patterns


class DeepConfConfig(StrictModel):
    """Everything one solve needs besides the backend."""

    mode: Mode = Field(
        "online",
        description="online: Algorithm 2 with pruning; offline: N traces then filtered votes.",
    )
    variant: Variant = Field(
        "low", description="low keeps the top 10% of warm-up traces, high the top 90%."
    )
    budget: int = Field(64, ge=1, description="Trace budget B, warm-up included (offline: N).")
    token_budget: int | None = Field(
        None, ge=1, description="Stop once this many tokens are generated in all."
    )
    warmup: int = Field(
        16, ge=1, description="Warm-up traces run to completion to set the threshold."
    )
    tau: float = Field(
        0.95, gt=0.0, le=1.0, description="Consensus beta at which online generation stops."
    )
    concurrency: int = Field(
        16, ge=1, description="Traces in flight at once (1 reproduces the paper's sequential run)."
    )
    policy: str | None = Field(
        None,
        description="Online policy by name (deepconf.policies); none: deepconf-<variant>."
        " --warmup and --tau apply to the policies that have them.",
    )
    keep_percent: float | None = Field(
        None,
        description="eta: the percent of warm-up traces the online filter keeps (0 < eta <= 100;"
        " DeepConf-low is 10, -high 90); none: the variant's, or the policy's own. Online"
        " only: offline methods name theirs (tail@10).",
    )
    offline_method: str = Field(
        "tail@10",
        description="Offline answer: majority, <metric> or <metric>@<eta>"
        " (metric: mean|tail|bottom|lowest, eta: 10|90).",
    )
    confidence: ConfidenceConfig = Field(default_factory=ConfidenceConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)

    @field_validator("offline_method")
    @classmethod
    def _method(cls, method: str) -> str:
        if not METHOD_PATTERN.match(method):
            raise ValueError(
                f"unknown offline method {method!r}: use majority, mean, tail, bottom, lowest,"
                " or one of those with @10 or @90 (e.g. tail@10)"
            )
        return method

    @field_validator("policy")
    @classmethod
    def _policy(cls, policy: str | None) -> str | None:
        if policy is not None and policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICY_NAMES)}")
        return policy

    @field_validator("keep_percent")
    @classmethod
    def _keep_percent(cls, eta: float | None) -> float | None:
        if eta is not None and not 0 < eta <= 100:  # NaN fails the comparison too
            raise ValueError(
                f"--keep-percent must be above 0 and at most 100, got {eta}: it is the percent"
                " of warm-up traces kept (DeepConf-low keeps 10, -high 90); leave it unset to"
                " use --variant's"
            )
        return eta

    @model_validator(mode="after")
    def _keep_percent_needs_a_filter(self) -> DeepConfConfig:
        if self.keep_percent is not None and self.policy not in (None, *KEEP_POLICIES):
            raise ValueError(
                f"--keep-percent sets the warm-up filter, and policy {self.policy!r} has none"
                f" (every trace with an answer votes): drop --keep-percent, or choose one of"
                f" {', '.join(KEEP_POLICIES)}"
            )
        return self

    @model_validator(mode="after")
    def _online_choices_need_online(self) -> DeepConfConfig:
        # Offline runs every trace and answers by --offline-method: a policy or keep percent
        # given with it would change nothing, and a user who set one expects it to.
        if self.mode == "offline" and self.policy is not None:
            raise ValueError(
                f"policy {self.policy!r} decides online (who votes, when to stop); offline"
                " runs every trace and answers with --offline-method (majority, tail@10, ...):"
                " drop --policy, or use --mode online"
            )
        if self.mode == "offline" and self.keep_percent is not None:
            raise ValueError(
                "--keep-percent sets the online filter; offline, the keep percent is part of"
                " --offline-method (e.g. tail@10 or tail@90)"
            )
        return self

    @model_validator(mode="after")
    def _warmup_within_budget(self) -> DeepConfConfig:
        if self.mode == "online" and self.warmup > self.budget:
            raise ValueError(
                f"warmup ({self.warmup}) exceeds the trace budget ({self.budget}): the budget"
                " counts warm-up traces, so raise --budget or lower --warmup"
            )
        return self


def settings_message(exc: ValueError) -> str:
    """One line naming each invalid setting by its dotted path, for a ConfigError:
    "invalid settings: confidence.window: Input should be greater than or equal to 2; ..."."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):  # a plain ValueError, not pydantic's
        return str(exc)
    parts = []
    for err in errors():
        # pydantic prefixes a validator's own message with "Value error, "; a check across
        # fields (a model validator) has no location, and its message names the flags.
        msg = str(err.get("msg")).removeprefix("Value error, ")
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {msg}" if where else msg)
    return "invalid settings: " + "; ".join(parts)
