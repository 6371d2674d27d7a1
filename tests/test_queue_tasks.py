"""Creating tasks (app.services.tasks)."""

import pytest

from app.models import TaskKind
from app.services import ServiceError, tasks
from tests.labeling import make_outputs, make_project, make_prompts


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
def test_create_tasks(session):
    project = make_project(session, overlap=3)
    p1, p2 = make_prompts(session, project, ["one", "two"])
    demo = tasks.create_demonstration_tasks(session, project, [p1, p2], priority=2)
    assert [(t.kind, t.required, t.priority, t.prompt_id) for t in demo] == [
        (TaskKind.demonstration, 3, 2, p1.id),
        (TaskKind.demonstration, 3, 2, p2.id),
    ]
    outs = make_outputs(session, p1, ["a", "b", "c", "d"])
    ranking = tasks.create_ranking_task(session, project, p1, [o.id for o in reversed(outs)])
    assert [(tc.completion_id, tc.position) for tc in ranking.outputs] == [
        (o.id, i) for i, o in enumerate(reversed(outs))
    ]
    cmp = tasks.create_comparison_task(session, project, p1, outs[0].id, outs[1].id)
    assert cmp.kind == TaskKind.comparison and len(cmp.outputs) == 2
    session.commit()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_create_tasks_refuses_bad_outputs(session):
    project = make_project(session)
    other = make_project(session, name="Other")
    p1, p2 = make_prompts(session, project, ["one", "two"])
    (q,) = make_prompts(session, other, ["elsewhere"])
    outs = make_outputs(session, p1, ["a", "b", "c"])
    foreign = make_outputs(session, p2, ["x"])
    with pytest.raises(ServiceError, match="2 to 9"):
        tasks.create_ranking_task(session, project, p1, [outs[0].id])
    with pytest.raises(ServiceError, match="twice"):
        tasks.create_ranking_task(session, project, p1, [outs[0].id, outs[0].id])
    with pytest.raises(ServiceError, match="another prompt"):
        tasks.create_ranking_task(session, project, p1, [outs[0].id, foreign[0].id])
    with pytest.raises(ServiceError, match="Unknown output"):
        tasks.create_ranking_task(session, project, p1, [outs[0].id, 99999])
    with pytest.raises(ServiceError, match="another project"):
        tasks.create_demonstration_tasks(session, project, [q])
    with pytest.raises(ServiceError, match="two different"):
        tasks.create_comparison_task(session, project, p1, outs[0].id, outs[0].id)
