"""Errors as RFC 9457 problem documents (application/problem+json).

Routes raise `ProblemError`; the handlers here turn it, FastAPI's validation errors, unknown
routes, a database that cannot be reached (503, to retry) and unexpected exceptions into the same
document shape, with the request id so that a client's report can be found in the logs.

Unexpected exceptions are answered by `UnhandledErrorMiddleware`, inside the middleware stack:
Starlette runs a handler registered for `Exception` outside every middleware, after the request
id is gone, so its 500 carried `request_id: null`, no `X-Request-ID` and no security headers.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.logs import current_request_id

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:evidence-triage:problem:"
# The status recorded for a request whose client went away before it was answered (nginx's).
CLIENT_CLOSED_REQUEST = 499
# Seconds a client is asked to wait (Retry-After) when the database cannot be reached.
DATABASE_RETRY_AFTER_SECONDS = 5
# SQLite's generic result code, which its driver raises as an OperationalError like an outage:
# a table or column that is not there, a syntax error. A bug or a missing migration, not an
# outage (PostgreSQL raises those as ProgrammingError).
_SQLITE_ERROR = 1
logger = logging.getLogger("service.api")


class ProblemError(Exception):
    """An HTTP error with a machine-readable `code` and a human-readable `detail`."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extensions = extensions


def problem_response(
    request: Request,
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "code": code,
        "request_id": current_request_id(),
    }
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def internal_error(request: Request) -> JSONResponse:
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal error",
        detail="Something went wrong on our side; quote the request id when reporting it.",
    )


class UnhandledErrorMiddleware:
    """Answers an exception that no handler took with the 500 problem document (and logs it
    once), inside the middleware that sets the request id and the security headers. Pure ASGI,
    so streamed upload bodies pass through untouched. An exception after the response started
    is left to the server: the client has a status already."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except ClientDisconnect:
            # The client went away while its body was read (an upload cancelled): nobody is
            # left to answer and nothing is wrong here. The answer the server drops is a 499
            # (nginx's "client closed request"), so the access log and metrics say so.
            logger.info("client disconnected", extra={"path": scope["path"]})
            if not started:
                await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST})
                await send({"type": "http.response.body", "body": b""})
        except Exception:
            if started:
                raise
            logger.exception("unhandled error", extra={"path": scope["path"]})
            await internal_error(Request(scope))(scope, receive, send)


def _validation_errors(error: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "location": ".".join(str(part) for part in item.get("loc", ())),
            "message": item.get("msg", ""),
            "type": item.get("type", ""),
        }
        for item in error.errors()
    ]


_STATUS_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Missing or invalid API key"),
    403: ("forbidden", "Not allowed"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Request too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def _database_unreachable(error: Exception) -> bool:
    """Whether a database error says the database cannot be reached now, rather than that the
    query is wrong (SQLite's SQLITE_ERROR: no such table, a syntax error)."""
    code = getattr(getattr(error, "orig", None), "sqlite_errorcode", None)
    return code is None or code & 0xFF != _SQLITE_ERROR


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, error: ProblemError) -> JSONResponse:
        return problem_response(
            request,
            status=error.status,
            code=error.code,
            title=error.title,
            detail=error.detail,
            headers=error.headers,
            **error.extensions,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(error)
        summary = "; ".join(f"{item['location']}: {item['message']}" for item in errors[:5])
        return problem_response(
            request,
            status=422,
            code="validation_error",
            title="The request is not valid",
            detail=summary or "The request body or parameters are not valid.",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code, title = _STATUS_CODES.get(error.status_code, ("http_error", "HTTP error"))
        detail = error.detail if isinstance(error.detail, str) else title
        return problem_response(
            request,
            status=error.status_code,
            code=code,
            title=title,
            detail=detail,
            headers=getattr(error, "headers", None),
        )

    async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
        # A connection refused or dropped, a pool exhausted, SQLite's lock wait run out: the
        # request may succeed once the database is back (/readyz says when), so 503, not a 500,
        # and one log line each, not a traceback per request for as long as an outage lasts.
        if not _database_unreachable(error):
            logger.error("unhandled error", exc_info=error, extra={"path": request.url.path})
            return internal_error(request)
        logger.warning(
            "database unavailable",
            extra={"path": request.url.path, "error": str(getattr(error, "orig", None) or error)},
        )
        return problem_response(
            request,
            status=503,
            code="database_unavailable",
            title="Database unavailable",
            detail="The database cannot be reached or is too busy right now; try again shortly "
            "(GET /readyz says when it is reachable).",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )

    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(PoolTimeoutError, _database_unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # Only for an error in the middleware outside `UnhandledErrorMiddleware`.
        logger.exception("unhandled error", extra={"path": request.url.path})
        return internal_error(request)
