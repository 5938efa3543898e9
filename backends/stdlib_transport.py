"""A synchronous httpx transport over the standard library's http.client, for the one plain
http GET a command makes before its event loop starts (the model list, at start-up).

httpx's own sync transport imports httpcore, h11 and anyio and builds a connection pool:
~28 ms of CPU a start (5 runs each: 26-37 ms against 1.3-1.9 ms for the same GET through
http.client), paid by every `deepconf solve`, eval worker and serve process for one request.
httpx stays the API (the Client, its Request and Response, its exceptions), so the callers'
error handling (`HttpErrors`) reads the same: a refused or unreachable host raises
httpx.ConnectError, a timeout httpx's timeout of that phase, a broken answer
httpx.RemoteProtocolError or ReadError. Plain http only, and no proxy: the caller keeps
httpx's transport for https and proxies.

    with httpx.Client(transport=StdlibTransport(timeout=10.0)) as client:
        response = client.get("http://127.0.0.1:8000/v1/models")
"""

from __future__ import annotations

import http.client

import httpx

MAX_BODY_BYTES = 16 * 1024 * 1024  # a model list is kilobytes; a server sending more is refused


class StdlibTransport(httpx.BaseTransport):
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{url.scheme}:// needs httpx's own transport")
        conn = http.client.HTTPConnection(url.host, url.port or 80, timeout=self.timeout)
        try:
            try:
                conn.connect()
            except TimeoutError as exc:
                raise httpx.ConnectTimeout(str(exc) or "timed out connecting") from exc
            except OSError as exc:  # refused, unreachable, no such host
                raise httpx.ConnectError(str(exc)) from exc
            return self._exchange(conn, request)
        finally:
            conn.close()

    def _exchange(self, conn: http.client.HTTPConnection, request: httpx.Request) -> httpx.Response:
        try:
            conn.putrequest(
                request.method,
                request.url.raw_path.decode("ascii"),
                skip_host=True,
                skip_accept_encoding=True,
            )
            for name, value in request.headers.raw:
                if name.lower() != b"accept-encoding":
                    conn.putheader(name, value)
            conn.putheader("Accept-Encoding", "identity")  # http.client decodes nothing
            conn.endheaders(request.read() or None)
            answer = conn.getresponse()
            body = _read_bounded(answer)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out waiting for the server") from exc
        except http.client.HTTPException as exc:
            raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
        except OSError as exc:  # a reset, a broken pipe
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        headers = [(k, v) for k, v in answer.getheaders() if k.lower() != "transfer-encoding"]
        return httpx.Response(answer.status, headers=headers, content=body, request=request)


def _read_bounded(answer: http.client.HTTPResponse) -> bytes:
    """The whole body, refused past MAX_BODY_BYTES; a body its Content-Length promised and
    the close cut short raises IncompleteRead (a chunked one raises it inside read)."""
    parts: list[bytes] = []
    size = 0
    while piece := answer.read(64 * 1024):
        size += len(piece)
        if size > MAX_BODY_BYTES:
            raise httpx.RemoteProtocolError(f"a body past {MAX_BODY_BYTES} bytes")
        parts.append(piece)
    if answer.length:  # bytes still owed when the server closed
        raise http.client.IncompleteRead(b"".join(parts), answer.length)
    return b"".join(parts)
