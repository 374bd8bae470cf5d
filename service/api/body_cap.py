"""A byte cap on the request bodies that are read whole (JSON), enforced as they arrive.

FastAPI reads a JSON body into memory in full before it validates anything, so without a cap one
request could make the process hold any amount (a 500 MB body took it from 280 MB to 1.7 GB
before its 422). This pure ASGI middleware wraps `receive`: a declared Content-Length over the
cap is refused before the first byte is read, and a body without one (chunked) at the first chunk
that takes it over. The check runs when the app first asks for the body, that is after routing,
so that the multipart photo uploads, which stream with their own larger caps
(service.api.uploads), can exempt themselves first with `use_own_body_caps`.

The 413 is raised as Starlette's HTTPException, the one exception FastAPI lets out of its body
reading unchanged (it turns any other into a 400), so the problem handlers answer it.

Starlette's own limit (FastAPI's `max_body_size`) is not used: a route's exemption from it is
fixed where the route is declared, while the upload caps are settings, and where a route does not
read the body it replaces the response with a plain-text 413 instead of a problem document.
"""

from __future__ import annotations

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_OWN_CAPS = "evidence_triage.own_body_caps"


def use_own_body_caps(request: Request) -> None:
    """Lift the JSON body cap for this request; for readers that enforce their own caps while
    streaming, called before they read."""
    request.scope[_OWN_CAPS] = True


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


class BodyCapMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413,
            f"The request body is larger than the {self.max_bytes:,} bytes accepted for a "
            "JSON request.",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        received = 0

        async def receive_within_cap() -> Message:
            nonlocal received
            if scope.get(_OWN_CAPS):
                return await receive()
            if declared is not None and declared > self.max_bytes:
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, receive_within_cap, send)
