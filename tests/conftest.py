"""Fixtures: every database test runs on SQLite and, when TEST_DATABASE_URL is set, on Postgres.

The schema comes from the Alembic migrations (once per run), so the tests exercise what
production runs. Postgres tables are truncated between tests; SQLite gets a copy of a
migrated template file per test."""

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.main import create_app
from app.migrate import upgrade
from app.models import Base, Role, User
from app.services import accounts, stats

PASSWORD = "correct horse battery"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pytest_configure(config):
    config.addinivalue_line("markers", "postgres: runs on the Postgres at TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _postgres_engine() -> Iterator[Engine]:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("TEST_DATABASE_URL is not set: Postgres tests skipped")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    upgrade(url)
    yield engine
    engine.dispose()


@pytest.fixture(params=DATABASES)
def db_url(request, tmp_path, _sqlite_template) -> str:
    stats.clear_memos()  # remembered admin figures would outlive the wiped database
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copy(_sqlite_template, path)
        return f"sqlite:///{path}"
    engine = request.getfixturevalue("_postgres_engine")
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return Settings(DATABASE_URL=db_url, INSTRUCTLOOP_DATA_DIR=tmp_path / "data", SECRET_KEY="test-secret-key")


@pytest.fixture
def engine(settings) -> Iterator[Engine]:
    engine = make_engine(settings.db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine) -> Iterator[Session]:
    with make_sessionmaker(engine)() as session:
        yield session


@pytest.fixture
def app(settings):
    app = create_app(settings)
    yield app
    app.state.engine.dispose()


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app, base_url="http://testserver", follow_redirects=False) as client:
        yield client


@pytest.fixture
def make_user(session):
    def make(email: str = "labeler@example.com", role: Role = Role.labeler, password: str = PASSWORD) -> User:
        user = accounts.create_user(session, email, password, role=role)
        session.commit()
        return user

    return make


def csrf_of(client: TestClient, path: str = "/login") -> str:
    """The CSRF token of this client's browser session, read from a page's form."""
    html = client.get(path).text
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert match, f"no csrf token on {path}"
    return match.group(1)


def login(client: TestClient, email: str, password: str = PASSWORD):
    token = csrf_of(client)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


@pytest.fixture
def labeler_client(client, make_user) -> TestClient:
    user = make_user("labeler@example.com", Role.labeler)
    assert login(client, user.email).status_code == 303
    client.user = user
    return client


@pytest.fixture
def admin_client(client, make_user) -> TestClient:
    user = make_user("admin@example.com", Role.admin)
    assert login(client, user.email).status_code == 303
    client.user = user
    return client
