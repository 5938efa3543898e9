"""What one streamed trace must carry to count: the integrity rules of the HTTP backend. No I/O.

A trace counts only what it really received (DESIGN.md, "Trust rules"). Servers break that
quietly: llama-cpp-python ends a request with `data: [DONE]` and no finish reason whenever
another request waits; proxies close streams cleanly mid-trace; a server may send text with
`"logprobs": null`, or a usage total that disagrees with the tokens it scored. Each of these
used to count as a completed trace. `StreamAudit` is fed every decoded read of one stream and
raises `StreamError` the moment the stream breaks a rule, with a message naming the cause:

- every piece of text (content or reasoning) arrives with logprobs, and every token position
  carries at least one logprob;
- when the server's k has not been confirmed by a probe, one of the first VERIFY_POSITIONS
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

# Token positions a stream may take to show k entries when it must confirm k itself (no
# probe, or a probe that saw no tokens). A server's cap (vLLM's --max-logprobs) is the same
# at every position, while collapse (llama.cpp merges equal token strings: SmolLM2 gives 19 of
# 20 at most positions) and a reasoning parser's stripping only lower some. So k counts as
# served at the first position that carries k entries, and as capped when none of these
# positions did: the fullest position seen is the server's cap. A stream that ends sooner
# is judged on what it sent, if that is at least VERIFY_MIN_POSITIONS (as many as a probe).
VERIFY_POSITIONS = 32
VERIFY_MIN_POSITIONS = 8

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
        "_fullest",
        "_judged",
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
        self._fullest = 0  # most entries at one position while verifying k
        self._judged = 0  # positions seen while verifying k

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
        counts = (~np.isnan(top_logprobs)).sum(axis=1)  # (n,) entries per position
        self._fullest = max(self._fullest, int(counts.max()))
        self._judged += counts.shape[0]
        if self._fullest >= self.k:
            self.k_confirmed = True
        elif self._judged >= VERIFY_POSITIONS:
            raise self._short_k()

    def _short_k(self) -> CapabilityError:
        return CapabilityError(
            f"{self.url} returned at most {self._fullest} top logprobs per token over"
            f" {self._judged} tokens, fewer than the {self.k} asked: on vLLM start the"
            f" server with --max-logprobs {self.k} (its default is 20), or lower"
            f" --top-logprobs to {self._fullest}"
        )

    def end(self, *, done: bool, busy: bool) -> None:
        """The stream ended (`done`: by `data: [DONE]`, else the body closed). `busy`: other
        requests to the same server were in flight, which is when llama-cpp-python cuts."""
        if self.verify_k and not self.k_confirmed and self._judged >= VERIFY_MIN_POSITIONS:
            raise self._short_k()
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
