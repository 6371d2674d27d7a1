import time

import pytest
from sqlalchemy import text


def test_pool_replaces_a_connection_the_server_closed(engine):
    # make_engine has no pool_pre_ping: a pooled connection the server ended (restart, kill,
    # idle timeout) must still be replaced at checkout, not handed to a request that then fails.
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite connections are files; nothing closes them from outside")
    with engine.connect() as killer:
        with engine.connect() as conn:
            old_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        # back in the pool, idle: now the server ends it
        assert killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": old_pid}).scalar()
        # Once the backend has exited, its closing message is on the idle socket.
        deadline = time.monotonic() + 10
        while True:
            killer.rollback()  # a fresh statistics snapshot on each look
            if not killer.execute(text("SELECT 1 FROM pg_stat_activity WHERE pid = :pid"), {"pid": old_pid}).first():
                break
            assert time.monotonic() < deadline, "the terminated backend is still there"
            time.sleep(0.01)
    for _ in range(3):  # every pooled connection works, and the killed one was replaced
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != old_pid
