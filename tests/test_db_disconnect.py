"""A database connection lost inside a transaction (Postgres restarted, the backend terminated) ends
the request with the database's own error, which the app answers with 503 "try again shortly":
found by bench/fault_run.py, where a Postgres restart during a `next` request gave a 500 (the
rollback listener that forgets figure writes asked the dead connection for its info, which raised
PendingRollbackError instead)."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import atomic


def _terminate_self(engine, session: Session) -> None:
    pid = session.scalar(text("SELECT pg_backend_pid()"))
    with engine.connect() as other:  # waits up to 5 s for the backend to be gone
        assert other.scalar(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})


def test_a_connection_lost_inside_an_atomic_step_raises_the_database_error(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("terminating a backend is a Postgres scenario")

    @atomic
    def step(session: Session) -> None:
        session.execute(text("UPDATE tasks SET priority = priority WHERE id = 0"))  # a figure-table write
        _terminate_self(engine, session)
        session.execute(text("SELECT 1"))

    with Session(engine) as session:
        with pytest.raises(OperationalError):
            step(session)
        assert session.scalar(text("SELECT 1")) == 1  # the session goes on with a new connection


def test_the_app_answers_503_when_its_connection_dies_in_a_request(settings, engine, monkeypatch):
    if engine.dialect.name != "postgresql":
        pytest.skip("terminating a backend is a Postgres scenario")
    from app.main import create_app
    from app.models import Role
    from app.services import accounts, queue

    with Session(engine) as session:
        user = accounts.create_user(session, "dies@example.com", None, role=Role.labeler)
        token = accounts.create_api_token(session, user)
        session.commit()
    real = queue.work_list

    def dying(session: Session, user_id: int):
        _terminate_self(session.get_bind(), session)
        return real(session, user_id)

    monkeypatch.setattr(queue, "work_list", atomic(dying))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.get("/api/v1/work", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 503, r.text
