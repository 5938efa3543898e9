"""What `deepconf solve` shows: the live view while traces run, and the summary at the end.

The summary puts plain majority beside DeepConf's confidence vote, always: the vote table
has a column for each, and a line says whether they agree. Confidence can mislead (a model
confidently repeating one wrong carry), and majority over the same traces is the safety net
users check it against. A line names the policy that decided (its warm-up, vote, filter and
stop rule), so a `--policy` choice, or the default DeepConf-low, is visible in the output.
Printing only: nothing here runs or votes.

    console.print(progress_table(progress, started))         # inside rich.live.Live
    print_summary(console, result)
    hint = no_answer_hint(result, config)                     # why there is no answer
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deepconf.result import SolveResult


def progress_table(p: Any, started: float) -> Table:
    """The live view of one `Progress` snapshot."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan")
    table.add_column()
    threshold = "—" if p.threshold is None else f"{p.threshold:.3f}"
    leader = "—" if p.leader is None else escape(str(p.leader))
    table.add_row("phase", str(p.phase))
    table.add_row("traces", f"{p.launched}/{p.budget} launched, {p.in_flight} in flight")
    table.add_row(
        "finished",
        f"{p.completed} completed, {p.pruned} pruned, {p.truncated} truncated, "
        f"{p.cancelled} cancelled, {p.failed} failed",
    )
    table.add_row("threshold", threshold)
    table.add_row("leader", f"{leader}  (beta {p.beta:.2f})")
    table.add_row("tokens", f"{p.tokens:,}  ({time.monotonic() - started:.1f}s)")
    return table


def vote_table(result: SolveResult) -> Table:
    """DeepConf's weighted vote and plain majority's count, one row per answer.

    Rows follow DeepConf's order (its winner first); answers only majority saw (traces that
    ran to the end but did not pass the confidence filter) come after, weight "—"."""
    deepconf_label = "DeepConf" if result.mode == "online" else f"DeepConf ({result.method})"
    table = Table(title="votes", show_edge=False)
    table.add_column("answer")
    table.add_column(f"{deepconf_label} traces", justify="right")
    table.add_column("weight", justify="right")
    table.add_column("majority traces", justify="right")
    majority = {row.answer: row.count for row in result.majority_votes}
    shown = set()
    for row in result.votes:
        shown.add(row.answer)
        count = majority.get(row.answer, 0)
        table.add_row(escape(row.answer), str(row.count), f"{row.weight:.2f}", str(count))
    for row in result.majority_votes:
        if row.answer not in shown:
            table.add_row(escape(row.answer), "0", "—", str(row.count))
    return table


def majority_line(result: SolveResult) -> str:
    """One line: plain majority's answer over the traces that ran to the end, and whether
    it agrees with DeepConf's."""
    ended = sum(row.count for row in result.majority_votes)
    if result.majority is None:
        return "plain majority: no trace that ran to its end gave an answer"
    what = f"plain majority over the {ended} answers of traces that ran to their end:"
    answer = f"[bold]{escape(result.majority)}[/]"
    if result.agrees:
        return f"{what} {answer} (agrees with DeepConf)"
    theirs = escape(str(result.answer))
    return f"{what} {answer} [bold yellow](disagrees with DeepConf's {theirs})[/]"


def tokens_line(result: SolveResult) -> str:
    tokens = result.tokens
    if result.mode == "offline":
        line = f"tokens: {tokens.total:,} ({len(result.traces)} traces, none pruned)"
    else:
        line = f"tokens: {tokens.total:,} (warm-up {tokens.warmup:,}, online {tokens.online:,})"
    estimate = result.tokens_majority_estimate
    if estimate and result.mode == "online":
        saved = 1.0 - tokens.total / estimate
        change = f"{saved:.0%} saved" if saved >= 0 else f"{-saved:.0%} more"
        line += f"; plain majority over the same budget: ~{estimate:,.0f} ({change})"
    return line


def policy_line(result: SolveResult) -> str | None:
    """Which rules decided: online the policy (--policy, default deepconf-<variant>) with its
    warm-up, vote, filter and stop in words; offline the voting method. None for a result
    that does not record its policy (one built by hand)."""
    if result.policy is not None:
        from deepconf.policies.describe import describe_line

        return f"policy: {escape(describe_line(result.policy))}"
    if result.mode == "offline":
        return f"offline method: {escape(result.method)} (every trace ran to its end, then voted)"
    return None


def print_summary(console: Console, result: SolveResult) -> None:
    """The vote table, majority beside DeepConf, tokens, the policy, trace counts and the
    answer."""
    console.print(vote_table(result))
    if result.fallback:
        console.print(f"[yellow]note:[/] {escape(result.fallback)}")
    if result.unjudged_note:
        console.print(f"[yellow]note:[/] {escape(result.unjudged_note)}")
    console.print(majority_line(result))
    console.print(tokens_line(result))
    if (policy := policy_line(result)) is not None:
        console.print(policy, highlight=False)
    statuses: dict[str, int] = {}
    for trace in result.traces:
        statuses[str(trace.status)] = statuses.get(str(trace.status), 0) + 1
    shown = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    threshold = "—" if result.threshold is None else f"{result.threshold:.3f}"
    console.print(
        f"traces: {shown}; threshold {threshold}; beta {result.beta:.2f}; "
        f"stopped by {result.stop_reason}; {result.wall_time:.1f}s"
    )
    console.print(f"[bold]answer:[/] [bold green]{escape(str(result.answer))}[/]")


def no_answer_hint(result: SolveResult, config: Any) -> str:
    """Why a solve ended without an answer, and what to change (the CLI exits 1 with it)."""
    ended = [t for t in result.traces if t.finished]
    if result.stop_reason == "token_budget":
        need = ""
        if config.mode == "online":
            if ended:
                per = sum(t.tokens for t in ended) / len(ended)
                need = (
                    f"; the {config.warmup} warm-up traces need about {config.warmup * per:,.0f}"
                    f" tokens ({per:,.0f} each so far)"
                )
            else:
                longest = max((t.tokens for t in result.traces), default=0)
                need = (
                    f"; none of the {config.warmup} warm-up traces reached its end (the longest"
                    f" got {longest:,} tokens)"
                )
        return (
            f"no answer: the token budget ({config.token_budget:,}) ran out after"
            f" {result.tokens.total:,} tokens{need}. Raise --token-budget"
            + (" or lower --warmup" if config.mode == "online" else " or lower --budget")
        )
    if not ended:
        return (
            "no answer: no trace ran to its end. Raise --max-tokens if they were cut"
            " (truncated traces still vote), or see the errors above"
        )
    return (
        f"no answer: none of the {len(ended)} traces that ran to their end wrote an answer"
        " this tool can read (\\boxed{...}, or 'answer is X'); check the prompt asks for"
        " one, or pass --save-traces to read what they wrote"
    )
