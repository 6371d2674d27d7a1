"""Security headers on every response (pages, API, errors, static files) and the offline API docs.

A plain ASGI middleware, outermost, so that responses made by other middleware (413, 503) and by
exception handlers get the headers too."""

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

# No inline script anywhere (page behaviour lives in /static/js); inline style attributes stay
# allowed because templates set widths and colours from data. frame-ancestors 'none' (and the older
# X-Frame-Options) stop clickjacking of admin buttons.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

# A year, as the HSTS preload list asks; sent only when cookies are HTTPS-only (behind TLS).
HSTS = "max-age=31536000; includeSubDomains"


def security_headers(*, hsts: bool) -> list[tuple[bytes, bytes]]:
    headers = {
        "content-security-policy": CONTENT_SECURITY_POLICY,
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
        "cross-origin-opener-policy": "same-origin",
        "permissions-policy": "camera=(), microphone=(), geolocation=()",
    }
    if hsts:
        headers["strict-transport-security"] = HSTS
    return [(k.encode(), v.encode()) for k, v in headers.items()]


class SecurityHeaders:
    def __init__(self, app, *, hsts: bool) -> None:
        self.app = app
        self.headers = security_headers(hsts=hsts)
        self.names = {name for name, _ in self.headers}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self.names]
                message = {**message, "headers": [*kept, *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# FastAPI's own /docs page loads Swagger UI from a CDN and starts it with an inline script: blank
# offline and refused by the CSP above. This one serves the vendored copy and /static/js/api-docs.js.
docs_router = APIRouter(include_in_schema=False)

_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>instructloop API</title>
  <link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css">
</head>
<body>
  <p id="api-docs-auth" style="font: 15px/1.45 system-ui, sans-serif; margin: 12px auto 0; max-width: 1420px;
     padding: 10px 14px; border-radius: 8px; background: #e8eefc; color: #1d2433; box-sizing: border-box">
    <b>Try it out needs an API token</b>: your browser login does not sign API calls (they answer 401).
    Make a token on your <a href="/account">Account page</a>, click <b>Authorize</b> below and paste it.</p>
  <div id="swagger-ui" data-openapi-url="/openapi.json"></div>
  <script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
  <script src="/static/js/api-docs.js"></script>
</body>
</html>
"""


@docs_router.get("/api/docs")
def api_docs() -> HTMLResponse:
    return HTMLResponse(_DOCS_PAGE)
