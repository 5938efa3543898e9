"""The start-up GET over http.client (backends/stdlib_transport.py) answers as httpx's own
transport does, and fails with the httpx exception of the same phase, so `HttpErrors`
names the same cause. Real sockets on loopback, a thread-served stdlib HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from deepconf.backends.http_errors import HttpErrors
from deepconf.backends.stdlib_transport import MAX_BODY_BYTES, StdlibTransport
from deepconf.errors import ConnectError

LISTING = {"object": "list", "data": [{"id": "m", "deepconf": {"window": 16}}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._send(200, json.dumps(LISTING).encode())
        elif self.path.startswith("/echo"):
            seen = {"path": self.path, "auth": self.headers.get("Authorization")}
            seen["encoding"] = self.headers.get("Accept-Encoding")
            self._send(200, json.dumps(seen).encode())
        elif self.path == "/huge":
            self._send(200, b"x" * (MAX_BODY_BYTES + 10))
        elif self.path == "/cut":
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
            self.close_connection = True
        else:
            self._send(404, b'{"error": {"message": "no route"}}')

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def both(url: str, **kwargs: object) -> tuple[httpx.Response, httpx.Response]:
    """The same GET through httpx's transport (the reference) and through ours."""
    with httpx.Client(timeout=10, **kwargs) as reference:  # type: ignore[arg-type]
        want = reference.get(url)
    with httpx.Client(timeout=10, transport=StdlibTransport(10.0), **kwargs) as ours:  # type: ignore[arg-type]
        got = ours.get(url)
    return want, got


@pytest.mark.parametrize("path", ["/v1/models", "/nothing", "/echo?x=1&y=%20"])
def test_answers_equal_httpx_s_own_transport(root: str, path: str) -> None:
    want, got = both(root + path, headers={"Authorization": "Bearer k"})
    assert got.status_code == want.status_code
    assert got.headers["content-type"] == want.headers["content-type"]
    if path.startswith("/echo"):  # what the server saw, but for the encoding asked
        mine, theirs = got.json(), want.json()
        assert mine["encoding"] == "identity"  # http.client decodes no gzip
        assert {**mine, "encoding": None} == {**theirs, "encoding": None}
        assert mine["auth"] == "Bearer k" and mine["path"] == "/echo?x=1&y=%20"
    else:
        assert got.json() == want.json()


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = httpx.Client(transport=StdlibTransport(5.0))
    with client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/v1/models")
        with pytest.raises(ConnectError), HttpErrors(f"http://127.0.0.1:{port}/v1"):
            client.get(f"http://127.0.0.1:{port}/v1/models")


def test_a_server_that_never_answers_is_a_read_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts (the kernel does) and never says a word
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/models"
        client = httpx.Client(transport=StdlibTransport(0.2))
        with client, pytest.raises(httpx.ReadTimeout):
            client.get(url)


def test_a_body_cut_short_is_a_protocol_error(root: str) -> None:
    client = httpx.Client(transport=StdlibTransport(5.0))
    with client, pytest.raises(httpx.RemoteProtocolError):
        client.get(root + "/cut")


def test_a_body_past_the_bound_is_refused(root: str) -> None:
    client = httpx.Client(transport=StdlibTransport(10.0))
    with client, pytest.raises(httpx.RemoteProtocolError, match="past"):
        client.get(root + "/huge")


def test_https_is_left_to_httpx() -> None:
    client = httpx.Client(transport=StdlibTransport(5.0))
    with client, pytest.raises(httpx.UnsupportedProtocol):
        client.get("https://127.0.0.1:1/v1/models")
