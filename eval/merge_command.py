"""The `deepconf eval-merge` command: shard folders of one eval joined into one folder.

    deepconf eval --dataset aime25.jsonl --base-url ... --shard 1/2 --output shard1/   # node 1
    deepconf eval --dataset aime25.jsonl --base-url ... --shard 2/2 --output shard2/   # node 2
    deepconf eval-merge all/ shard1/ shard2/

Registered by deepconf/cli.py as ``app.command("eval-merge")(eval_merge_command)``. Parsing
and printing only: the checks and the copying are eval.shards.merge_shards; the report is
eval's own (eval.commands.write_report), so the merged folder's report.md and summary.json
are what one run would have written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepconf.cli_common import console, fail, note
from deepconf.errors import DeepConfError

# Missing problem ids shown in the note; the rest are counted.
SHOWN_MISSING = 10


def eval_merge_command(
    output: Annotated[
        Path,
        typer.Argument(help="The merged folder (new, or empty).", show_default=False),
    ],
    shards: Annotated[
        list[Path],
        typer.Argument(help="The --output folders of `eval --shard I/N`.", show_default=False),
    ],
) -> None:
    """Join the folders of `deepconf eval --shard I/N` into one eval folder.

    Checked first: the same settings, no problem twice. Problems without a result are named.
    """
    from deepconf.eval.commands import disagreements_of, write_report
    from deepconf.eval.report import unjudged_of
    from deepconf.eval.runner import scores_of
    from deepconf.eval.shards import merge_shards

    try:
        merged = merge_shards(shards, output)
    except DeepConfError as exc:
        raise fail(str(exc)) from None
    if merged.absent_shards:
        note(f"shard(s) {', '.join(merged.absent_shards)} not given: their problems are missing")
    if merged.missing:
        shown = ", ".join(merged.missing[:SHOWN_MISSING])
        more = len(merged.missing) - SHOWN_MISSING
        note(
            f"{len(merged.missing)} problem(s) given to a shard have no result: {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    if merged.absent_shards or merged.missing:
        note(
            f"to run what is missing, rerun eval with the same flags but no --shard and"
            f" --output {output}: it runs only the problems without a result"
        )
    results = merged.results
    title = f"{merged.manifest['dataset']}: {len(results)} problems, budget"
    title += f" {merged.manifest['config']['budget']}"
    unjudged = unjudged_of(results)
    write_report(output, scores_of(results), title, console(), disagreements_of(results), unjudged)
    console(stderr=True).print(
        f"merged {len(results)} problems from {len(shards)} shard folder(s) into {output}",
        highlight=False,
    )
