"""ASGI middleware: a request body size limit (413) and a cap on concurrent requests."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Enforce a byte limit on each request body, chosen per request by `limit_for(scope)`.

    Content-Length is checked first; chunked bodies are counted as they arrive, so a client
    cannot send more than the limit by leaving the header out.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], tuple[int, str]]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.limit_for(scope)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _reject(send, limit, setting)
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded:
                # The app turned the failed body read into its own error response, because
                # FastAPI returns 400 for a form it could not parse. Send the 413 instead.
                if message["type"] == "http.response.start" and not response_started:
                    response_started = True
                    await _reject(send, limit, setting)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
            if not response_started:
                await _reject(send, limit, setting)


async def _reject(send: Send, limit: int, setting: str) -> None:
    message = (
        f"request body is larger than the limit of {limit} bytes ({setting}); send a smaller body"
    )
    await _send_json(send, 413, "payload_too_large", message, [(b"connection", b"close")])


async def _send_json(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps({"error": {"code": code, "message": message, "problems": []}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ConcurrencyLimit:
    """Admit at most `max_concurrent` requests at once; the rest wait, up to `timeout_s`.

    A request's database session keeps its connection while FastAPI moves between thread-pool
    calls (dependencies, then the handler). Without this cap, more concurrent requests than
    pooled connections leave every thread waiting for a connection that a queued request
    holds, until the pool times out. Requests for which `exempt(scope)` is true (long streams
    and uploads, which take connections only briefly) are not counted.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_concurrent: int,
        timeout_s: float,
        exempt: Callable[[Scope], bool],
    ):
        self.app = app
        self.timeout_s = timeout_s
        self.exempt = exempt
        self._semaphore = asyncio.Semaphore(max_concurrent)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout=self.timeout_s)
        except TimeoutError:
            logger.warning(
                "rejected %s %s: no request slot free within %.0f s",
                scope.get("method"),
                scope.get("path"),
                self.timeout_s,
            )
            await _send_json(
                send,
                503,
                "service_unavailable",
                f"the server is busy: no request slot was free within {self.timeout_s:.0f} s; "
                "retry shortly",
                extra_headers=[(b"retry-after", b"1")],
            )
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._semaphore.release()
