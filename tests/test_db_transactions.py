"""Transactions on both databases: a request that read before another connection committed can
still write (SQLite used to refuse it with "database is locked"), and rollbacks undo everything."""

import sqlite3

import pytest
from sqlalchemy import select

from app.db import make_sessionmaker, write_session
from app.models import User
from app.services import accounts


def test_a_write_after_another_connections_commit_succeeds(engine):
    make = make_sessionmaker(engine)
    with make() as s:
        accounts.create_user(s, "first@example.com", None)
        s.commit()
    with make() as request, make() as worker:
        user = request.scalar(select(User).where(User.email == "first@example.com"))  # the request reads
        accounts.create_user(worker, "worker@example.com", None)  # meanwhile the worker writes
        worker.commit()
        user.name = "Renamed"  # then the request writes
        request.commit()
    with make() as s:
        assert s.scalar(select(User.name).where(User.email == "first@example.com")) == "Renamed"
        assert s.scalar(select(User.id).where(User.email == "worker@example.com")) is not None


def test_a_rollback_undoes_every_write_and_a_savepoint_only_its_own(engine):
    make = make_sessionmaker(engine)
    with make() as s:
        accounts.create_user(s, "kept@example.com", None)
        with pytest.raises(RuntimeError), s.begin_nested():
            accounts.create_user(s, "inner@example.com", None)
            raise RuntimeError("undo the savepoint")
        s.commit()
    with make() as s:
        accounts.create_user(s, "dropped@example.com", None)
        s.flush()
        s.rollback()
    with make() as s:
        assert set(s.scalars(select(User.email))) == {"kept@example.com"}


def test_write_session_reads_and_writes_as_one_unit(engine):
    make = make_sessionmaker(engine)
    with write_session(engine) as ws:
        ws.scalar(select(User.id).limit(1))
        if engine.dialect.name == "sqlite":  # the writer lock is held from the start, before any write
            other = sqlite3.connect(engine.url.database, timeout=0.1)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            other.close()
        accounts.create_user(ws, "locked@example.com", None)
        assert ws.scalar(select(User.id).where(User.email == "locked@example.com")) is not None
    with make() as s:
        assert s.scalar(select(User.id).where(User.email == "locked@example.com")) is not None
