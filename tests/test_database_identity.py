"""Each database has its own random id, made once: run folders live under it, so two databases
sharing a data folder (both with a run 1) never write into the same folder."""

from app.db import make_engine, make_sessionmaker
from app.migrate import upgrade
from app.services import registry


def test_a_database_keeps_one_id_and_another_gets_its_own(session, tmp_path):
    first = registry.database_id(session)
    session.commit()
    assert len(first) == 32 and registry.database_id(session) == first
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other_url)
    engine = make_engine(other_url)
    with make_sessionmaker(engine)() as other:
        assert registry.database_id(other) != first
    engine.dispose()
