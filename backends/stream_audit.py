"""What one streamed trace must carry to count: the integrity rules of the HTTP backend. No I/O.

A trace counts only what it really received (DESIGN.md, "Trust rules"). Servers break that
quietly: llama-cpp-python ends a request with `data: [DONE]` and no finish reason whenever
another request waits; proxies close streams cleanly mid-trace; a server may send text with
`"logprobs": null`, or a usage total that disagrees with the tokens it scored. Each of these
used to count as a completed trace. `StreamAudit` is fed every decoded read of one stream and
raises `StreamError` the moment the stream breaks a rule, with a message naming the cause:

- every piece of text (content or reasoning) arrives with logprobs, and every token position
  carries at least one logprob;
- when the server's k has not been confirmed by a probe, the typical position of the first
  tokens carries k entries (else `CapabilityError`, which no retry can fix);
- the stream ends with a finish reason ([DONE] alone, or a close, is a cut);
- where the server reports usage, its completion tokens equal the tokens scored, give or take
  the end token (which llama.cpp sends without logprobs).

    audit = StreamAudit(url, k=20, verify_k=False)
    for decoded in reads: audit.take(decoded)
    audit.end(done=saw_done, busy=other_streams_in_flight)
"""

from __future__ import annotations

import numpy as np

from deepconf.backends.sse import Decoded
from deepconf.errors import CapabilityError, StreamError

# Token positions judged when the stream itself must confirm k (no probe, or a probe that saw
# no tokens): the median over a few positions, as the probe judges, because a reasoning parser
# may strip the logprobs of a token or two and llama.cpp collapses equal token strings.
VERIFY_POSITIONS = 8

INTERRUPT_HINT = (
    " llama-cpp-python's server does this to a request whenever another one is waiting (its"
    " default interrupt_requests=True): start it with --interrupt_requests false, or run"
    " deepconf with --concurrency 1"
)


class StreamAudit:
    """The integrity check of one stream; see the module docstring.

    Arguments:
        url: the server, for messages.
        k: top logprobs asked per token.
        verify_k: judge k on this stream's first positions (no probe confirmed it).
    """

    __slots__ = (
        "_counts",
        "finish_reason",
        "k",
        "k_confirmed",
        "tokens",
        "url",
        "usage",
        "verify_k",
    )

    def __init__(self, url: str, k: int, *, verify_k: bool = False) -> None:
        self.url = url
        self.k = k
        self.verify_k = verify_k
        self.tokens = 0  # token positions received, each with logprobs
        self.finish_reason: str | None = None
        self.usage: dict[str, int] = {}
        self.k_confirmed = False  # set when verify_k and the first positions carried k
        self._counts: list[np.ndarray] = []  # entries per position while verifying k

    def take(self, d: Decoded) -> None:
        """Account for one read; raise at the first broken rule."""
        n = d.top_logprobs.shape[0]
        if d.unscored is not None:
            raise StreamError(
                f"{self.url} sent text without logprobs after {self.tokens + n} tokens"
                f" ({d.unscored[:40]!r}): DeepConf cannot score it, so the trace is not"
                " counted. Check that the server returns logprobs for every token (a"
                " reasoning parser may strip them; run deepconf doctor)"
            )
        if d.empty_rows:
            raise StreamError(
                f"{self.url} sent {d.empty_rows} token(s) with no logprob at all (near token"
                f" {self.tokens + n}): DeepConf cannot score them, so the trace is not counted"
            )
        if self.verify_k and not self.k_confirmed and n:
            self._verify(d.top_logprobs)
        self.tokens += n
        if d.finish_reason is not None:
            self.finish_reason = d.finish_reason
        if d.usage:
            self.usage = d.usage

    def _verify(self, top_logprobs: np.ndarray) -> None:
        self._counts.append((~np.isnan(top_logprobs)).sum(axis=1))  # (n,)
        counts = np.concatenate(self._counts)
        if counts.shape[0] < VERIFY_POSITIONS:
            return
        typical = int(np.median(counts))
        if typical < self.k:
            raise CapabilityError(
                f"{self.url} returned {typical} top logprobs per token, fewer than the"
                f" {self.k} asked: on vLLM start the server with --max-logprobs {self.k} (its"
                f" default is 20), or lower --top-logprobs to {typical}"
            )
        self.k_confirmed = True
        self._counts.clear()

    def end(self, *, done: bool, busy: bool) -> None:
        """The stream ended (`done`: by `data: [DONE]`, else the body closed). `busy`: other
        requests to the same server were in flight, which is when llama-cpp-python cuts."""
        if self.finish_reason is None:
            if done:
                hint = INTERRUPT_HINT if busy else " (a server or proxy cut the trace short)"
                raise StreamError(
                    f"the stream from {self.url} ended with [DONE] but no finish reason after"
                    f" {self.tokens} tokens, so the trace is not counted:{hint}"
                )
            raise StreamError(
                f"the stream from {self.url} closed after {self.tokens} tokens without a"
                " finish reason or [DONE]: the server or a proxy cut the trace short"
            )
        reported = self.usage.get("completion_tokens")
        if reported is not None and not 0 <= reported - self.tokens <= 1:
            raise StreamError(
                f"{self.url} reports {reported} completion tokens but sent logprobs for"
                f" {self.tokens}: some tokens arrived without logprobs or were lost, so the"
                " trace is not counted (run deepconf doctor to see what the server sends)"
            )
