"""Browser-facing security headers, on every response (pure ASGI, like the other middleware).

- `X-Content-Type-Options: nosniff` everywhere: a display copy or heatmap is served as the image
  type it is, and an error or JSON answer that echoes user text is never sniffed as HTML.
- `X-Frame-Options: DENY` everywhere, and on the reviewer page a Content-Security-Policy that
  also says `frame-ancestors 'none'`: no other site can frame the page and trick a signed-in
  reviewer into pressing decision keys.
- The reviewer page's policy allows only its own scripts, styles, API calls and images (photos
  arrive as `blob:` URLs, the favicon is a `data:` one). /docs and /redoc are left without one:
  Swagger UI and ReDoc need inline scripts.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REVIEW_PAGE_PREFIX = "/review"
REVIEW_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_EVERYWHERE = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]
_REVIEW_PAGE = [
    (b"content-security-policy", REVIEW_PAGE_POLICY.encode("ascii")),
    (b"referrer-policy", b"no-referrer"),
]


def _on_review_page(path: str) -> bool:
    return path == REVIEW_PAGE_PREFIX or path.startswith(REVIEW_PAGE_PREFIX + "/")


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _EVERYWHERE + (_REVIEW_PAGE if _on_review_page(scope["path"]) else [])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(header for header in extra if header[0] not in present),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)
