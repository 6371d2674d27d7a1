from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_healthz_ok(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok"}


def test_healthz_503_when_database_unreachable(tmp_path):
    # A port where nothing listens: the check must answer 503 with a reason, not hang or 500.
    settings = Settings(
        DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/nope?connect_timeout=2",
        INSTRUCTLOOP_DATA_DIR=tmp_path,
        SECRET_KEY="k",
    )
    with TestClient(create_app(settings)) as client:
        r = client.get("/healthz")
        assert r.status_code == 503
        assert r.json() == {"status": "unavailable", "reason": "database unreachable"}  # no host or port
        assert "127.0.0.1" not in r.text and "5432" not in r.text
        r = client.get("/label", headers={"Cookie": ""})  # anonymous: no DB needed -> redirect
        assert r.status_code in (200, 303)


def test_pages_answer_a_503_page_when_database_goes_away(tmp_path):
    settings = Settings(
        DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/nope?connect_timeout=2",
        INSTRUCTLOOP_DATA_DIR=tmp_path,
        SECRET_KEY="k",
    )
    with TestClient(create_app(settings), follow_redirects=False) as client:
        token = client.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
        r = client.post("/login", data={"email": "a@example.com", "password": "x" * 12, "csrf_token": token})
        assert r.status_code == 503 and "text/html" in r.headers["content-type"] and "not reachable" in r.text
        api = client.get("/api/v1/me", headers={"Authorization": "Bearer il_x"})
        assert api.status_code == 503 and "not reachable" in api.json()["detail"]
