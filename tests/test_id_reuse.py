"""Ids are never reused (SQLite tables are AUTOINCREMENT, migration 0010), and an invite grants only
the projects it named, never one made after it, whatever that project's id."""

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from app.db import make_engine
from app.migrate import upgrade
from app.models import Project, ProjectMember, Role, User
from app.services import accounts, projects
from tests.conftest import csrf_of


def _members_only(session, name: str) -> Project:
    project = projects.create_project(session, projects.ProjectSettings(name=name))
    projects.set_members(session, project.id, True, [])
    session.commit()
    return project


def test_a_deleted_projects_id_is_never_given_to_a_new_project(session):
    first = _members_only(session, "Secret one")
    projects.delete_project(session, first.id)
    session.commit()
    second = _members_only(session, "Secret two")
    assert second.id > first.id


def test_an_invite_naming_a_deleted_project_grants_no_project_made_after_it(client, session):
    invited_to = _members_only(session, "Invited to")
    token = accounts.create_invite(
        session, "new@example.com", role=Role.labeler, created_by=None, ttl_s=3600, project_ids=[invited_to.id]
    )
    session.commit()
    projects.delete_project(session, invited_to.id)
    session.commit()
    later = _members_only(session, "Made later")
    # The same id again, as SQLite handed out before 0010 (and a restored backup still can).
    reused = Project(id=invited_to.id, name="Reused id", members_only=True)
    session.add(reused)
    session.commit()

    form = {"name": "New", "password": "a long new password", "password2": "a long new password"}
    answer = client.post(f"/invite/{token}", data={**form, "csrf_token": csrf_of(client, f"/invite/{token}")})
    assert answer.status_code == 303, answer.text
    session.expire_all()
    user = session.scalar(select(User).where(User.email == "new@example.com"))
    assert user is not None
    assert session.scalars(select(ProjectMember.project_id).where(ProjectMember.user_id == user.id)).all() == []
    assert projects.member_ids(session, later.id) == projects.member_ids(session, reused.id) == []


def test_an_invite_still_grants_the_projects_it_named(session):
    kept = _members_only(session, "Kept")
    token = accounts.create_invite(
        session, "kept@example.com", role=Role.labeler, created_by=None, ttl_s=3600, project_ids=[kept.id]
    )
    session.commit()
    user = accounts.accept_invite(session, token, "a long new password")
    session.commit()
    assert projects.member_ids(session, kept.id) == [user.id]


PROJECT = (
    "INSERT INTO projects (id, name, description, k, overlap, max_demonstration_chars, targets, created_at, "
    "members_only, follow_up_turns) VALUES (:id, :name, '', 4, 1, 8000, '{}', '2026-01-01 00:00:00', 1, 0) RETURNING id"
)
USER = (
    "INSERT INTO users (id, email, name, role, is_active, created_at, simulated, left_out_of_training) "
    "VALUES (:id, :email, '', 'labeler', 1, '2026-01-01 00:00:00', 0, 0) RETURNING id"
)


def test_a_filled_sqlite_database_upgrades_with_its_rows_and_never_reuses_a_deleted_id(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0009_follow_ups")
    engine = make_engine(url)
    with engine.begin() as conn:
        for i in (1, 2, 3):
            conn.execute(text(PROJECT), {"id": i, "name": f"P{i}"})
        conn.execute(text(USER), {"id": 7, "email": "u@example.com"})
        conn.execute(text("INSERT INTO project_members (project_id, user_id, created_at) VALUES (2, 7, '2026-01-01')"))
        conn.execute(text("DELETE FROM projects WHERE id = 1"))
    engine.dispose()

    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT id, name FROM projects ORDER BY id")).all() == [(2, "P2"), (3, "P3")]
        assert conn.execute(text("SELECT project_id, user_id FROM project_members")).all() == [(2, 7)]
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
        assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1  # back on after the rebuild
        # Still one project per name whatever its case: the expression index survived the rebuild.
        with pytest.raises(IntegrityError), conn.begin_nested():
            conn.execute(text(PROJECT), {"id": None, "name": "p2"})
        assert conn.execute(text(PROJECT), {"id": None, "name": "P4"}).scalar_one() == 4
        # The largest ids, deleted: before 0010 SQLite gave them out again (an id deleted before the
        # upgrade is forgotten already; the invite check covers those).
        conn.execute(text("DELETE FROM projects WHERE id = 4"))
        conn.execute(text("DELETE FROM users WHERE id = 7"))
    with engine.begin() as conn:
        assert conn.execute(text(PROJECT), {"id": None, "name": "P5"}).scalar_one() == 5
        assert conn.execute(text(USER), {"id": None, "email": "v@example.com"}).scalar_one() == 8
    engine.dispose()
