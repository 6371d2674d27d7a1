"""Projects and guidelines: create/edit with every bad input, versions, preview."""

import re

from sqlalchemy import func, select

from app.models import GuidelineVersion, Project, Role
from app.services import Conflict, projects
from tests.conftest import csrf_of


def _form(client, **values):
    data = {
        "name": "Assistant",
        "k": "4",
        "overlap": "1",
        "lease_minutes": "",
        "description": "",
        "guidelines": "# Be helpful",
        "csrf_token": csrf_of(client, "/admin/projects/new"),
    }
    data.update(values)
    return data


def test_create_project_page_flow(admin_client, session):
    r = admin_client.post("/admin/projects", data=_form(admin_client, target_demonstration="100"))
    assert r.status_code == 303
    project = session.scalar(select(Project))
    assert r.headers["location"] == f"/admin/projects/{project.id}"
    assert project.targets == {"demonstration": 100}
    assert [g.version for g in project.guidelines] == [1]
    page = admin_client.get(f"/admin/projects/{project.id}")
    assert page.status_code == 200 and "Be helpful" in page.text and "of 100" in page.text
    assert "Assistant" in admin_client.get("/admin/projects").text


def test_duplicate_name_is_refused_with_a_message(admin_client, session):
    assert admin_client.post("/admin/projects", data=_form(admin_client)).status_code == 303
    r = admin_client.post("/admin/projects", data=_form(admin_client, name="  assistant "))
    assert r.status_code == 409
    assert "already exists" in r.text
    assert session.scalar(select(func.count(Project.id))) == 1
    assert session.scalar(select(func.count(GuidelineVersion.id))) == 1


def test_bad_k_overlap_and_lease_are_refused(admin_client, make_user, session):
    make_user("l1@example.com")
    make_user("l2@example.com")
    for values, message in [
        ({"k": "1"}, "between 2 and 9"),
        ({"k": "10"}, "between 2 and 9"),
        ({"overlap": "51"}, "at most 50"),
        ({"overlap": "0"}, "at least 1"),
        ({"lease_minutes": "0"}, "lease length"),
        ({"name": "   "}, "Give the project a name"),
        ({"target_ranking": "-5"}, "ranking target"),
    ]:
        r = admin_client.post("/admin/projects", data=_form(admin_client, **values))
        assert r.status_code == 400, values
        assert message in r.text, (values, re.findall(r"flash-error[^>]*>([^<]*)", r.text))
    # A number field holding text can't come from the page (type="number"): the typed form refuses it.
    r = admin_client.post("/admin/projects", data=_form(admin_client, k="four"))
    assert r.status_code == 422 and "Not a valid form" in r.text and "k: " in r.text
    assert session.scalar(select(func.count(Project.id))) == 0
    assert admin_client.post("/admin/projects", data=_form(admin_client, overlap="2")).status_code == 303


def test_overlap_above_the_labelers_is_a_warning_counting_only_active_real_labelers(session, make_user):
    from app.services import accounts

    make_user("l1@example.com")
    off = make_user("l2@example.com")
    off.is_active = False
    make_user("boss@example.com", Role.admin)
    accounts.create_user(session, "sim-1@simulated.invalid", None, role=Role.labeler, simulated=True)
    session.flush()
    project = projects.create_project(session, projects.ProjectSettings(name="P", overlap=2))
    warning = projects.overlap_warning(session, project)
    assert warning and "more than the 1 active labeler:" in warning
    project.overlap = 1
    assert projects.overlap_warning(session, project) is None


def test_edit_project_and_rename_clash(admin_client, session):
    a = projects.create_project(session, projects.ProjectSettings(name="A"))
    projects.create_project(session, projects.ProjectSettings(name="B"))
    session.commit()
    token = csrf_of(admin_client, f"/admin/projects/{a.id}")
    r = admin_client.post(f"/admin/projects/{a.id}", data={"name": "B", "k": "5", "overlap": "1", "csrf_token": token})
    assert r.status_code == 409 and "already exists" in r.text
    r = admin_client.post(
        f"/admin/projects/{a.id}",
        data={"name": "A2", "k": "5", "overlap": "1", "lease_minutes": "45", "csrf_token": token},
    )
    assert r.status_code == 303
    session.expire_all()
    a = session.get(Project, a.id)
    assert (a.name, a.k, a.lease_seconds) == ("A2", 5, 2700)


def test_guidelines_versions_and_preview(admin_client, session):
    project = projects.create_project(session, projects.ProjectSettings(name="G"), guidelines_md="v one")
    session.commit()
    token = csrf_of(admin_client, f"/admin/projects/{project.id}")
    for body in ["v two", "v two", "v **three**"]:
        assert (
            admin_client.post(
                f"/admin/projects/{project.id}/guidelines", data={"body": body, "csrf_token": token}
            ).status_code
            == 303
        )
    versions = session.scalars(
        select(GuidelineVersion).where(GuidelineVersion.project_id == project.id).order_by(GuidelineVersion.version)
    ).all()
    assert [(v.version, v.body_md) for v in versions] == [(1, "v one"), (2, "v two"), (3, "v **three**")]
    assert "v one" in admin_client.get(f"/admin/projects/{project.id}/guidelines/1").text
    assert admin_client.get(f"/admin/projects/{project.id}/guidelines/9").status_code == 404
    r = admin_client.post(
        "/admin/guidelines/preview",
        data={"body": "# Title\n<script>x</script>"},
        headers={"X-CSRF-Token": token, "HX-Request": "true"},
    )
    assert r.status_code == 200 and "<h1>Title</h1>" in r.text and "<script>" not in r.text


def test_pages_need_an_admin(labeler_client):
    assert labeler_client.get("/admin/projects").status_code == 403
    assert labeler_client.get("/admin/projects/new").status_code == 403


def test_service_conflict_type(session):
    projects.create_project(session, projects.ProjectSettings(name="Same"))
    try:
        projects.create_project(session, projects.ProjectSettings(name="SAME"))
    except Conflict as exc:
        assert exc.status_code == 409
    else:
        raise AssertionError("duplicate name accepted")
