"""The scripted upstream server lives in the package (deepconf.eval.scripted_server), where
the fault matrix script and `deepconf doctor`'s tests use it too; this adds the fixture."""

from collections.abc import Iterator

import pytest

from deepconf.eval.scripted_server import (
    CONFIDENT,
    MODEL,
    UNCONFIDENT,
    Script,
    ScriptedServer,
    ScriptToken,
    StreamRecord,
    tokenize,
)


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    """A started ScriptedServer with the default script; tests set `default`, `by_seed`,
    `choose` or `fail_next` on it before their requests."""
    with ScriptedServer() as server:
        yield server


__all__ = [
    "CONFIDENT",
    "MODEL",
    "UNCONFIDENT",
    "Script",
    "ScriptToken",
    "ScriptedServer",
    "StreamRecord",
    "scripted_server",
    "tokenize",
]
