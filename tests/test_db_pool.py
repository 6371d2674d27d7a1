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
    time.sleep(0.3)  # the server's closing message reaches the idle socket
    for _ in range(3):  # every pooled connection works, and the killed one was replaced
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != old_pid
