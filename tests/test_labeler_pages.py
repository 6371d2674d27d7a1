"""Labeler pages: home, the three task screens as plain forms (no JavaScript), drafts, skip, history;
HTML in prompts, outputs, guidelines and demonstrations is shown as text."""

import re

from sqlalchemy import select

from app.models import Comparison, Demonstration, Draft, Ranking, Skip
from app.services import tasks
from tests.conftest import csrf_of
from tests.labeling import comparison_setup, make_outputs, make_project, make_prompts, ranking_setup

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _start(c, project_id: int, kind: str):
    """The work list's Start button: a POST leases the next task (a GET leases nothing)."""
    return c.post(f"/label/p/{project_id}/{kind}", data={"csrf_token": csrf_of(c, "/label")})


def _task_id(response) -> int:
    assert response.status_code == 303, response.text[:500]
    match = re.fullmatch(r"/label/task/(\d+)", response.headers["location"])
    assert match, response.headers["location"]
    return int(match.group(1))


def test_home_and_demonstration_form(labeler_client, session):
    c = labeler_client
    project = make_project(session, guidelines=f"# Rules\n{EVIL}\n\n**Be kind**", max_demonstration_chars=40)
    prompts = make_prompts(session, project, [f"Say hi {EVIL}", "second"])
    tasks.create_demonstration_tasks(session, project, prompts)
    session.commit()
    home = c.get("/label")
    assert home.status_code == 200 and "Write demonstrations" in home.text and "2 tasks" in home.text
    tid = _task_id(_start(c, project.id, "demonstration"))
    page = c.get(f"/label/task/{tid}")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;alert" in page.text  # prompt and guidelines as text
    assert "<strong>Be kind</strong>" in page.text and "<img src=x" not in page.text
    token = csrf_of(c, f"/label/task/{tid}")
    # no CSRF token: refused
    assert c.post(f"/label/task/{tid}/submit", data={"text": "hi"}).status_code == 403
    # draft autosave (htmx sends the token in a header)
    r = c.post(
        f"/label/task/{tid}/draft", data={"text": EVIL[:30]}, headers={"X-CSRF-Token": token, "HX-Request": "true"}
    )
    assert r.status_code == 200 and "Draft saved" in r.text
    too_long = c.post(f"/label/task/{tid}/draft", data={"text": "x" * 41}, headers={"X-CSRF-Token": token})
    assert too_long.status_code == 400 and "Draft not saved" in too_long.text and "limit is 40" in too_long.text
    nul = c.post(f"/label/task/{tid}/draft", data={"text": "a\x00b"}, headers={"X-CSRF-Token": token})
    assert nul.status_code == 422 and "Draft not saved: The draft contains a NUL character" in nul.text
    assert "&lt;script&gt;" in c.get(f"/label/task/{tid}").text  # the restored draft is escaped too
    r = c.post(f"/label/task/{tid}/submit", data={"text": "x" * 41, "csrf_token": token, "idempotency_key": "k"})
    assert r.status_code == 400 and "limit is 40" in r.text and "x" * 41 in r.text  # answer kept in the form
    r = c.post(f"/label/task/{tid}/submit", data={"text": "  ", "csrf_token": token})
    assert r.status_code == 400 and "empty" in r.text
    r = c.post(
        f"/label/task/{tid}/submit",
        data={"text": EVIL[:35], "csrf_token": token, "idempotency_key": "k", "time_spent_ms": "4200"},
    )
    second = _task_id(r)  # saved, and the next task of the queue is leased at once
    assert second != tid and "Saved. Here is the next one." in c.get(f"/label/task/{second}").text
    session.expire_all()
    demo = session.scalar(select(Demonstration))
    assert demo.text == EVIL[:35] and demo.time_spent_ms == 4200
    assert session.scalar(select(Draft)) is None
    # double submit of the same form (same idempotency key): no error, nothing new
    r = c.post(f"/label/task/{tid}/submit", data={"text": EVIL[:35], "csrf_token": token, "idempotency_key": "k"})
    assert r.status_code == 303
    # the task is gone from this labeler
    assert c.get(f"/label/task/{tid}").status_code == 404
    history = c.get("/label/history")
    assert history.status_code == 200 and "&lt;script&gt;" in history.text and "<script>alert" not in history.text
    assert "4.2 s" in history.text


def test_ranking_form(labeler_client, session):
    c = labeler_client
    project, task, outs = ranking_setup(session, n_outputs=4)
    evil = make_outputs(session, task.prompt, [EVIL])  # not part of the task: just an id from elsewhere
    session.commit()
    tid = _task_id(_start(c, project.id, "ranking"))
    page = c.get(f"/label/task/{tid}")
    shown = [int(x) for x in re.findall(r'data-output="(\d+)" data-letter', page.text)]
    assert sorted(shown) == sorted(o.id for o in outs)
    token = csrf_of(c, f"/label/task/{tid}")
    data = {"csrf_token": token, "idempotency_key": "r1"}
    for i, cid in enumerate(shown):
        data[f"likert_{cid}"] = str(7 - i)
    data[f"place_{shown[0]}"] = "1"
    data[f"place_{shown[1]}"] = "2"
    data[f"place_{shown[2]}"] = "2"  # a tie
    r = c.post(f"/label/task/{tid}/submit", data=data)
    assert r.status_code == 400 and "Place every output" in r.text
    data[f"place_{shown[3]}"] = "4"
    data[f"flags_{shown[3]}"] = ["hallucination", "sexual"]
    data[f"likert_{shown[0]}"] = "9"
    r = c.post(f"/label/task/{tid}/submit", data=data)
    assert r.status_code == 400 and "from 1 to 7" in r.text
    data[f"likert_{shown[0]}"] = "7"
    data[f"place_{evil[0].id}"] = "1"  # ignored: the form only reads this task's outputs
    data["none_acceptable"] = "on"
    r = c.post(f"/label/task/{tid}/submit", data=data)
    assert r.status_code == 303, r.text[:300]
    session.expire_all()
    ranking = session.scalar(select(Ranking))
    assert [sorted(g) for g in ranking.order] == [[shown[0]], sorted([shown[1], shown[2]]), [shown[3]]]
    assert ranking.display_order == shown and ranking.none_acceptable
    assert ranking.ratings[str(shown[3])]["flags"] == ["hallucination", "sexual"]


def test_comparison_form_and_skip(labeler_client, session, make_user):
    c = labeler_client
    project, task, (a, b) = comparison_setup(session, overlap=1)
    (prompt2,) = make_prompts(session, project, ["another"])
    o1, o2 = make_outputs(session, prompt2, ["x", "y"])
    task2 = tasks.create_comparison_task(session, project, prompt2, o1.id, o2.id)
    session.commit()
    tid = _task_id(_start(c, project.id, "comparison"))
    token = csrf_of(c, f"/label/task/{tid}")
    r = c.post(f"/label/task/{tid}/submit", data={"csrf_token": token})
    assert r.status_code == 400 and "Choose" in r.text
    r = c.post(f"/label/task/{tid}/submit", data={"csrf_token": token, "choice": "b", "reason": EVIL})
    tid2 = _task_id(r)
    assert {tid, tid2} == {task.id, task2.id}
    assert "Saved. Here is the next one." in c.get(f"/label/task/{tid2}").text  # the redirect a browser follows
    r = c.post(f"/label/task/{tid2}/skip", data={"csrf_token": token, "reason": "pii", "note": "a phone number"})
    assert r.status_code == 303 and r.headers["location"] == "/label"  # nothing left
    home = c.get("/label").text
    assert "Skipped and flagged for the admins. No more comparison tasks" in home and "next one" not in home
    assert _start(c, project.id, "comparison").headers["location"] == "/label"
    session.expire_all()
    assert session.scalar(select(Comparison)).reason == EVIL
    assert session.scalar(select(Skip)).reason.value == "pii"


def test_someone_elses_task(client, session, make_user):
    from tests.conftest import login

    project, task, _ = comparison_setup(session)
    make_user("a@example.com")
    make_user("b@example.com")
    assert login(client, "a@example.com").status_code == 303
    tid = _task_id(_start(client, project.id, "comparison"))
    client.post("/logout", data={"csrf_token": csrf_of(client, "/label")})
    assert login(client, "b@example.com").status_code == 303
    token = csrf_of(client, "/label")
    assert client.get(f"/label/task/{tid}").status_code == 404
    r = client.post(f"/label/task/{tid}/submit", data={"csrf_token": token, "choice": "a"})
    assert r.status_code == 403 and "not assigned to you" in r.text
    r = client.post(f"/label/task/{tid}/skip", data={"csrf_token": token})
    assert r.status_code == 404
    session.expire_all()
    assert session.scalar(select(Comparison)) is None and session.scalar(select(Skip)) is None


def test_anonymous_goes_to_login(client):
    r = client.get("/label/history")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_a_get_of_a_queue_link_leases_nothing(labeler_client, session):
    from app.models import Lease

    project, _, _ = comparison_setup(session)
    session.commit()
    r = labeler_client.get(f"/label/p/{project.id}/comparison")
    assert r.status_code == 303 and r.headers["location"] == "/label"
    session.expire_all()
    assert session.scalar(select(Lease)) is None
    assert _task_id(_start(labeler_client, project.id, "comparison"))


def test_a_task_that_does_not_exist_says_so(labeler_client):
    r = labeler_client.get("/label/task/99999")
    assert r.status_code == 404 and "There is no task 99999" in r.text


def _conversation_prompt(session, project, messages):
    from app import conversation
    from app.models import Prompt

    prompt = Prompt(project_id=project.id, messages=messages, content_hash=conversation.content_hash(messages))
    session.add(prompt)
    session.flush()
    return prompt


def _turns(html: str) -> list[tuple[str, bool]]:
    """(role, last?) of each turn of the page's thread, in order."""
    return [
        (role, bool(last)) for last, role in re.findall(r'class="turn turn-\w+( turn-last)?" data-role="(\w+)"', html)
    ]


DIALOGUE = [
    {"role": "system", "content": "You are a terse assistant. <b>Never</b> use bold."},
    {"role": "user", "content": f"First question {EVIL}"},
    {"role": "assistant", "content": "  Indented answer\n\n    with a code-like block\nkept as typed"},
    {"role": "user", "content": "Second question"},
    {"role": "assistant", "content": "\n".join(f"long line {i}" for i in range(40))},
    {"role": "user", "content": "And the third?"},
]


def test_a_conversation_is_a_thread_on_every_task_screen(labeler_client, session):
    """Each turn with its role, the system message as such, the last user turn marked, long earlier
    turns folded, every text escaped with its whitespace; the answer is the next assistant turn."""
    c = labeler_client
    project = make_project(session, overlap=1)
    prompt = _conversation_prompt(session, project, DIALOGUE)
    tasks.create_demonstration_tasks(session, project, [prompt])
    a, b = make_outputs(session, prompt, ["Answer A", "Answer B"])
    tasks.create_ranking_task(session, project, prompt, [a.id, b.id])
    tasks.create_comparison_task(session, project, prompt, a.id, b.id)
    session.commit()
    roles = [("system", False), ("user", False), ("assistant", False), ("user", False), ("assistant", False)]
    for kind, hint in (
        ("demonstration", "Write the assistant's next turn"),
        ("ranking", "candidate for the assistant's next turn"),
        ("comparison", "candidates for the assistant's next turn"),
    ):
        page = c.get(f"/label/task/{_task_id(_start(c, project.id, kind))}").text
        assert _turns(page) == [*roles, ("user", True)], kind
        assert "Conversation <span" in page and "· 6 messages" in page
        assert hint in page and 'class="hint next-turn"' in page
        assert "<script>alert" not in page and "First question &lt;script&gt;alert" in page
        assert "&lt;b&gt;Never&lt;/b&gt;" in page
        # whitespace kept as typed: the text sits directly in the pre-wrap element
        assert '<div class="long-text">  Indented answer\n\n    with a code-like block\nkept as typed</div>' in page
        # the 40-line assistant turn is folded, whole inside its <details>; the short ones are not
        folds = re.findall(r'<details class="turn-fold">.*?</details>', page, re.S)
        assert len(folds) == 1 and "long line 0\nlong line 1" in folds[0] and "long line 39" in folds[0]
        assert "(509 characters)" in folds[0]
        assert re.search(r'<div class="long-text" data-testid="prompt">And the third\?</div>', page)


def test_a_single_turn_prompt_has_no_thread_chrome(labeler_client, session):
    c = labeler_client
    project = make_project(session)
    tasks.create_demonstration_tasks(session, project, make_prompts(session, project, ["Just one\n  question"]))
    session.commit()
    page = c.get(f"/label/task/{_task_id(_start(c, project.id, 'demonstration'))}").text
    assert '<div class="long-text" data-testid="prompt">Just one\n  question</div>' in page
    assert 'class="thread"' not in page and "turn-" not in page and "next-turn" not in page
    assert '<h2 id="prompt-h" class="label">Prompt</h2>' in page
    assert "Write the reply you would want the assistant to give." in page


def test_a_long_thread_folds_its_oldest_turns_together(labeler_client, session):
    c = labeler_client
    project = make_project(session)
    messages = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(15)]
    tasks.create_demonstration_tasks(session, project, [_conversation_prompt(session, project, messages)])
    session.commit()
    page = c.get(f"/label/task/{_task_id(_start(c, project.id, 'demonstration'))}").text
    assert len(_turns(page)) == 15 and _turns(page)[-1] == ("user", True)
    group = re.search(r'<li class="turn-group">(.*?)</details></li>', page, re.S).group(1)
    assert "Show 10 earlier messages" in group
    assert [int(x) for x in re.findall(r">turn (\d+)<", group)] == list(range(10))  # the oldest ten
    rest = page[page.index("</details></li>") :]
    assert [int(x) for x in re.findall(r">turn (\d+)<", rest)] == list(range(10, 15))


def test_history_revise_and_admin_pages_show_the_thread(labeler_client, session, make_user):
    from app.models import Role
    from tests.conftest import login

    c = labeler_client
    project = make_project(session)
    prompt = _conversation_prompt(session, project, DIALOGUE)
    tasks.create_demonstration_tasks(session, project, [prompt])
    session.commit()
    tid = _task_id(_start(c, project.id, "demonstration"))
    token = csrf_of(c, f"/label/task/{tid}")
    r = c.post(f"/label/task/{tid}/submit", data={"text": "Third answer", "csrf_token": token, "idempotency_key": "h"})
    assert r.status_code == 303
    session.expire_all()
    demo = session.scalar(select(Demonstration))
    roles = ["system", "user", "assistant", "user", "assistant", "user"]
    history = c.get("/label/history").text
    assert [r for r, _ in _turns(history)] == roles and "First question &lt;script&gt;" in history
    revise = c.get(f"/label/demonstrations/{demo.id}/revise").text
    assert [r for r, _ in _turns(revise)] == roles and "<h2>Conversation</h2>" in revise

    make_user("admin@example.com", Role.admin)
    c.post("/logout", data={"csrf_token": token})
    assert login(c, "admin@example.com").status_code == 303
    task_page = c.get(f"/admin/tasks/{tid}").text
    assert [r for r, _ in _turns(task_page)] == roles and "<h2>Conversation</h2>" in task_page
    review = c.get(f"/admin/projects/{project.id}/review?status=all").text
    assert [r for r, _ in _turns(review)] == roles and "<script>alert" not in review
