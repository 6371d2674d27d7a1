"""Server-side sessions: logout, password change, disabling and admin actions end a session at once;
reset links; races on invites and project names answered 409/410, never 500."""

import threading

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import make_sessionmaker
from app.models import Project, Role, User
from app.security import SESSION_COOKIE
from app.services import ServiceError, accounts, projects
from tests.conftest import PASSWORD, csrf_of, login

NEW_PASSWORD = "plum harbor quietly"


def _copy(client: TestClient, app) -> TestClient:
    """A second browser holding a copy of this client's session cookie."""
    other = TestClient(app, base_url="http://testserver", follow_redirects=False)
    other.cookies.set(SESSION_COOKIE, client.cookies.get(SESSION_COOKIE))
    return other


def test_a_cookie_copied_before_logout_is_refused_after(app, labeler_client):
    thief = _copy(labeler_client, app)
    assert thief.get("/account").status_code == 200
    labeler_client.post("/logout", data={"csrf_token": csrf_of(labeler_client, "/label")})
    assert thief.get("/account").status_code == 303
    r = thief.post("/account/tokens", data={"name": "x", "csrf_token": csrf_of(thief, "/login")})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_password_change_keeps_this_session_and_ends_the_others(app, client, make_user):
    make_user("a@example.com")
    login(client, "a@example.com")
    elsewhere = TestClient(app, base_url="http://testserver", follow_redirects=False)
    login(elsewhere, "a@example.com")
    weak = client.post(
        "/account/password",
        data={
            "current": PASSWORD,
            "password": "aaaaaaaaaa",
            "password2": "aaaaaaaaaa",
            "csrf_token": csrf_of(client, "/account"),
        },
    )
    assert weak.status_code == 400 and "Repeats" in weak.text
    wrong = client.post(
        "/account/password",
        data={
            "current": "not it at all",
            "password": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
            "csrf_token": csrf_of(client, "/account"),
        },
    )
    assert wrong.status_code == 400 and "current password is wrong" in wrong.text
    ok = client.post(
        "/account/password",
        data={
            "current": PASSWORD,
            "password": NEW_PASSWORD,
            "password2": NEW_PASSWORD,
            "csrf_token": csrf_of(client, "/account"),
        },
    )
    assert ok.status_code == 303
    assert client.get("/account").status_code == 200
    assert elsewhere.get("/account").status_code == 303
    fresh = TestClient(app, base_url="http://testserver", follow_redirects=False)
    assert login(fresh, "a@example.com", NEW_PASSWORD).status_code == 303


def test_sign_out_everywhere_else(app, client, make_user):
    make_user("a@example.com")
    login(client, "a@example.com")
    other = TestClient(app, base_url="http://testserver", follow_redirects=False)
    login(other, "a@example.com")
    page = client.get("/account").text
    assert page.count("this browser") == 1
    client.post("/account/sessions/end-others", data={"csrf_token": csrf_of(client, "/account")})
    assert client.get("/account").status_code == 200 and other.get("/account").status_code == 303


def test_disabling_ends_sessions_and_tokens_for_good(app, admin_client, make_user, session):
    user = make_user("a@example.com")
    browser = TestClient(app, base_url="http://testserver", follow_redirects=False)
    login(browser, "a@example.com")
    token = accounts.create_api_token(session, user)
    session.commit()
    api = {"Authorization": f"Bearer {token}"}
    assert browser.get("/account").status_code == 200 and admin_client.get("/api/v1/me", headers=api).status_code == 200
    csrf = csrf_of(admin_client, "/admin/users")
    admin_client.post(f"/admin/users/{user.id}/active", data={"active": "false", "csrf_token": csrf})
    admin_client.post(f"/admin/users/{user.id}/active", data={"active": "true", "csrf_token": csrf})
    assert browser.get("/account").status_code == 303  # the old cookie does not come back
    assert admin_client.get("/api/v1/me", headers=api).status_code == 401


def test_admin_signs_a_user_out_everywhere_and_unlocks_them(app, admin_client, make_user, session):
    user = make_user("a@example.com")
    browser = TestClient(app, base_url="http://testserver", follow_redirects=False)
    login(browser, "a@example.com")
    token = accounts.create_api_token(session, user)
    session.commit()
    csrf = csrf_of(admin_client, "/admin/users")
    r = admin_client.post(f"/admin/users/{user.id}/end-access", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert "Ended 1 session and revoked 1 API token" in admin_client.get("/admin/users").text
    assert browser.get("/account").status_code == 303
    assert browser.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    for _ in range(3):
        login(browser, "a@example.com", "wrong password!")
    admin_client.post(f"/admin/users/{user.id}/unlock", data={"csrf_token": csrf})
    assert "Cleared 3 failed logins" in admin_client.get("/admin/users").text


def test_reset_link_sets_a_password_once_and_ends_sessions(app, admin_client, make_user):
    user = make_user("a@example.com")
    browser = TestClient(app, base_url="http://testserver", follow_redirects=False)
    login(browser, "a@example.com")
    page = admin_client.post(
        f"/admin/users/{user.id}/reset-link", data={"csrf_token": csrf_of(admin_client, "/admin/users")}
    ).text
    path = page.split('id="reset-link">')[1].split("<")[0]  # no public address set: the bare path
    assert path.startswith("/reset/")
    stranger = TestClient(app, base_url="http://testserver", follow_redirects=False)
    assert "a@example.com" in stranger.get(path).text
    csrf = csrf_of(stranger, path)
    assert stranger.post(path, data={"password": "short", "password2": "short", "csrf_token": csrf}).status_code == 400
    r = stranger.post(path, data={"password": NEW_PASSWORD, "password2": NEW_PASSWORD, "csrf_token": csrf})
    assert r.status_code == 303
    assert browser.get("/account").status_code == 303
    assert login(stranger, "a@example.com", NEW_PASSWORD).status_code == 303
    assert stranger.get(path).status_code == 410


def test_parallel_accepts_of_one_invite_make_one_account(engine, session):
    token = accounts.create_invite(session, "new@example.com", role=Role.labeler, created_by=None, ttl_s=3600)
    session.commit()
    factory, outcomes, start = make_sessionmaker(engine), [], threading.Barrier(7)

    def accept() -> None:
        start.wait()
        with factory() as s:
            try:
                accounts.accept_invite(s, token, NEW_PASSWORD)
                s.commit()
                outcomes.append(201)
            except ServiceError as exc:
                s.rollback()
                outcomes.append(exc.status_code)

    threads = [threading.Thread(target=accept) for _ in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == [201] + [410] * 6
    assert session.scalar(select(func.count(User.id)).where(User.email == "new@example.com")) == 1


def test_parallel_creates_of_one_name_in_any_case_make_one_project(engine, session):
    factory, outcomes, start = make_sessionmaker(engine), [], threading.Barrier(6)
    names = ["Chat", "chat", "CHAT", "Chat", "cHat", "chat "]

    def create(name: str) -> None:
        start.wait()
        with factory() as s:
            try:
                projects.create_project(s, projects.ProjectSettings(name=name))
                s.commit()
                outcomes.append(201)
            except ServiceError as exc:
                s.rollback()
                outcomes.append(exc.status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == [201] + [409] * 5
    assert session.scalar(select(func.count(Project.id))) == 1


def test_links_use_the_public_address_not_the_host_header(settings, make_user):
    from tests.conftest import login as log_in

    settings.public_url = "https://label.example.com/"
    settings.allowed_hosts = ""
    from app.main import create_app

    app = create_app(settings)
    admin = make_user("admin@example.com", Role.admin)
    target = make_user("a@example.com")
    with TestClient(app, base_url="http://testserver", follow_redirects=False) as client:
        log_in(client, admin.email)
        csrf = csrf_of(client, "/admin/users")
        page = client.post(
            "/admin/users/invite",
            data={"email": "new@example.com", "role": "labeler", "csrf_token": csrf},
            headers={"Host": "evil.example"},
        ).text
        assert 'id="invite-link">https://label.example.com/invite/' in page and "evil.example" not in page
        page = client.post(
            f"/admin/users/{target.id}/reset-link", data={"csrf_token": csrf}, headers={"Host": "evil.example"}
        ).text
        assert 'id="reset-link">https://label.example.com/reset/' in page
    app.state.engine.dispose()


def test_allowed_hosts_refuse_other_host_headers(settings):
    from app.main import create_app

    settings.allowed_hosts = "label.example.com, testserver"
    app = create_app(settings)
    with TestClient(app, base_url="http://testserver") as client:
        assert client.get("/login").status_code == 200
        assert client.get("/login", headers={"Host": "evil.example"}).status_code == 400
    app.state.engine.dispose()
