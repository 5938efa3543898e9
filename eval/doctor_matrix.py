"""`deepconf doctor` against the scripted server with each fault a real server has shown:
what the doctor finds (every finding that is not ok), its fix, and its exit status.

The table in the README's "Real servers" section is this script's output. Each row starts a
scripted loopback server (deepconf.eval.scripted_server) playing one fault and runs the whole
checkup in process, as `deepconf doctor --base-url URL` would.

    python -m deepconf.eval.doctor_matrix            # markdown table on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Any

from deepconf.doctor import DoctorSettings, Report
from deepconf.doctor_run import diagnose
from deepconf.eval.scripted_server import Script, ScriptedServer

TEXT = "Let me add the numbers one by one and check the sum twice. The answer is \\boxed{7}."


@dataclass
class DoctorFault:
    name: str
    script: dict[str, Any] = field(default_factory=dict)  # Script.from_text arguments
    server: dict[str, Any] = field(default_factory=dict)  # ScriptedServer arguments
    repeat: int = 2  # the script says TEXT this many times (~19 tokens each)


FAULTS = [
    DoctorFault("healthy (vLLM-like)"),
    DoctorFault("llama-cpp-python interrupt", server={"interrupt_when_busy": True}),
    DoctorFault("[DONE] without a finish reason", {"finish_reason": None}),
    DoctorFault("clean close, no [DONE]", {"finish_reason": None, "end": "close"}),
    DoctorFault("k capped at 5 (vLLM --max-logprobs 5)", {"max_logprobs": 5}),
    DoctorFault("no logprobs", {"logprobs": False}),
    DoctorFault("placeholder logprobs (-9999)", {"placeholder": -9999.0}),
    DoctorFault("k+1 entries (sampled token appended)", {"append_sampled": True}),
    DoctorFault("equal token strings collapse", {"collide_every": 3}),
    DoctorFault("processed logprobs (after temperature)", {"logprob_mode": "processed"}),
    DoctorFault("usage disagrees", {"usage_tokens": 99}),
    DoctorFault("NaN logprob", {"top": [math.nan, -1.0, *(-5.0 - j for j in range(30))]}),
    DoctorFault("HTTP 200 with an HTML page", {"html": True}),
    DoctorFault("generation outlives the client", server={"ignore_disconnect": True}, repeat=12),
]


async def run_doctor(fault: DoctorFault) -> Report:
    # Paced, so a stream is still running when the abort check closes it; short requests
    # (64 tokens) end at the script's own end, where its finish-reason faults show.
    script = Script.from_text(TEXT * fault.repeat, **({"delay": 0.01} | fault.script))
    with ScriptedServer(default=script, **fault.server) as server:
        settings = DoctorSettings(
            base_url=server.base_url, timeout=10.0, short_tokens=64, abort_deadline=5.0
        )
        return await diagnose(settings)


def markdown(rows: list[tuple[DoctorFault, Report]]) -> str:
    lines = ["| server fault | doctor's findings (warn, FAIL) | fix | exit |", "|---|---|---|---|"]
    for fault, report in rows:
        # warn and FAIL only: the "unknown"s here follow from them (no stream, no logprobs)
        bad = [f for f in report.findings if f.verdict in ("warn", "FAIL")]
        bad = [f for f in bad if "tokens/s" not in f.check]  # machine load, not the fault
        found = "<br>".join(f"**{f.verdict}** {f.check}: {f.result}" for f in bad) or "all ok"
        fixes = "<br>".join(f.fix for f in bad if f.fix and f.fix != "-") or "-"
        lines.append(f"| {fault.name} | {found} | {fixes} | {1 if report.wrong else 0} |")
    return "\n".join(lines)


async def run_all(only: str | None) -> list[tuple[DoctorFault, Report]]:
    return [(f, await run_doctor(f)) for f in FAULTS if not only or only in f.name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the faults whose name contains this")
    args = parser.parse_args(argv)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    print(markdown(asyncio.run(run_all(args.only))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
