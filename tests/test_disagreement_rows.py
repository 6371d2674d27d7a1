"""Disagreements, one row per output (issue 28 item 5), on SQLite and Postgres: the same output lines
up across labelers whatever letter each of them saw it under (each labeler sees the outputs in an
order of their own), with each labeler's place (ties marked), Likert and flags side by side; a
comparison's two outputs with each labeler's verdict; the page shows the rows and the "any" filter
in words."""

import re

from sqlalchemy import select

from app.models import Comparison, Completion, Project, Ranking, Role, TaskCompletion, TaskStatus
from app.services import review, tasks
from tests.worker_helpers import make_prompts


def _project(session) -> Project:
    project = Project(name="Disagree", k=3, overlap=3)
    session.add(project)
    session.flush()
    return project


def _outputs(session, prompt, texts):
    outputs = [Completion(prompt_id=prompt.id, text=t, source="test") for t in texts]
    session.add_all(outputs)
    session.flush()
    return outputs


def _ranked_three_ways(session, make_user):
    alice, bob, cara = (make_user(f"{n}@example.com", Role.labeler) for n in ("alice", "bob", "cara"))
    bob.name = "Bob B."
    project = _project(session)
    (prompt,) = make_prompts(session, project, ["Name a colour"])
    r, g, b = _outputs(session, prompt, ["red", "green", "blue"])
    task = tasks.create_ranking_task(session, project, prompt, [r.id, g.id, b.id])
    answers = [
        # (labeler, the order they saw (A, B, C), their ranking, their ratings)
        (alice, [r, g, b], [[r], [g], [b]], {r: (6, []), b: (2, ["hallucination"])}),
        (bob, [b, r, g], [[b], [r, g]], {b: (7, [])}),
        (cara, [g, b, r], [[g], [b], [r]], {}),
    ]
    for user, shown, order, ratings in answers:
        session.add(
            Ranking(
                task_id=task.id,
                user_id=user.id,
                display_order=[o.id for o in shown],
                order=[[o.id for o in group] for group in order],
                ratings={str(o.id): {"likert": lk, "flags": fl} for o, (lk, fl) in ratings.items()},
            )
        )
    task.done_count, task.required, task.status = 3, 3, TaskStatus.closed
    session.commit()
    return project, task, (r, g, b)


def test_each_output_is_one_row_with_every_labelers_place_likert_and_flags(session, admin_client, make_user):
    project, task, (r, g, b) = _ranked_three_ways(session, make_user)
    (found,), looked_at = review.disagreements(session, project.id)
    assert looked_at == 1 and found.task.id == task.id
    assert [i.labeler.email for i in found.items] == ["alice@example.com", "bob@example.com", "cara@example.com"]
    positions = list(session.scalars(select(TaskCompletion.completion_id).order_by(TaskCompletion.position)))
    assert [row.completion_id for row in found.rows] == positions and [row.number for row in found.rows] == [1, 2, 3]
    rows = {row.completion_id: row for row in found.rows}
    Mark = review.Mark
    assert rows[r.id].marks == [Mark("A", 1, False, 6, []), Mark("B", 2, True), Mark("C", 3)]
    assert rows[g.id].marks == [Mark("B", 2), Mark("C", 2, True), Mark("A", 1)]
    assert rows[b.id].marks == [Mark("C", 3, False, 2, ["hallucination"]), Mark("A", 1, False, 7), Mark("B", 2)]
    assert (rows[r.id].text, rows[r.id].spread, rows[g.id].spread, rows[b.id].spread) == ("red", 2, 1, 2)

    page = admin_client.get(f"/admin/projects/{project.id}/disagreements").text
    table = page[page.index(f'data-testid="disagreement-{task.id}"') :]
    head = table[: table.index("</thead>")]
    assert re.findall(r'class="labeler-col"[^>]*>([^<]+?)\s*<span', head) == ["alice", "Bob B.", "cara"]

    def cells(completion_id):
        row = table[table.index(f'data-completion="{completion_id}"') :]
        row = row[: row.index("</tr>")]
        return [
            re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", c)).strip()
            for c in re.findall(r'<td class="mark"[^>]*>(.*?)</td>', row, re.S)
        ]

    assert cells(r.id) == ["1st Likert 6/7 saw it as A", "=2nd saw it as B", "3rd saw it as C"]
    assert cells(b.id) == ["3rd Likert 2/7 hallucination saw it as C", "1st Likert 7/7 saw it as A", "2nd saw it as B"]
    assert f'<tr data-completion="{r.id}" class="split">' in table  # placed 1st to 3rd: marked
    assert f'<tr data-completion="{g.id}" class="">' in table


def test_comparisons_line_up_by_output_whichever_side_each_labeler_saw_it_on(session, admin_client, make_user):
    alice, bob = make_user("alice@example.com", Role.labeler), make_user("bob@example.com", Role.labeler)
    project = _project(session)
    (prompt,) = make_prompts(session, project, ["Say hello"])
    x, y = _outputs(session, prompt, ["Hello!", "Hi."])
    task = tasks.create_comparison_task(session, project, prompt, x.id, y.id)
    session.add_all(
        [  # both chose the answer they saw as A: different answers
            Comparison(task_id=task.id, user_id=alice.id, a_completion_id=x.id, b_completion_id=y.id, choice="a"),
            Comparison(
                task_id=task.id,
                user_id=bob.id,
                a_completion_id=y.id,
                b_completion_id=x.id,
                choice="a",
                reason="shorter",
            ),
        ]
    )
    task.done_count, task.required, task.status = 2, 2, TaskStatus.closed
    session.commit()
    (found,), _ = review.disagreements(session, project.id, review.TaskKind.comparison)
    verdicts = {row.text: [(m.letter, m.verdict) for m in row.marks] for row in found.rows}
    assert verdicts == {
        "Hello!": [("A", "preferred"), ("B", "not preferred")],
        "Hi.": [("B", "not preferred"), ("A", "preferred")],
    }

    page = admin_client.get(f"/admin/projects/{project.id}/disagreements?kind=comparison&below=101").text
    assert "done by two or more labelers, whatever their agreement" in page and "less than 101%" not in page
    assert '<option value="101" selected>any agreement</option>' in page
    assert "shorter" in page[page.index('class="notes"') :]
