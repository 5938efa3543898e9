"""The synchronous Python API: `deepconf.solve(prompt, backend=...)`.

A thin wrapper over `DeepConf.solve` for scripts and notebooks. It runs its own event
loop; inside a running loop (Jupyter, an async app) it runs that loop in a worker thread,
because a loop cannot be re-entered. Async code should use `DeepConf` directly.

    from deepconf import solve
    result = solve("What is 17*23? Answer in \\boxed{}.", backend=backend, budget=32)
    print(result.answer, result.tokens.total)

The backend's model card (`backend.defaults`: the bundled model's window, tail and sampling)
fills every setting the caller left unset, as the CLI does, so both give the same result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deepconf.backend import Backend, Prompt
from deepconf.config import DeepConfConfig, settings_message
from deepconf.controller import DeepConf, ProgressCallback
from deepconf.errors import ConfigError
from deepconf.model_settings import model_card, with_model_defaults
from deepconf.result import SolveResult


def solve(
    prompt: Prompt,
    *,
    backend: Backend,
    config: DeepConfConfig | None = None,
    trace_path: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
    problem_id: str | None = None,
    **config_overrides: Any,
) -> SolveResult:
    """Solve one prompt with DeepConf and block until done.

    Arguments:
        prompt: a string, or chat messages in OpenAI's shape.
        backend: any `Backend`. Its connections are closed at the end (`aclose()`),
            because they belong to the event loop this call creates; the next call
            reopens them.
        config: the settings; `config_overrides` replace fields of it (or of the
            defaults), e.g. `budget=32, variant="high"`; nested sections take dicts,
            merged into the current ones: `sampling={"seed": 0}`. Settings set neither
            here nor in `config` come from the backend's model card when it has one.
        trace_path, on_progress, problem_id: as for `DeepConf` / `DeepConf.solve`. Inside
            a running loop, on_progress is called on the worker thread.
    Raises:
        ConfigError: an override names no setting or has a bad value.
        BackendError: the backend could not serve (see the message).
    """
    cfg = with_overrides(config, config_overrides)
    cfg, _ = with_model_defaults(cfg, model_card(backend))
    engine = DeepConf(backend, cfg, trace_path=trace_path, on_progress=on_progress)

    async def main() -> SolveResult:
        try:
            return await engine.solve(prompt, problem_id=problem_id)
        finally:
            await backend.aclose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread: the common, script case
        return asyncio.run(main())
    # Called from inside a running loop: that loop's thread is ours to block (the caller
    # asked for a synchronous answer), but it cannot run a second loop, so a worker does.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="deepconf") as pool:
        return pool.submit(asyncio.run, main()).result()


def with_overrides(config: DeepConfConfig | None, overrides: dict[str, Any]) -> DeepConfConfig:
    """`config` (or the defaults) with top-level fields replaced and nested dicts merged,
    validated as a whole so cross-field rules (warmup <= budget) still apply. Only the
    fields someone set travel (`exclude_unset`), so the model card can still fill the rest."""
    base = (config if config is not None else DeepConfConfig()).model_dump(exclude_unset=True)
    unknown = sorted(set(overrides) - set(DeepConfConfig.model_fields))
    if unknown:
        known = ", ".join(sorted(DeepConfConfig.model_fields))
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; settings are: {known}")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        elif hasattr(value, "model_dump"):
            base[key] = value.model_dump(exclude_unset=True)
        else:
            base[key] = value
    try:
        return DeepConfConfig.model_validate(base)
    except ValidationError as exc:
        raise ConfigError(settings_message(exc)) from exc
