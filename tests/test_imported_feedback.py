"""Imported feedback (issue 26, item 1): hh-rlhf pairs and TRL preference lines become comparisons,
OpenAssistant trees rankings and demonstrations, stored without a labeler (user_id NULL) with the
file, line and original id; a run chooses its sources; exports carry `source`; labeler figures and
agreement never count them. And (issue 27, finding 4) retired prompts and labelers left out of runs
stay out of every export and snapshot, by one shared filter (app.services.data_scope)."""

import gzip
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.models import Comparison, Demonstration, Project, Ranking, Role, Skip, Split, TaskKind
from app.services import exports, imports, projects, queue, review, stats, submissions, tasks
from runconfig import DataFilter
from tests.conftest import SHARED_DATA
from tests.labeling import make_labelers, make_outputs, make_project, make_prompts
from worker.snapshots import DataError, snapshot_demonstrations, snapshot_prompts, snapshot_rankings

HH = SHARED_DATA / "hh-rlhf/helpful-base/test-first1554.jsonl.gz"
OASST = SHARED_DATA / "oasst-en-100/en_100_tree.jsonl.gz"


def _shared(path: Path) -> bytes:
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared test data (../shared/data) is not beside this checkout")
    return path.read_bytes()


def _jsonl(*rows) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode()


@pytest.fixture
def project(session) -> Project:
    p = projects.create_project(session, projects.ProjectSettings(name="Feedback"))
    session.commit()
    return p


def _count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _labeled(session, project: Project) -> tuple:
    """A labeler's accepted demonstration and a ranking on train prompts: the labelers' own data."""
    (labeler,) = make_labelers(session, 1)
    prompts = make_prompts(session, project, ["Say hi", "Rank us"])
    for p in prompts:
        p.split = Split.train
    tasks.create_demonstration_tasks(session, project, prompts[:1])
    outputs = make_outputs(session, prompts[1], ["good", "bad"])
    tasks.create_ranking_task(session, project, prompts[1], [o.id for o in outputs])
    session.commit()
    lease = queue.next_task(session, labeler.id, project, TaskKind.demonstration, default_lease_seconds=600)
    demo = submissions.submit_demonstration(session, labeler, lease.task_id, "Hi!")
    lease = queue.next_task(session, labeler.id, project, TaskKind.ranking, default_lease_seconds=600)
    submissions.submit_ranking(
        session,
        labeler,
        lease.task_id,
        [[outputs[0].id], [outputs[1].id]],
        {str(o.id): {"likert": 4, "flags": []} for o in outputs},
    )
    session.commit()
    return labeler, demo


def _figures(session) -> dict:
    return {(r.user.id, tuple(sorted(r.done.items()))) for r in stats.labeler_figures(session, fresh=True)}


def test_hh_rlhf_import_gives_one_comparison_per_pair(session, project):
    data = _shared(HH)
    lines = [json.loads(line) for line in gzip.decompress(data).decode().splitlines() if line.strip()]
    labeler, _ = _labeled(session, project)
    before, agreement_before = _figures(session), stats.ranking_agreement(session, project.id)

    preview = imports.preview_import(session, project, data, filename=HH.name, max_bytes=imports.CLI_MAX_IMPORT_BYTES)
    pairs = sum(1 for r in lines if r["chosen"] != r["rejected"])
    assert pairs == 1553 and len(preview.identical_pairs) == 1  # the file's one identical pair gives none
    assert preview.feedback_counts == {"comparison": pairs, "ranking": 0, "demonstration": 0}
    result = imports.commit(session, project, preview, source=HH.name)
    session.commit()

    assert result.feedback == {"comparison": pairs}
    assert _count(session, Comparison) == pairs
    assert _count(session, Comparison, Comparison.user_id.is_not(None)) == 0  # no labeler submission
    first = session.scalars(select(Comparison).order_by(Comparison.id)).first()
    assert (first.source, first.origin_file, first.origin_line) == ("imported", HH.name, 1)
    assert first.choice.value == "a"  # chosen is A, and chosen: the pair as the file gave it
    # Labeler figures and agreement are what they were.
    assert _figures(session) == before
    assert stats.ranking_agreement(session, project.id).project == agreement_before.project
    # Imported the same file again: nothing new, nothing counted twice.
    again = imports.preview_import(session, project, data, filename=HH.name, max_bytes=imports.CLI_MAX_IMPORT_BYTES)
    assert not again.records and not again.feedback and again.feedback_already == pairs


def test_oasst_trees_give_rankings_and_demonstrations(session, project):
    data = _shared(OASST)
    result = imports.run_import(session, project, data, filename=OASST.name)
    session.commit()
    # 480 prompter messages; 212 have two or more human-ranked replies; 247 a best (or only) reply
    # that a person wrote.
    assert len(result.prompts) == 480
    assert result.feedback == {"ranking": 212, "demonstration": 247}
    assert _count(session, Ranking, Ranking.user_id.is_(None)) == 212
    assert _count(session, Demonstration, Demonstration.user_id.is_(None)) == 247
    ranking = session.scalars(select(Ranking).order_by(Ranking.id)).first()
    assert len(ranking.order) >= 2 and ranking.origin_id and ranking.origin_file == OASST.name
    demo = session.scalars(select(Demonstration).order_by(Demonstration.id)).first()
    assert demo.origin_id and demo.origin_line >= 1
    # Every imported task is closed: no labeler is ever handed one.
    assert _count(session, Ranking) == 212 and stats.labeler_figures(session, fresh=True) == []


def test_prompts_only_and_answers_as_demonstrations(session, project):
    data = _jsonl(
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": "2+2?", "reference": "4"},
    )
    only = imports.preview_import(session, project, data, filename="p.jsonl", feedback=False)
    assert len(only.records) == 2 and not only.feedback
    both = imports.preview_import(session, project, data, filename="p.jsonl", answers_as_demonstrations=True)
    assert both.feedback_counts == {"comparison": 1, "ranking": 0, "demonstration": 1}


def test_bad_preference_lines_are_named_and_nothing_is_written(session, project):
    data = _jsonl(
        {"prompt": "ok", "chosen": "a", "rejected": "b"},
        {"prompt": "bad", "chosen": ["not a message"], "rejected": "b"},
        {
            "prompt": [{"role": "user", "content": "chat"}],
            "chosen": [{"role": "assistant", "content": "x"}],
            "rejected": [{"role": "assistant", "content": "y\x00"}],
        },
    )
    preview = imports.preview_import(session, project, data, filename="p.jsonl")
    assert [e.line for e in preview.errors] == [2, 3]
    with pytest.raises(imports.ServiceError):
        imports.commit(session, project, preview, source="p.jsonl")
    session.rollback()
    assert _count(session, Comparison) == 0


def test_run_sources_and_snapshot_counts(session, project):
    labeler, demo = _labeled(session, project)
    rows = [
        {"prompt": f"Question {i}", "chosen": f"good {i}", "rejected": f"bad {i}", "split": "train"} for i in range(4)
    ]
    rows += [{"prompt": f"Task {i}", "reference": f"answer {i}", "split": "train"} for i in range(3)]
    imports.run_import(session, project, _jsonl(*rows), filename="prefs.jsonl", answers_as_demonstrations=True)
    session.commit()

    _, _, both = snapshot_demonstrations(session, project.id)
    assert both.counts["demonstrations_labelers"] == 1 and both.counts["demonstrations_imported"] == 3
    _, _, mine = snapshot_demonstrations(session, project.id, DataFilter(sources=["labelers"]))
    assert mine.rows["demonstrations"] == [demo.id] and mine.counts["demonstrations_imported"] == 0
    assert any("sources not chosen" in n for n in mine.notes)

    train, valid, ranked = snapshot_rankings(session, project.id)
    assert ranked.counts["rankings_labelers"] == 1 and ranked.counts["comparisons_imported"] == 4
    assert len(train) + len(valid) == 5 and len(ranked.rows["comparisons"]) == 4
    _, _, labelers_only = snapshot_rankings(session, project.id, DataFilter(sources=["labelers"]))
    assert labelers_only.counts["comparisons_imported"] == 0 and "comparisons" not in labelers_only.rows
    with pytest.raises(DataError):  # the imported pairs alone; no labeler ranked anything else
        snapshot_rankings(session, project.id, DataFilter(sources=["labelers"], exclude_labelers=[labeler.id]))
    # Excluding a labeler keeps the imported feedback (NULL NOT IN (...) would have dropped it).
    _, _, others = snapshot_demonstrations(session, project.id, DataFilter(exclude_labelers=[labeler.id]))
    assert others.counts == {**others.counts, "demonstrations_labelers": 0, "demonstrations_imported": 3}


def test_exports_carry_source(session, project):
    _labeled(session, project)
    imports.run_import(
        session,
        project,
        _jsonl({"prompt": "Pick", "chosen": "this", "rejected": "that", "split": "train", "id": "p-1"}),
        filename="prefs.jsonl",
    )
    session.commit()
    prefs = list(exports.preference_rows(session, exports.ExportFilter(project.id)))
    by_source = {r["source"]: r for r in prefs}
    assert set(by_source) == {"labeler", "imported"}
    assert by_source["imported"]["origin"] == {"file": "prefs.jsonl", "line": 1, "id": "p-1"}
    assert (by_source["imported"]["chosen"], by_source["imported"]["rejected"]) == ("this", "that")
    sft = list(exports.sft_rows(session, exports.ExportFilter(project.id)))
    assert [r["source"] for r in sft] == ["labeler"]
    only = list(exports.preference_rows(session, exports.ExportFilter(project.id, sources=["imported"])))
    assert [r["source"] for r in only] == ["imported"]


def test_review_queue_shows_imported_apart(admin_client, session, project):
    _labeled(session, project)
    imports.run_import(
        session, project, _jsonl({"prompt": "Pick", "chosen": "this", "rejected": "that"}), filename="prefs.jsonl"
    )
    session.commit()
    f = review.parse_filters("comparison", "pending", "", "", "", "", source="imported")
    (item,) = review.queue(session, project.id, f)
    assert item.labeler is None and item.submission.source == "imported"
    r = admin_client.get(f"/admin/projects/{project.id}/review?kind=comparison&source=imported")
    assert r.status_code == 200 and ">imported</span> prefs.jsonl, line 1" in r.text
    r = admin_client.get(f"/admin/projects/{project.id}/review?kind=comparison&source=labelers")
    assert "prefs.jsonl" not in r.text


def test_retired_prompt_and_left_out_labeler_stay_out_of_exports_and_snapshots(session, make_user):
    """Issue 27, finding 4: the demonstration of a prompt retired after a PII flag went on into the
    SFT export and the SFT snapshot, and the export ignored "Leave out of runs"."""
    admin = make_user("admin@example.com", role=Role.admin)
    project = make_project(session, "Retire", k=2)
    writer, flagger, other = make_labelers(session, 3)
    kept, secret = make_prompts(session, project, ["Plan a picnic", "My SSN is 123-45-6789, write a letter"])
    tasks.create_demonstration_tasks(session, project, [kept, secret])
    session.commit()
    for _ in range(2):
        lease = queue.next_task(session, writer.id, project, TaskKind.demonstration, default_lease_seconds=600)
        submissions.submit_demonstration(session, writer, lease.task_id, f"answer to {lease.task_id}")
    # A ranking task on the secret prompt: a labeler flags it as PII, the admin retires the prompt.
    outputs = make_outputs(session, secret, ["x", "y"])
    ranking = tasks.create_ranking_task(session, project, secret, [o.id for o in outputs])
    session.commit()
    assert (
        queue.next_task(session, flagger.id, project, TaskKind.ranking, default_lease_seconds=600).task_id == ranking.id
    )
    skip = submissions.skip(session, flagger, ranking.id, "pii", "a social security number")
    session.commit()
    review.retire_flagged_prompt(session, admin, project.id, skip.id)
    session.commit()
    assert session.get(Skip, skip.id).dismissed_at is not None

    f = exports.ExportFilter(project.id)
    assert [r["prompt"] for r in exports.sft_rows(session, f)] == ["Plan a picnic"]
    _, _, snap = snapshot_demonstrations(session, project.id)
    assert len(snap.rows["demonstrations"]) == 1 and any("retired prompts" in n for n in snap.notes)
    items, _ = snapshot_prompts(session, project.id, ["train", "valid", "test"])
    assert [p.id for p in items] == [kept.id]

    # "Leave out of runs" now leaves the labeler out of exports too.
    lease = queue.next_task(session, other.id, project, TaskKind.demonstration, default_lease_seconds=600)
    assert lease is None  # both prompts' tasks are done; the export has the writer's one row
    review.leave_out_of_training(session, writer.id, True)
    session.commit()
    with pytest.raises(exports.ServiceError):
        exports.check(session, "sft", f)
    assert list(exports.sft_rows(session, f)) == []


def test_migration_0011_keeps_links_and_labelers_rows(tmp_path):
    """0011 rebuilds demonstrations, rankings and comparisons on SQLite (user_id becomes nullable):
    a written prompt's link to the demonstration it continues survives both ways (dropping the old
    table would have blanked it: ON DELETE SET NULL), labelers' rows stay, imported ones go down."""
    from sqlalchemy import text

    from app.db import make_engine, make_sessionmaker
    from app.migrate import downgrade, upgrade
    from app.models import PromptCategory, WrittenPrompt

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    engine = make_engine(url)
    session = make_sessionmaker(engine)()
    project = make_project(session, "Migrate 0011")
    labeler, demo = _labeled(session, project)
    session.add(
        WrittenPrompt(
            project_id=project.id,
            author_id=labeler.id,
            kind="follow_up",
            category=PromptCategory.chat,
            text="And then?",
            demonstration_id=demo.id,
        )
    )
    imports.run_import(session, project, _jsonl({"prompt": "P", "chosen": "a", "rejected": "b"}), filename="f.jsonl")
    session.commit()
    session.close()

    def state():
        with engine.connect() as conn:
            return (
                conn.execute(text("SELECT demonstration_id FROM written_prompts")).scalars().all(),
                conn.execute(text("SELECT count(*) FROM comparisons")).scalar(),
                conn.execute(text("SELECT id, text FROM demonstrations")).all(),
                conn.execute(text("SELECT count(*) FROM rankings")).scalar(),
            )

    assert state() == ([demo.id], 1, [(demo.id, "Hi!")], 1)
    downgrade(url, "0010_sqlite_autoincrement")
    assert state() == ([demo.id], 0, [(demo.id, "Hi!")], 1)
    upgrade(url)
    assert state() == ([demo.id], 0, [(demo.id, "Hi!")], 1)
    with engine.connect() as conn:
        assert (
            "AUTOINCREMENT"
            in conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'demonstrations'")).scalar()
        )
    engine.dispose()
