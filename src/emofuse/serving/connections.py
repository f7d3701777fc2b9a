"""The HTTP connection below the app: uvicorn's h11 protocol with a header timeout and JSON 400s.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`), but that timer starts only
once a response is complete and stops at the first byte received: a client that opens a
connection and sends its request head a byte at a time holds it (and a file descriptor) for
ever. `GuardedH11Protocol` closes a connection whose complete request head has not arrived
`header_seconds` after it opened, or after the previous response on it ended; a client that
sent part of a head reads 408 first. A WebSocket upgrade and a request whose head arrived are
past this timer: the body has its own limits (`serving.app.UploadLimit`).

A request h11 cannot parse (a negative or conflicting Content-Length, a malformed line) is
answered 400 with the service's one JSON line, `{"detail": "invalid HTTP request: <why>"}`,
not uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import json
import sys

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def json_line(detail: str) -> bytes:
    """The service's error body ({"detail": ...}, as FastAPI's JSONResponse writes it)."""
    return json.dumps({"detail": detail}, ensure_ascii=False, separators=(",", ":")).encode()


def guarded_protocol(header_seconds: float) -> type[H11Protocol]:
    """uvicorn's `http=` class for a server whose request heads must arrive within `header_seconds`."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_seconds": header_seconds})


class GuardedH11Protocol(H11Protocol):
    """H11Protocol with a request-head timer (module docstring). The timer runs while the
    connection waits for a request head: from `connection_made`, and again from each complete
    response; it stops when a head is parsed (a new request cycle) or the connection upgrades."""

    header_seconds: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._stop_head_timer_if_head_arrived()

    def on_response_complete(self) -> None:
        self._arm_head_timer()
        super().on_response_complete()  # a pipelined request already received is parsed here
        self._stop_head_timer_if_head_arrived()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._stop_head_timer()  # the WebSocket protocol takes the connection over
        super().handle_websocket_upgrade(event)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 for a request h11 refused, as one JSON line naming h11's reason (uvicorn
        calls this inside its `except h11.RemoteProtocolError`, so the error is at hand)."""
        self._stop_head_timer()
        error = sys.exc_info()[1]
        why = str(error) if isinstance(error, h11.RemoteProtocolError) and str(error) else msg.rstrip(".")
        body = json_line(f"invalid HTTP request: {why}")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # a response was already under way: nothing more can be said
            pass
        self.transport.close()

    # ------------------------------------------------------------------ the head timer
    def _arm_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_cycle = self.cycle  # a head parsed later starts a new cycle
        self._head_timer = self.loop.call_later(self.header_seconds, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _stop_head_timer_if_head_arrived(self) -> None:
        if self._head_timer is not None and self.cycle is not self._head_cycle:
            self._stop_head_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        partial_head = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
        if partial_head:  # h11 cannot answer before a request: the 408 is written as it would write it
            body = json_line(f"the request head did not arrive within {self.header_seconds:g} s")
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()
