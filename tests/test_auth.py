"""Accounts: login, logout, throttling, roles, CSRF, invites, API tokens — and each bad input."""

from datetime import timedelta

from sqlalchemy import select

from app import policies
from app.db import utcnow
from app.models import ApiToken, Invite, LoginFailure, Role, User
from app.security import SESSION_COOKIE, hash_password, verify_password
from app.services import accounts
from tests.conftest import PASSWORD, csrf_of, login


def test_password_hash_is_argon2id_and_verifies():
    h = hash_password("a long password")
    assert h.startswith("$argon2id$")
    assert verify_password(h, "a long password")
    assert not verify_password(h, "another password")
    assert not verify_password(None, "anything")


def test_login_sets_httponly_lax_cookie_and_renews_session(client, make_user):
    make_user("a@example.com")
    client.get("/login")
    before = client.cookies.get(SESSION_COOKIE)
    r = login(client, "a@example.com")
    assert r.status_code == 303
    set_cookie = r.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "samesite=lax" in set_cookie.lower()
    assert client.cookies.get(SESSION_COOKIE) != before  # a fresh session id at login
    assert client.get("/label").status_code == 200


def test_secure_cookie_when_configured(settings, make_user):
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings.cookie_secure = True
    with TestClient(create_app(settings), base_url="https://testserver") as c:
        r = c.get("/login")
        assert "secure" in r.headers["set-cookie"].lower()


def test_wrong_password_unknown_user_and_disabled_user(client, make_user, session):
    make_user("a@example.com")
    r = login(client, "a@example.com", "wrong password!")
    assert r.status_code == 401 and "Wrong email or password." in r.text
    r = login(client, "nobody@example.com")
    assert r.status_code == 401 and "Wrong email or password." in r.text
    user = session.scalar(select(User).where(User.email == "a@example.com"))
    user.is_active = False
    session.commit()
    r = login(client, "a@example.com")  # the right password: refused like a wrong one (issue 27)
    assert r.status_code == 401 and "Wrong email or password." in r.text and "disabled" not in r.text
    assert client.get("/label").status_code == 303


def test_disabled_user_loses_running_session(client, make_user, session):
    user = make_user("a@example.com")
    login(client, user.email)
    session.get(User, user.id).is_active = False
    session.commit()
    r = client.get("/label")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_login_throttled_after_repeated_failures(client, make_user, settings):
    make_user("a@example.com")
    for _ in range(settings.login_max_failures):
        assert login(client, "a@example.com", "wrong password!").status_code == 401
    r = login(client, "a@example.com")  # even the right password waits
    assert r.status_code == 429
    assert "Too many failed attempts" in r.text and "minute" in r.text


def test_throttle_window_expires(client, make_user, session, settings):
    make_user("a@example.com")
    old = utcnow() - timedelta(seconds=settings.login_window_s + 5)
    session.add_all([LoginFailure(email="a@example.com", at=old) for _ in range(settings.login_max_failures)])
    session.commit()
    assert login(client, "a@example.com").status_code == 303


def test_successful_login_clears_failures(client, make_user, session):
    make_user("a@example.com")
    login(client, "a@example.com", "wrong password!")
    assert login(client, "a@example.com").status_code == 303
    assert session.scalars(select(LoginFailure)).all() == []


def test_logout(labeler_client):
    r = labeler_client.post("/logout", data={"csrf_token": csrf_of(labeler_client, "/label")})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert labeler_client.get("/label").status_code == 303


def test_open_redirect_refused(client, make_user):
    make_user("a@example.com")
    token = csrf_of(client)
    r = client.post(
        "/login", data={"email": "a@example.com", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/"}
    )
    assert r.headers["location"] == "/"


def test_missing_and_wrong_csrf_token(client, make_user):
    make_user("a@example.com")
    client.get("/login")
    r = client.post("/login", data={"email": "a@example.com", "password": PASSWORD})
    assert r.status_code == 403 and "expired" in r.text
    r = client.post("/login", data={"email": "a@example.com", "password": PASSWORD, "csrf_token": "0" * 64})
    assert r.status_code == 403
    # a token from another browser session does not work either
    other = csrf_of(client)
    client.cookies.clear()
    client.get("/login")
    r = client.post("/login", data={"email": "a@example.com", "password": PASSWORD, "csrf_token": other})
    assert r.status_code == 403


def test_csrf_header_for_htmx(labeler_client):
    token = csrf_of(labeler_client, "/label")
    r = labeler_client.post("/logout", headers={"X-CSRF-Token": token, "HX-Request": "true"})
    assert r.status_code == 303
    r = labeler_client.post("/logout", headers={"X-CSRF-Token": "nope", "HX-Request": "true"})
    assert r.status_code == 403


def test_anonymous_redirected_to_login_on_pages(client):
    for path in ("/label", "/admin", "/admin/users", "/account"):
        r = client.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"] == f"/login?next={path}"


def test_labeler_gets_403_on_admin_pages(labeler_client):
    for path in ("/admin", "/admin/users"):
        r = labeler_client.get(path)
        assert r.status_code == 403 and "for admins" in r.text
    r = labeler_client.post(
        "/admin/users/invite", data={"email": "x@example.com", "csrf_token": csrf_of(labeler_client, "/label")}
    )
    assert r.status_code == 403


def test_admin_sees_dashboard(admin_client):
    r = admin_client.get("/admin")
    assert r.status_code == 200 and "Dashboard" in r.text


def test_policies():
    labeler = User(email="l@x", role=Role.labeler, is_active=True)
    admin = User(email="a@x", role=Role.admin, is_active=True)
    disabled = User(email="d@x", role=Role.admin, is_active=False)
    assert policies.can_label(labeler) and policies.can_label(admin)
    assert not policies.can_admin(labeler) and policies.can_admin(admin)
    assert not policies.can_admin(disabled) and not policies.can_label(disabled)
    assert not policies.can_label(None) and not policies.can_admin(None)


def _invite(admin_client) -> str:
    r = admin_client.post(
        "/admin/users/invite",
        data={"email": "New@Example.com", "role": "labeler", "csrf_token": csrf_of(admin_client, "/admin/users")},
    )
    assert r.status_code == 200
    link = r.text.split('id="invite-link">')[1].split("<")[0]
    assert "/invite/" in link
    return link.split("/invite/")[1]


def test_invite_flow(admin_client, app):
    from fastapi.testclient import TestClient

    token = _invite(admin_client)
    with TestClient(app, follow_redirects=False) as browser:
        assert "new@example.com" in browser.get(f"/invite/{token}").text
        csrf = csrf_of(browser, f"/invite/{token}")
        r = browser.post(f"/invite/{token}", data={"password": "short", "password2": "short", "csrf_token": csrf})
        assert r.status_code == 400 and "at least 10" in r.text
        r = browser.post(
            f"/invite/{token}", data={"password": PASSWORD, "password2": PASSWORD + "x", "csrf_token": csrf}
        )
        assert r.status_code == 400 and "differ" in r.text
        r = browser.post(
            f"/invite/{token}", data={"password": PASSWORD, "password2": PASSWORD, "csrf_token": csrf, "name": "Nia"}
        )
        assert r.status_code == 303
        assert browser.get("/label").status_code == 200
    with TestClient(app, follow_redirects=False) as other:
        r = other.get(f"/invite/{token}")  # reused
        assert r.status_code == 410 and "already used" in r.text
        assert login(other, "new@example.com").status_code == 303


def test_expired_and_unknown_invite(client, session):
    token = accounts.create_invite(session, "late@example.com", role=Role.labeler, created_by=None, ttl_s=60)
    session.scalar(select(Invite)).expires_at = utcnow() - timedelta(seconds=1)
    session.commit()
    r = client.get(f"/invite/{token}")
    assert r.status_code == 410 and "expired" in r.text
    r = client.post(
        f"/invite/{token}", data={"password": PASSWORD, "password2": PASSWORD, "csrf_token": csrf_of(client)}
    )
    assert r.status_code == 410
    assert session.scalar(select(User).where(User.email == "late@example.com")) is None
    assert client.get("/invite/not-a-token").status_code == 404


def test_invite_for_existing_user_refused(admin_client):
    r = admin_client.post(
        "/admin/users/invite", data={"email": "admin@example.com", "csrf_token": csrf_of(admin_client, "/admin/users")}
    )
    assert r.status_code == 409 and "already exists" in r.text


def test_admin_disables_user(admin_client, make_user, session):
    user = make_user("l@example.com")
    r = admin_client.post(
        f"/admin/users/{user.id}/active", data={"active": "false", "csrf_token": csrf_of(admin_client, "/admin/users")}
    )
    assert r.status_code == 303
    session.expire_all()
    assert session.get(User, user.id).is_active is False
    # an admin cannot lock themselves out
    r = admin_client.post(
        f"/admin/users/{admin_client.user.id}/active",
        data={"active": "false", "csrf_token": csrf_of(admin_client, "/admin/users")},
    )
    session.expire_all()
    assert session.get(User, admin_client.user.id).is_active is True


def test_api_token_lifecycle(labeler_client, client, session):
    r = client.get("/api/v1/me")
    assert r.status_code == 401 and r.json()["detail"].startswith("Authentication required")
    assert "make a token on your Account page" in r.json()["detail"], "what to do, in /api/docs too (issue 28)"
    r = labeler_client.post(
        "/account/tokens", data={"name": "script", "csrf_token": csrf_of(labeler_client, "/account")}
    )
    token = r.text.split('id="new-token">')[1].split("<")[0]
    assert token.startswith("il_")
    stored = session.scalar(select(ApiToken))
    assert stored.token_hash != token and token not in stored.token_hash  # stored hashed
    me = labeler_client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["email"] == "labeler@example.com"
    assert labeler_client.get("/api/v1/me", headers={"Authorization": "Bearer il_wrong"}).status_code == 401
    assert labeler_client.get("/api/v1/me", headers={"Authorization": f"Basic {token}"}).status_code == 401
    r = labeler_client.post(
        f"/account/tokens/{stored.id}/revoke", data={"csrf_token": csrf_of(labeler_client, "/account")}
    )
    assert r.status_code == 303
    assert labeler_client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_api_token_of_disabled_user_refused(session, make_user, client):
    user = make_user("l@example.com")
    token = accounts.create_api_token(session, user)
    user.is_active = False
    session.commit()
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_cannot_revoke_someone_elses_token(labeler_client, make_user, session):
    other = make_user("o@example.com")
    accounts.create_api_token(session, other)
    session.commit()
    token_id = session.scalar(select(ApiToken.id))
    r = labeler_client.post(
        f"/account/tokens/{token_id}/revoke", data={"csrf_token": csrf_of(labeler_client, "/account")}
    )
    assert r.status_code == 404
    session.expire_all()
    assert session.get(ApiToken, token_id).revoked_at is None


def test_huge_body_refused(client):
    r = client.post(
        "/login", content=b"x" * (11 * 1024 * 1024), headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 413 and "text/html" in r.headers["content-type"] and "too large" in r.text  # a page
    r = client.post("/api/v1/projects", content=b"x" * (11 * 1024 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_unknown_page_is_404(client):
    assert client.get("/nope").status_code == 404
    assert client.get("/api/v1/nope").json()["detail"] == "Not Found"


def test_unknown_email_costs_one_password_check_like_a_known_one(session, make_user, monkeypatch):
    # Login timing must not tell which emails exist: both paths run exactly one argon2 verification.
    make_user("a@example.com")
    calls = []
    real = accounts.verify_password
    monkeypatch.setattr(accounts, "verify_password", lambda h, p: calls.append(h) or real(h, p))
    for email in ("a@example.com", "nobody@example.com"):
        try:
            accounts.authenticate(
                session, email, "wrong password!", ip="1.2.3.4", max_failures=5, max_failures_per_ip=20, window_s=900
            )
        except accounts.LoginError:
            pass
    assert len(calls) == 2 and calls[0] is not None and calls[1] is None


def test_a_stranger_does_not_lock_the_owner_out(session, make_user):
    make_user("a@example.com")
    limits = {"max_failures": 5, "max_failures_per_ip": 20, "window_s": 900}
    for _ in range(5):
        try:
            accounts.authenticate(session, "a@example.com", "wrong password!", ip="6.6.6.6", **limits)
        except accounts.LoginError:
            pass
    try:
        accounts.authenticate(session, "a@example.com", PASSWORD, ip="6.6.6.6", **limits)
        raise AssertionError("the guesser was not throttled")
    except accounts.LoginThrottled:
        pass
    assert accounts.authenticate(session, "a@example.com", PASSWORD, ip="10.0.0.1", **limits).email == "a@example.com"


def test_one_ip_trying_many_emails_is_throttled(session):
    outcomes = []
    for i in range(25):
        try:
            accounts.authenticate(
                session,
                f"user{i}@example.com",
                "wrong password!",
                ip="6.6.6.6",
                max_failures=5,
                max_failures_per_ip=20,
                window_s=900,
            )
        except accounts.ServiceError as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes == ["LoginError"] * 20 + ["LoginThrottled"] * 5


def test_parallel_guesses_get_at_most_the_limit_of_checks(engine, make_user):
    import threading

    from app.db import make_sessionmaker

    make_user("a@example.com")
    factory, outcomes, start = make_sessionmaker(engine), [], threading.Barrier(30)

    def guess(i: int) -> None:
        start.wait()
        with factory() as s:
            try:
                accounts.authenticate(
                    s,
                    "a@example.com",
                    f"wrong guess {i}",
                    ip="6.6.6.6",
                    max_failures=5,
                    max_failures_per_ip=100,
                    window_s=900,
                )
            except accounts.ServiceError as exc:
                outcomes.append(type(exc).__name__)
            s.commit()

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 30
    assert outcomes.count("LoginError") == 5 and outcomes.count("LoginThrottled") == 25


def test_admin_can_clear_a_users_login_failures(session, make_user):
    user = make_user("a@example.com")
    for _ in range(3):
        try:
            accounts.authenticate(
                session,
                "a@example.com",
                "wrong password!",
                ip="6.6.6.6",
                max_failures=5,
                max_failures_per_ip=20,
                window_s=900,
            )
        except accounts.LoginError:
            pass
    assert accounts.clear_login_failures(session, user.id) == 3


def test_common_and_repetitive_passwords_are_refused(session):
    for weak in ("aaaaaaaaaa", "password123456", "qwertyuiop1", "1234567890"):
        try:
            accounts.create_user(session, "w@example.com", weak)
            raise AssertionError(f"{weak!r} was accepted")
        except accounts.ServiceError as exc:
            assert "Try a few uncommon words" in exc.message
    assert accounts.create_user(session, "w@example.com", "plum harbor quietly").email == "w@example.com"
