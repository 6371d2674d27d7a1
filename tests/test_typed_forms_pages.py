"""The labeler, written-prompt, labeler-figures and account pages read typed forms (issue 24): the
values a browser sends give the same pages as before; a field a browser can't send wrong (a place
that is no number, a winner that is no output) is a 422 page, never a 500; a refused request stores
nothing of its own."""

import re

from sqlalchemy import func, select

from app.models import LoginFailure, Project, Ranking, Role, Task, User
from app.services import written_prompts
from tests.conftest import PASSWORD, csrf_of, login
from tests.labeling import comparison_setup, ranking_setup


def _start(c, project_id: int, kind: str) -> int:
    r = c.post(f"/label/p/{project_id}/{kind}", data={"csrf_token": csrf_of(c, "/label")})
    match = re.fullmatch(r"/label/task/(\d+)", r.headers["location"])
    assert match, r.headers["location"]
    return int(match.group(1))


def test_a_ranking_form_with_one_flag_a_bad_place_and_a_repeated_place(labeler_client, session):
    c = labeler_client
    project, _task, outs = ranking_setup(session, n_outputs=2)
    session.commit()
    tid = _start(c, project.id, "ranking")
    token = csrf_of(c, f"/label/task/{tid}")
    a, b = (o.id for o in outs)
    data = {"csrf_token": token, f"place_{a}": "1", f"place_{b}": "2", f"likert_{a}": "6", f"likert_{b}": "3"}
    bad = c.post(f"/label/task/{tid}/submit", data={**data, f"place_{b}": "second"})
    assert bad.status_code == 422 and f"place_{b} must be a whole number" in bad.text
    twice = c.post(f"/label/task/{tid}/submit", data={**data, f"place_{b}": ["1", "2"]})
    assert twice.status_code == 422 and "more than once" in twice.text
    assert session.scalar(select(func.count()).select_from(Ranking)) == 0
    r = c.post(f"/label/task/{tid}/submit", data={**data, f"flags_{a}": "hallucination"})  # one checkbox: a str
    assert r.status_code == 303, re.findall(r'id="form-error">([^<]*)', r.text)
    session.expire_all()
    ranking = session.scalar(select(Ranking))
    assert ranking.order == [[a], [b]] and not ranking.none_acceptable
    assert ranking.ratings == {str(a): {"likert": 6, "flags": ["hallucination"]}, str(b): {"likert": 3, "flags": []}}


def test_a_revised_comparison_keeps_its_form_when_refused(labeler_client, session):
    c = labeler_client
    project, _task, _outs = comparison_setup(session, overlap=1)
    session.commit()
    tid = _start(c, project.id, "comparison")
    token = csrf_of(c, f"/label/task/{tid}")
    assert c.post(f"/label/task/{tid}/submit", data={"csrf_token": token, "choice": "a"}).status_code == 303
    history = c.get("/label/history").text
    url = re.search(r'href="(/label/comparisons/\d+/revise)"', history).group(1)
    refused = c.post(url, data={"csrf_token": token, "choice": "maybe", "reason": "kept text"})
    assert refused.status_code == 400 and "kept text" in refused.text
    saved = c.post(url, data={"csrf_token": token, "choice": "b", "reason": "B is clearer"})
    assert saved.status_code == 303 and saved.headers["location"] == "/label/history"
    assert "revision 2" in c.get("/label/history").text


def test_the_write_page_shows_the_form_again_with_its_checkbox(session, client, make_user):
    labeler = make_user("w@example.com")
    project = Project(name="Writing", k=2, overlap=1)
    session.add(project)
    session.flush()
    written_prompts.set_settings(session, project.id, targets={"kind": {"plain": 1}}, cases=[])
    session.commit()
    login(client, labeler.email)
    token = csrf_of(client, f"/label/write/{project.id}")
    form = {"csrf_token": token, "kind": "plain", "text": "Kept text", "category": "nope", "has_pii": "on"}
    refused = client.post(f"/label/write/{project.id}", data=form)
    assert refused.status_code == 422 and "Unknown category" in refused.text and "Kept text" in refused.text
    assert re.search(r'name="has_pii" checked', refused.text)


def test_written_targets_refused_with_the_old_message(session, admin_client):
    project = Project(name="Writing", k=2, overlap=1)
    session.add(project)
    session.commit()
    url = f"/admin/projects/{project.id}/written"
    token = csrf_of(admin_client, url)
    for bad in ("-1", "x", "2.5"):
        r = admin_client.post(f"{url}/settings", data={"csrf_token": token, "kind_plain": bad})
        assert r.status_code == 303 and "The target for plain must be a whole number." in admin_client.get(url).text
    session.expire_all()
    assert session.get(Project, project.id).written_prompt_targets is None
    r = admin_client.post(f"{url}/settings", data={"csrf_token": token, "kind_plain": " 3 ", "category_rewrite": ""})
    assert r.status_code == 303
    session.expire_all()
    assert session.get(Project, project.id).written_prompt_targets == {"kind": {"plain": 3}, "category": {}}


def test_gold_winner_must_be_an_output_or_a_tie(session, admin_client):
    _project, task, (a, _b) = comparison_setup(session)
    session.commit()
    token = csrf_of(admin_client, f"/admin/tasks/{task.id}")
    r = admin_client.post(f"/admin/tasks/{task.id}/gold", data={"csrf_token": token, "winner": "first"})
    assert r.status_code == 422 and "winner" in r.text, re.findall(r"<p>([^<]*)</p>", r.text)
    assert (
        admin_client.post(f"/admin/tasks/{task.id}/gold", data={"csrf_token": token, "winner": a.id}).status_code == 303
    )
    session.expire_all()
    assert session.get(Task, task.id).gold == {"winner": a.id}
    r = admin_client.post(f"/admin/tasks/{task.id}/gold", data={"csrf_token": token, "clear": "1"})
    assert r.status_code == 303
    session.expire_all()
    assert session.get(Task, task.id).gold is None


def test_leaving_out_goes_back_only_to_this_site(session, admin_client, make_user):
    labeler = make_user("l@example.com")
    token = csrf_of(admin_client, "/admin/labelers")
    url = f"/admin/labelers/{labeler.id}/training"
    r = admin_client.post(url, data={"csrf_token": token, "left_out": "1", "back": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/labelers"
    session.expire_all()
    assert session.get(User, labeler.id).left_out_of_training
    r = admin_client.post(url, data={"csrf_token": token, "left_out": "0", "back": "/admin/labelers?project=1"})
    assert r.headers["location"] == "/admin/labelers?project=1"
    session.expire_all()
    assert not session.get(User, labeler.id).left_out_of_training


def test_a_failed_login_keeps_its_failure_row_and_a_refused_password_change_changes_nothing(session, client, make_user):
    user = make_user("a@example.com", Role.labeler)
    token = csrf_of(client)
    r = client.post("/login", data={"csrf_token": token, "email": user.email, "password": "wrong", "next": "/x"})
    assert r.status_code == 401 and "Wrong email or password." in r.text and 'value="/x"' in r.text
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(LoginFailure)) == 1
    assert login(client, user.email).status_code == 303
    old_hash = session.get(User, user.id).password_hash
    token = csrf_of(client, "/account")
    r = client.post(
        "/account/password",
        data={"csrf_token": token, "current": "wrong", "password": "a new long pass", "password2": "a new long pass"},
    )
    assert r.status_code == 400 and "The current password is wrong." in r.text
    session.expire_all()
    assert session.get(User, user.id).password_hash == old_hash


def test_login_goes_on_only_to_a_path_on_this_site(client, make_user):
    user = make_user("a@example.com")
    for nxt, where in (("/label/history", "/label/history"), ("//evil.example/", "/"), ("/\\evil.example/", "/")):
        client.cookies.clear()
        token = csrf_of(client)
        r = client.post("/login", data={"csrf_token": token, "email": user.email, "password": PASSWORD, "next": nxt})
        assert r.status_code == 303 and r.headers["location"] == where, nxt
