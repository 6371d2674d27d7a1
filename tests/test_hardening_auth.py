"""Issue 27, findings 6, 9, 10, 11 and 13: API tokens end with a password change or reset; the
client address comes from X-Forwarded-For only through a configured proxy; reset links are short-lived
and never carry an untrusted Host; a chunked body over the limit gets 413; a disabled account's
refusal reads like a wrong password."""

import os
import re
import socket
import subprocess
import sys
import time
from datetime import timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import utcnow
from app.main import create_app
from app.models import LoginFailure, PasswordReset, User
from app.services import accounts
from tests.conftest import PASSWORD, csrf_of, login

NEW_PASSWORD = "plum harbor quietly"


def _browser(app, host: str = "testclient") -> TestClient:
    return TestClient(app, base_url="http://testserver", follow_redirects=False, client=(host, 50000))


# -- 6: API tokens are revoked with the sessions on a password change or reset ------------------


def test_password_change_revokes_the_users_api_tokens(app, client, make_user, session):
    user = make_user("a@example.com")
    tokens = [accounts.create_api_token(session, user, name=n) for n in ("one", "two")]
    session.commit()
    login(client, "a@example.com")
    r = client.post(
        "/account/password",
        data={
            "current": PASSWORD,
            "password": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
            "csrf_token": csrf_of(client, "/account"),
        },
    )
    assert r.status_code == 303
    for token in tokens:
        assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert "2 API tokens were revoked" in client.get("/account").text
    assert client.get("/account").status_code == 200  # this browser stays signed in


def test_password_reset_revokes_the_users_api_tokens(app, admin_client, make_user, session):
    user = make_user("a@example.com")
    token = accounts.create_api_token(session, user)
    other = accounts.create_api_token(session, admin_client.user)  # someone else's: untouched
    reset = accounts.create_password_reset(session, user.id, created_by=None, ttl_s=3600)
    session.commit()
    stranger = _browser(app)
    path = f"/reset/{reset}"
    r = stranger.post(
        path, data={"password": NEW_PASSWORD, "password2": NEW_PASSWORD, "csrf_token": csrf_of(stranger, path)}
    )
    assert r.status_code == 303
    assert stranger.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert stranger.get("/api/v1/me", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    assert "API tokens" in stranger.get("/login").text


# -- 9: X-Forwarded-For only from a trusted proxy --------------------------------------------------


def _request(client: tuple[str, int] | None, forwarded: list[str]):
    from starlette.requests import Request

    headers = [(b"x-forwarded-for", v.encode()) for v in forwarded]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers, "client": client})


def test_client_ip_reads_forwarded_for_only_from_trusted_proxies(settings):
    from app.deps import client_ip

    request = _request(("127.0.0.1", 1), ["6.6.6.6"])
    assert client_ip(request, settings) == "127.0.0.1"  # default: no proxy is trusted, not even loopback
    settings.trusted_proxies = "127.0.0.1, 10.0.0.0/8"
    assert client_ip(request, settings) == "6.6.6.6"
    # The nearest address that is not a trusted proxy: what the client put in front is not believed.
    chained = _request(("127.0.0.1", 1), ["1.1.1.1, 2.2.2.2", "10.1.2.3"])
    assert client_ip(chained, settings) == "2.2.2.2"
    assert client_ip(_request(("8.8.8.8", 1), ["6.6.6.6"]), settings) == "8.8.8.8"  # not a proxy
    assert client_ip(_request(("127.0.0.1", 1), ["not an ip, 10.0.0.1"]), settings) == "not an ip"
    assert client_ip(_request(None, []), settings) == ""


def test_login_throttle_counts_the_proxy_reported_client_when_the_proxy_is_trusted(settings, make_user):
    make_user("a@example.com")
    settings.trusted_proxies = "127.0.0.1"
    app = create_app(settings)
    browser = _browser(app, "127.0.0.1")
    for i in range(settings.login_max_failures):
        csrf = csrf_of(browser)
        r = browser.post(
            "/login",
            data={"email": "a@example.com", "password": "wrong password!", "csrf_token": csrf},
            headers={"X-Forwarded-For": "203.0.113.7"},
        )
        assert r.status_code == 401, i
    blocked = browser.post(
        "/login",
        data={"email": "a@example.com", "password": PASSWORD, "csrf_token": csrf_of(browser)},
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert blocked.status_code == 429
    # The owner behind the same proxy but at another address is not locked out.
    ok = browser.post(
        "/login",
        data={"email": "a@example.com", "password": PASSWORD, "csrf_token": csrf_of(browser)},
        headers={"X-Forwarded-For": "198.51.100.9"},
    )
    assert ok.status_code == 303
    app.state.engine.dispose()


def _serve(tmp_path, **env_extra) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FORWARDED_ALLOW_IPS")}
    env.update(INSTRUCTLOOP_DATA_DIR=str(tmp_path), INSTRUCTLOOP_ADMIN_PASSWORD=PASSWORD, **env_extra)
    server = subprocess.Popen(
        [sys.executable, "-m", "instructloop", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return server, port
        except httpx.HTTPError:
            time.sleep(0.3)
    server.terminate()
    raise AssertionError(server.communicate(timeout=30)[0])


def _wrong_logins_from_spoofed_addresses(port: int, tries: int) -> list[int]:
    statuses = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
        for i in range(tries):
            csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', c.get("/login").text).group(1)
            r = c.post(
                "/login",
                data={"email": "admin@localhost", "password": "wrong password!", "csrf_token": csrf},
                headers={"X-Forwarded-For": f"198.51.100.{i + 1}"},
            )
            statuses.append(r.status_code)
    return statuses


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
def test_served_app_ignores_spoofed_forwarded_for_from_loopback_unless_trusted(tmp_path, trusted):
    # Through `instructloop serve`: uvicorn's own proxy headers (on by default for 127.0.0.1) must
    # follow INSTRUCTLOOP_TRUSTED_PROXIES too, or the client address is forged before the app sees it.
    server, port = _serve(tmp_path, INSTRUCTLOOP_TRUSTED_PROXIES=trusted)
    try:
        statuses = _wrong_logins_from_spoofed_addresses(port, 7)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    if trusted:  # each forwarded address is its own client: none reaches its limit
        assert statuses == [401] * 7
    else:  # one client, 127.0.0.1: throttled after its 5 failures
        assert statuses == [401] * 5 + [429] * 2


# -- 10: reset links: their own short lifetime, and no untrusted Host in a link ------------------


def _reset_page(client: TestClient, user_id: int, **headers) -> str:
    return client.post(
        f"/admin/users/{user_id}/reset-link",
        data={"csrf_token": csrf_of(client, "/admin/users")},
        headers=headers,
    ).text


def _reset_link(client: TestClient, user_id: int, **headers) -> str:
    return _reset_page(client, user_id, **headers).split('id="reset-link">')[1].split("<")[0]


def test_reset_links_live_one_hour_by_default_and_follow_the_setting(admin_client, make_user, session, settings):
    user = make_user("a@example.com")
    assert settings.reset_ttl_s == 3600
    _reset_link(admin_client, user.id)
    expires = session.scalar(select(PasswordReset.expires_at).where(PasswordReset.used_at.is_(None)))
    assert abs((expires - utcnow()) - timedelta(hours=1)) < timedelta(minutes=1)
    settings.reset_ttl_s = 600
    _reset_link(admin_client, user.id)
    session.expire_all()
    expires = session.scalar(select(PasswordReset.expires_at).where(PasswordReset.used_at.is_(None)))
    assert abs((expires - utcnow()) - timedelta(minutes=10)) < timedelta(minutes=1)


def test_links_without_a_public_url_never_carry_an_untrusted_host(admin_client, make_user, settings):
    user = make_user("a@example.com")
    assert settings.public_url == "" and settings.allowed_hosts == ""
    page = _reset_page(admin_client, user.id, Host="evil.example")
    assert "evil.example" not in page and 'id="reset-link">/reset/' in page
    assert "Set INSTRUCTLOOP_PUBLIC_URL" in page  # the admin is told why, and what to set
    # A loopback address (a server on this machine) is trusted: the link is whole.
    assert _reset_link(admin_client, user.id, Host="localhost:8000").startswith("http://localhost:8000/reset/")
    # So is a host on the allow-list the server already enforces.
    settings.allowed_hosts = "label.example.com"
    assert _reset_link(admin_client, user.id, Host="label.example.com").startswith("http://label.example.com/reset/")


def test_invite_links_without_a_public_url_never_carry_an_untrusted_host(admin_client):
    page = admin_client.post(
        "/admin/users/invite",
        data={"email": "new@example.com", "role": "labeler", "csrf_token": csrf_of(admin_client, "/admin/users")},
        headers={"Host": "evil.example"},
    ).text
    link = page.split('id="invite-link">')[1].split("<")[0]
    assert link.startswith("/invite/") and "evil.example" not in page


# -- 11: a chunked body over the limit gets 413 ------------------------------------------------


def _chunks(total: int, size: int = 64 * 1024):
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def test_chunked_body_over_the_limit_gets_413(client, settings):
    over = settings.max_body_bytes + 1
    r = client.post("/login", content=_chunks(over), headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413 and "text/html" in r.headers["content-type"] and "too large" in r.text
    r = client.post("/api/v1/projects", content=_chunks(over), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    # The intake's smaller limit, chunked too.
    r = client.post(
        "/api/v1/projects/1/intake", content=_chunks(1_000_001), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_chunked_body_under_the_limit_is_read(client, make_user):
    make_user("a@example.com")
    csrf = csrf_of(client)
    body = f"email=a%40example.com&password={PASSWORD.replace(' ', '+')}&csrf_token={csrf}".encode()
    r = client.post(
        "/login", content=iter([body[:10], body[10:]]), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 303


# -- 13: a disabled account is refused like a wrong password -----------------------------------


def _error(page: str) -> str:
    return re.search(r'role="alert"[^>]*>([^<]*)<', page).group(1).strip()


def test_disabled_account_refused_like_a_wrong_password(client, make_user, session, monkeypatch):
    make_user("a@example.com")
    wrong = login(client, "a@example.com", "wrong password!")
    user = session.scalar(select(User).where(User.email == "a@example.com"))
    user.is_active = False
    session.commit()
    checks = []
    real = accounts.verify_password
    monkeypatch.setattr(accounts, "verify_password", lambda h, p: checks.append(p) or real(h, p))
    disabled = login(client, "a@example.com")  # the right password
    assert disabled.status_code == wrong.status_code == 401
    assert _error(disabled.text) == _error(wrong.text) == "Wrong email or password."
    assert "disabled" not in disabled.text
    assert checks == [PASSWORD]  # the password was still checked: the same time as a wrong one
    # Counted as a failure like any wrong password: the throttle can't tell the two apart either.
    assert session.scalar(select(func.count()).select_from(LoginFailure)) == 2


def test_disabled_account_and_wrong_password_get_the_same_page(client, make_user, session, settings):
    make_user("a@example.com")
    make_user("b@example.com")
    session.get(User, session.scalar(select(User.id).where(User.email == "b@example.com"))).is_active = False
    session.commit()
    csrf = csrf_of(client)
    pages = [
        client.post("/login", data={"email": email, "password": pw, "csrf_token": csrf})
        for email, pw in (("a@example.com", "wrong password!"), ("b@example.com", PASSWORD))
    ]
    bodies = [p.text.replace("a@example.com", "EMAIL").replace("b@example.com", "EMAIL") for p in pages]
    assert pages[0].status_code == pages[1].status_code and bodies[0] == bodies[1]
