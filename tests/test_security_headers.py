"""Security headers on pages, API, errors and static files; the API docs work offline under the CSP."""

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.web.headers import CONTENT_SECURITY_POLICY

EXPECTED = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def _assert_headers(response) -> None:
    for name, value in EXPECTED.items():
        assert response.headers.get(name) == value, (response.request.url, name)
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    "path, status",
    [
        ("/login", 200),  # page
        ("/admin/users", 303),  # redirect to login
        ("/static/js/app.js", 200),  # static file
        ("/static/nope.js", 404),  # static 404
        ("/api/v1/projects", 401),  # API error, JSON
        ("/no/such/page", 404),  # error page
        ("/openapi.json", 200),
        ("/api/docs", 200),
        ("/healthz", 200),
    ],
)
def test_headers_on_every_kind_of_response(client, path, status):
    r = client.get(path)
    assert r.status_code == status
    _assert_headers(r)
    assert "strict-transport-security" not in r.headers  # only behind TLS


def test_headers_on_413_and_on_admin_pages(admin_client, settings):
    _assert_headers(admin_client.get("/admin/users"))
    big = admin_client.post(
        "/login",
        content=b"x" * (settings.max_body_bytes + 1),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert big.status_code == 413
    _assert_headers(big)


def test_hsts_when_cookies_are_secure(settings):
    settings.cookie_secure = True
    app = create_app(settings)
    with TestClient(app, base_url="https://testserver") as client:
        assert client.get("/login").headers["strict-transport-security"].startswith("max-age=31536000")
    app.state.engine.dispose()


def test_api_docs_use_the_vendored_swagger_without_inline_script(client):
    html = client.get("/api/docs").text
    assert "cdn" not in html.lower()
    assert "<script>" not in html  # every script has a src
    for src in (
        "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css",
        "/static/js/api-docs.js",
    ):
        assert src in html
        assert client.get(src).status_code == 200


def test_no_template_has_inline_script():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "templates"
    for path in root.rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"inline <script> in {path}"
        assert not re.search(r"\son[a-z]+\s*=", text), f"inline event handler in {path}"
        assert "javascript:" not in text, path


def test_a_forged_flash_cookie_puts_nothing_on_the_page(client):
    """The flash cookie is signed: a cookie set by someone else (a subdomain, a proxy) is ignored."""
    import json

    from app.main import FLASH_COOKIE

    client.cookies.set(FLASH_COOKIE, json.dumps([["error", "Your account is locked, call +1 555 0100"]]))
    assert "call +1 555 0100" not in client.get("/login").text
