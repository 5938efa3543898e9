"""Backends: the OpenAI-compatible HTTP client and the bundled numpy Falcon-H1 engine."""
