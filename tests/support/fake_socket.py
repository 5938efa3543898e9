"""A fake of the asyncio transport under the lean HTTP/1.1 transport's connections."""

from __future__ import annotations


class FakeSocketTransport:
    """What backends/h1_transport.py's _Connection asks of its asyncio transport: pause and
    resume reading, closing; each call recorded in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str) -> None:
        return None

    def close(self) -> None:
        self.calls.append("close")
