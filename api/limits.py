"""ASGI middleware that rejects request bodies over the configured size with 413."""

from __future__ import annotations

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
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if response_started:
                raise
            await _reject(send, limit, setting)
        except Exception as exc:
            # Starlette's form parser wraps errors raised while it reads the body.
            if isinstance(exc.__cause__ or exc.__context__, _BodyTooLarge) and not response_started:
                await _reject(send, limit, setting)
                return
            raise


async def _reject(send: Send, limit: int, setting: str) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "payload_too_large",
                "message": f"request body is larger than the limit of {limit} bytes ({setting}); "
                "send a smaller body",
                "problems": [],
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
