"""A model's own DeepConf settings: they travel with the model, through every door to it.

A model card recommends the settings a model needs: the bundled model's traces are 56-72
tokens long, so the paper's window of 2048 would never fill and nothing would ever be
pruned; its card says window 16, tail 16, temperature 1.0, top_p 1.0, max_tokens 160. The
card comes from `deepconf.json` beside a checkpoint (`BundledBackend.defaults`), or from the
`deepconf` object a server advertises for its model in ``GET /v1/models`` (`deepconf
serve-model` does). Card settings fill only what the user left unset, so one prompt with one
seed gives one answer in process, through the Python API and over HTTP.

Not here: reading deepconf.json (backends/bundled.py) or serving (backends/model_server.py).

    config, applied = with_model_defaults(DeepConfConfig(budget=32), backend.defaults)
    applied                      # {"window": 16, "tail": 16, "temperature": 1.0, ...}
    card = advertised_settings(["http://127.0.0.1:8001/v1"], model=None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from deepconf.config import DeepConfConfig, SamplingConfig, settings_message
from deepconf.errors import ConfigError

__all__ = [
    "CONFIDENCE_KEYS",
    "SAMPLING_KEYS",
    "advertised_settings",
    "card_settings",
    "describe",
    "model_card",
    "sampling_with_card",
    "with_model_defaults",
]

# The card keys that are settings, by the config section they fill. Anything else in a
# card (task, difficulty, measured figures) describes the model and is not config.
CONFIDENCE_KEYS = ("window", "tail", "bottom_fraction", "top_logprobs")
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens")
_SECTIONS = {"confidence": CONFIDENCE_KEYS, "sampling": SAMPLING_KEYS}


def model_card(backend: object) -> dict[str, Any]:
    """A backend's model card (`defaults`: the bundled model's deepconf.json), or {}."""
    defaults = getattr(backend, "defaults", None)
    return dict(defaults) if isinstance(defaults, dict) else {}


def card_settings(card: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings a card holds, in a stable order (window first); {} for no card."""
    if not card:
        return {}
    keys = (*CONFIDENCE_KEYS, *SAMPLING_KEYS)
    return {k: card[k] for k in keys if card.get(k) is not None}


def with_model_defaults(
    config: DeepConfConfig | None, card: Mapping[str, Any] | None
) -> tuple[DeepConfConfig, dict[str, Any]]:
    """`config` with the card's settings wherever the user left a setting unset.

    "Unset" is pydantic's: a field the user never passed (`model_fields_set`), so an
    explicit `window=2048` stays 2048 even though it equals the default. Returns the new
    config and the settings the card changed (those equal to what the config already held,
    such as the default k of 20, are not listed).

    Raises ConfigError when a card value is out of range (a broken deepconf.json).
    """
    base = config if config is not None else DeepConfConfig()
    settings = card_settings(card)
    if not settings:
        return base, {}
    data = base.model_dump(exclude_unset=True)
    applied: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        given = getattr(base, section).model_fields_set
        current = getattr(base, section)
        for key in keys:
            if key in settings and key not in given:
                data.setdefault(section, {})[key] = settings[key]
                if getattr(current, key) != settings[key]:
                    applied[key] = settings[key]
    try:
        return DeepConfConfig.model_validate(data), applied
    except ValidationError as exc:
        raise ConfigError(_invalid(exc)) from exc


def sampling_with_card(sampling: SamplingConfig, card: Mapping[str, Any] | None) -> SamplingConfig:
    """Sampling with the card's temperature, top_p, top_k and max_tokens where unset: what a
    backend does for a caller that built its config without the card (as vLLM applies a
    model's generation_config.json to a request that leaves a field out)."""
    settings = card_settings(card)
    given = sampling.model_fields_set
    update = {k: settings[k] for k in SAMPLING_KEYS if k in settings and k not in given}
    if not update:
        return sampling
    try:
        return SamplingConfig.model_validate(sampling.model_dump(exclude_unset=True) | update)
    except ValidationError as exc:
        raise ConfigError(_invalid(exc)) from exc


def _invalid(exc: ValidationError) -> str:
    return f"the model card's settings are invalid ({settings_message(exc)}): fix deepconf.json"


def describe(settings: Mapping[str, Any]) -> str:
    """'window 16, tail 16, temperature 1.0, top_p 1.0, max_tokens 160' for a note."""
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def advertised_settings(
    base_urls: Sequence[str],
    model: str | None,
    *,
    api_key: str | None = None,
    timeout: float = 10.0,
) -> tuple[str | None, dict[str, Any]]:
    """The model a server lists in GET /v1/models and the `deepconf` settings it advertises
    for it: (model id, settings), ({} when it advertises none, as vLLM does not).

    With `model` None the first listed model is the one (the HTTP backend picks the same).
    The first server that answers is asked: the servers behind one solve serve one model.

    Raises ConnectError when no server can be reached at all (start it or fix --base-url);
    a server that answers without a usable list is not an error here (its models endpoint
    may need other auth, or not exist): the backend then discovers the model itself.
    """
    from urllib.request import getproxies

    import httpx

    from deepconf.backends.http_errors import HttpErrors
    from deepconf.backends.stdlib_transport import StdlibTransport
    from deepconf.errors import ConnectError

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    unreachable: list[ConnectError] = []
    # Plain http has no certificates to check and no proxy to go through: one GET over
    # http.client (backends/stdlib_transport.py) spares loading the CA store and httpcore
    # (~50 and ~28 ms of a solve's start-up); https, or a proxy (it may be https), keeps
    # httpx's transport and the default verification.
    plain = all(url.startswith("http://") for url in base_urls) and not getproxies()
    transport = StdlibTransport(timeout) if plain else None
    with httpx.Client(
        timeout=timeout, headers=headers, verify=not plain, transport=transport
    ) as client:
        for url in base_urls:
            try:
                with HttpErrors(url):
                    response = client.get(url.rstrip("/") + "/models")
            except ConnectError as exc:
                unreachable.append(exc)
                continue
            return _listed(response, model)
    if unreachable:
        raise unreachable[0]
    return model, {}


def _listed(response: Any, model: str | None) -> tuple[str | None, dict[str, Any]]:
    """Tolerant reading of an OpenAI model list: any shape we do not expect means "no
    advertised settings", never an error (servers are parsed tolerantly)."""
    if response.status_code != 200:
        return model, {}
    try:
        entries = response.json().get("data")
    except (ValueError, AttributeError):
        return model, {}
    if not isinstance(entries, list):
        return model, {}
    entries = [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]
    chosen = next((e for e in entries if model is None or e["id"] == model), None)
    if chosen is None:
        return model, {}
    card = chosen.get("deepconf")
    return chosen["id"], card_settings(card if isinstance(card, dict) else None)
