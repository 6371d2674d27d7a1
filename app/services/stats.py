"""Figures for the admin pages: per-labeler work, agreement between labelers, gold accuracy,
data counts and submissions over time. Each function is a few grouped queries (no query per
row), so the pages stay fast with hundreds of thousands of submissions."""

import functools
import itertools
import logging
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import String, case, cast, func, literal, select, union_all
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import (
    PAPER_CATEGORY_SHARES,
    SUBMISSION_MODELS,
    Comparison,
    ComparisonChoice,
    Demonstration,
    FigureWrites,
    Project,
    Prompt,
    PromptCategory,
    Ranking,
    Role,
    Skip,
    SkipReason,
    Split,
    Task,
    TaskKind,
    TaskStatus,
    User,
)

log = logging.getLogger(__name__)
AGREEMENT_TASK_LIMIT = 2000
"""Agreement is computed over the most recent shared ranking tasks, at most this many."""


def _submissions(project_id: int | None, *columns):
    """UNION ALL of every submission kind with a `kind` column, optionally for one project."""
    parts = []
    for kind, model in SUBMISSION_MODELS.items():
        stmt = select(literal(kind.value).label("kind"), *[getattr(model, c).label(c) for c in columns])
        if project_id is not None:
            stmt = stmt.join(Task, Task.id == model.task_id).where(Task.project_id == project_id)
        parts.append(stmt)
    return union_all(*parts).subquery("subs")


# ---------------------------------------------------------------- labelers


@dataclass
class LabelerFigures:
    user: User
    done: dict[str, int] = field(default_factory=dict)
    median_ms: dict[str, float] = field(default_factory=dict)
    """Median time per task, per kind (a demonstration takes longer than an A/B choice)."""
    skips: int = 0
    prompt_flags: int = 0
    output_flags: int = 0
    last_at: Any = None
    agreement: "PairStats | None" = None
    gold_n: int = 0
    gold_accuracy: float | None = None

    @property
    def total(self) -> int:
        return sum(self.done.values())

    @property
    def skip_rate(self) -> float | None:
        seen = self.total + self.skips
        return self.skips / seen if seen else None


# ---------------------------------------------------------------- memo

_MEMO: dict[tuple, tuple[tuple, Any, datetime]] = {}


def _fingerprint(session: Session) -> tuple:
    """Changes whenever a committed write could change a figure, in this process or another: the
    newest row of each table the figures read (its id and time, read through the primary key, so a
    wiped and refilled table differs too) for inserts; the count of committed transactions that
    updated or deleted such rows (FigureWrites, bumped by every connection) for the rest (deleted
    prompts, tasks and projects, a rolled back import, gold, reviews, retired or reopened tasks);
    and the date (figures per day). One query."""
    tables = (Prompt, Task, Demonstration, Ranking, Comparison, Skip)
    newest = [select(m.id, m.created_at).order_by(m.id.desc()).limit(1).subquery() for m in tables]
    cols = [
        c for sub in newest for c in (select(sub.c.id).scalar_subquery(), select(sub.c.created_at).scalar_subquery())
    ]
    writes = select(FigureWrites.n).where(FigureWrites.id == 1).scalar_subquery()
    return (utcnow().date(), *session.execute(select(*cols, writes)).one())


def memo(session: Session, name: str, args: tuple, compute, *, fresh: bool = False) -> tuple[Any, datetime]:
    """(value, computed_at) of `compute(session)`, an aggregate of plain numbers (never ORM rows).

    Remembered per process until a figure's rows change in any process (`_fingerprint`, one indexed
    query): the fingerprint is read before computing, so a view after a committed write always
    recomputes and no figure older than the last write is shown. `fresh` recomputes anyway."""
    key = (session.get_bind().engine.url.render_as_string(), name, args)
    fingerprint = _fingerprint(session)
    hit = _MEMO.get(key)
    if hit is None or fresh or hit[0] != fingerprint:
        hit = _MEMO[key] = (fingerprint, compute(session), utcnow())
    return hit[1], hit[2]


def clear_memos() -> None:
    """Forget every remembered aggregate (tests wipe the database under a running process)."""
    _MEMO.clear()


# ---------------------------------------------------------------- labelers


def _labeler_numbers(session: Session, project_id: int | None) -> dict[int, dict[str, Any]]:
    numbers: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"done": {}, "median_ms": {}, "last_at": None, "skips": 0, "prompt_flags": 0, "output_flags": 0}
    )

    def note_last(uid, last):
        numbers[uid]["last_at"] = max(numbers[uid]["last_at"], last) if numbers[uid]["last_at"] else last

    for kind, model in SUBMISSION_MODELS.items():
        if project_id is None:
            # All projects: grouped reads and medians along the (user_id, time_spent_ms, ...) index.
            for uid, n, last in session.execute(
                select(model.user_id, func.count(), func.max(model.created_at))
                .where(model.user_id.is_not(None))  # imported feedback has no labeler
                .group_by(model.user_id)
            ):
                if uid is None:
                    continue
                numbers[uid]["done"][kind.value] = n
                note_last(uid, last)
            medians = _middle_times(
                session, model, {uid: c["done"][kind.value] for uid, c in numbers.items() if kind.value in c["done"]}
            )
            for uid, value in medians.items():
                numbers[uid]["median_ms"][kind.value] = value
        else:
            # One project's rows are spread over the index. Per labeler the database counts them and
            # joins their times into one string; the median is taken here. (Fetching the 44,000 rows
            # of a large project instead cost 2-3x as much, most of it garbage-collector passes over
            # the row objects.)
            q = (
                select(
                    model.user_id,
                    func.count(),
                    func.max(model.created_at),
                    func.aggregate_strings(cast(model.time_spent_ms, String), ","),
                )
                .join(Task, Task.id == model.task_id)
                .where(Task.project_id == project_id, model.user_id.is_not(None))  # imported: no labeler
                .group_by(model.user_id)
            )
            for uid, n, last, times in session.execute(q):
                if uid is None:
                    continue
                numbers[uid]["done"][kind.value] = n
                numbers[uid]["median_ms"][kind.value] = float(statistics.median(map(int, times.split(","))))
                note_last(uid, last)
    flagged = case((Skip.reason != SkipReason.skip, 1), else_=0)
    skip_q = select(Skip.user_id, func.count(), func.sum(flagged)).group_by(Skip.user_id)
    if project_id is not None:
        skip_q = skip_q.join(Task, Task.id == Skip.task_id).where(Task.project_id == project_id)
    for uid, n, flags in session.execute(skip_q):
        numbers[uid]["skips"], numbers[uid]["prompt_flags"] = n, int(flags or 0)
    for uid, n in _output_flag_counts(session, project_id).items():
        numbers[uid]["output_flags"] = n
    return dict(numbers)


def _middle_times(session: Session, model, counts: dict[int, int]) -> dict[int, float]:
    """Median time_spent_ms per labeler over all projects, given each one's count: the middle one or
    two values, read with LIMIT/OFFSET along the (user_id, time_spent_ms, ...) index, so nothing is
    sorted. One statement (a UNION ALL of one short read per labeler) per 200 labelers (SQLite
    allows 500 terms)."""
    medians: dict[int, float] = {}
    users = sorted(counts)
    for i in range(0, len(users), 200):
        parts = []
        for uid in users[i : i + 200]:
            n = counts[uid]
            q = (
                select(literal(uid).label("user_id"), model.time_spent_ms.label("ms"))
                .where(model.user_id == uid)
                .order_by(model.time_spent_ms)
                .limit(1 if n % 2 else 2)
                .offset((n - 1) // 2)
            )
            parts.append(select(q.subquery()))
        middle: dict[int, list[int]] = defaultdict(list)
        for uid, ms in session.execute(union_all(*parts)):
            middle[uid].append(ms)
        medians.update({uid: sum(v) / len(v) for uid, v in middle.items()})
    return medians


def labeler_figures(session: Session, project_id: int | None = None, *, fresh: bool = False) -> list[LabelerFigures]:
    """One row per labeler (and per admin who labeled): a fixed number of grouped queries, remembered
    until the rows they are counted from change (see memo)."""
    numbers, _ = memo(session, "labelers", (project_id,), lambda s: _labeler_numbers(s, project_id), fresh=fresh)
    users = session.scalars(
        select(User).where((User.role == Role.labeler) | User.id.in_(list(numbers))).order_by(User.email)
    ).all()
    rows = []
    for user in users:
        row = LabelerFigures(user)
        for key, value in numbers.get(user.id, {}).items():
            setattr(row, key, value)
        rows.append(row)
    return rows


def _output_flag_counts(session: Session, project_id: int | None) -> dict[int, int]:
    """Flags labelers ticked on ranked outputs (each ranking stores its count)."""
    q = (
        select(Ranking.user_id, func.sum(Ranking.flag_count))
        .where(Ranking.user_id.is_not(None))
        .group_by(Ranking.user_id)
    )
    if project_id is not None:
        q = q.join(Task, Task.id == Ranking.task_id).where(Task.project_id == project_id)
    return {uid: int(n or 0) for uid, n in session.execute(q) if uid is not None}


# ---------------------------------------------------------------- agreement


@dataclass
class PairStats:
    """Pairs of outputs that two labelers both ordered strictly, and how many the same way."""

    same: int = 0
    comparable: int = 0
    tau_sum: float = 0.0
    tau_n: int = 0
    tasks: int = 0

    def add(self, other: "PairStats") -> None:
        self.same += other.same
        self.comparable += other.comparable
        self.tau_sum += other.tau_sum
        self.tau_n += other.tau_n
        self.tasks += other.tasks

    @property
    def rate(self) -> float | None:
        return self.same / self.comparable if self.comparable else None

    @property
    def tau(self) -> float | None:
        return self.tau_sum / self.tau_n if self.tau_n else None


def ranks_of(order: list[list[int]]) -> dict[int, int]:
    """Completion id -> position of its group (0 = best); tied ids share a position."""
    return {int(cid): pos for pos, group in enumerate(order) for cid in group}


def compare_orders(a: list[list[int]], b: list[list[int]]) -> PairStats:
    """Pairwise same-order rate (pairs both ordered strictly) and Kendall's tau-b between two rankings."""
    return compare_ranks(ranks_of(a), ranks_of(b))


def compare_ranks(ra: dict[int, int], rb: dict[int, int]) -> PairStats:
    """compare_orders over rankings already turned into ranks_of (each is compared more than once)."""
    ids = sorted(ra.keys() & rb.keys())
    return _pair_stats(*_count_pairs(_signs(ra, ids), _signs(rb, ids)))


def _signs(ranks: dict[int, int], ids) -> tuple[int, ...]:
    """For each pair (i, j) of ids in order: 1 if i is ranked below j, -1 if above, 0 if tied."""
    return _signs_of_positions(tuple(ranks[i] for i in ids))


@functools.lru_cache(maxsize=4096)
def _signs_of_positions(positions: tuple[int, ...]) -> tuple[int, ...]:
    """The signs depend only on the positions in id order, and K outputs have few such patterns."""
    return tuple((a > b) - (a < b) for a, b in itertools.combinations(positions, 2))


@functools.lru_cache(maxsize=65536)
def _count_pairs(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(concordant, discordant, tied in a only, tied in b only) over two rankings' signs. Rankings
    of K outputs have few distinct sign patterns, so most calls are answered from the cache."""
    concordant = discordant = ties_a = ties_b = 0
    for x, y in zip(a, b, strict=True):
        if x == 0 and y == 0:
            continue
        if x == 0:
            ties_a += 1
        elif y == 0:
            ties_b += 1
        elif x == y:
            concordant += 1
        else:
            discordant += 1
    return concordant, discordant, ties_a, ties_b


def _pair_stats(concordant: int, discordant: int, ties_a: int, ties_b: int) -> PairStats:
    """Same-order rate over strictly ordered pairs, and Kendall's tau-b."""
    stats = PairStats(same=concordant, comparable=concordant + discordant, tasks=1)
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    if denom:
        stats.tau_sum, stats.tau_n = (concordant - discordant) / denom, 1
    return stats


@dataclass
class Agreement:
    project: PairStats
    per_labeler: dict[int, PairStats]
    per_pair: dict[tuple[int, int], PairStats]
    shared_tasks: int
    limited: bool


def ranking_agreement(session: Session, project_id: int | None = None, limit: int = AGREEMENT_TASK_LIMIT) -> Agreement:
    """Agreement on ranking tasks that two or more labelers did (the most recent `limit` of them)."""
    # Labelers only: imported rankings (no labeler) agree with no one.
    shared_tasks = (
        select(Ranking.task_id).where(Ranking.user_id.is_not(None)).group_by(Ranking.task_id).having(func.count() >= 2)
    )
    if project_id is not None:
        shared_tasks = shared_tasks.join(Task, Task.id == Ranking.task_id).where(Task.project_id == project_id)
    shared = shared_tasks.order_by(Ranking.task_id.desc()).limit(limit + 1).subquery()
    # One statement (no list of 2,000 ids to bind): the rankings of the newest limit + 1 shared tasks.
    by_task: dict[int, list[tuple]] = defaultdict(list)  # (user, output ids, pair signs, ranks)
    for task_id, user_id, order in session.execute(
        select(Ranking.task_id, Ranking.user_id, Ranking.order).where(
            Ranking.task_id.in_(select(shared.c.task_id)), Ranking.user_id.is_not(None)
        )
    ):
        ranks = ranks_of(order)
        ids = tuple(sorted(ranks))
        by_task[task_id].append((user_id, ids, _signs(ranks, ids), ranks))
    limited = len(by_task) > limit
    if limited:
        del by_task[min(by_task)]
    total = PairStats()
    per_labeler: defaultdict[int, PairStats] = defaultdict(PairStats)
    per_pair: defaultdict[tuple[int, int], PairStats] = defaultdict(PairStats)
    for _, entries in sorted(by_task.items()):
        for (ua, ids_a, sa, ra), (ub, ids_b, sb, rb) in itertools.combinations(sorted(entries, key=lambda e: e[0]), 2):
            s = _pair_stats(*_count_pairs(sa, sb)) if ids_a == ids_b else compare_ranks(ra, rb)
            total.add(s)
            per_labeler[ua].add(s)
            per_labeler[ub].add(s)
            per_pair[(ua, ub)].add(s)
    total.tasks = len(by_task)
    return Agreement(total, dict(per_labeler), dict(per_pair), len(by_task), limited)


# ---------------------------------------------------------------- gold


def gold_score_ranking(order: list, gold: dict) -> float | None:
    """Share of the gold's strictly ordered pairs that the labeler ordered the same way (a tie counts wrong)."""
    g, r = ranks_of(gold.get("order") or []), ranks_of(order)
    pairs = [(i, j) for i, j in itertools.combinations(sorted(g), 2) if g[i] != g[j]]
    if not pairs:
        return None
    same = sum(1 for i, j in pairs if i in r and j in r and (r[i] - r[j]) * (g[i] - g[j]) > 0)
    return same / len(pairs)


def comparison_winner(choice: ComparisonChoice, a_id: int, b_id: int) -> int | None:
    return a_id if choice == ComparisonChoice.a else b_id if choice == ComparisonChoice.b else None


def gold_accuracy(session: Session, project_id: int | None = None) -> dict[int, tuple[int, float]]:
    """Per labeler: (gold tasks answered, mean score on them). The gold tasks are found first, then
    their answers through the (task, labeler) unique indexes: two short queries per kind."""
    q = select(Task.id, Task.kind, Task.gold).where(Task.gold.is_not(None))
    if project_id is not None:
        q = q.where(Task.project_id == project_id)
    gold = {tid: (kind, g) for tid, kind, g in session.execute(q) if isinstance(g, dict)}
    scores: dict[int, list[float]] = defaultdict(list)
    ranked = [tid for tid, (kind, _) in gold.items() if kind == TaskKind.ranking]
    compared = [tid for tid, (kind, _) in gold.items() if kind == TaskKind.comparison]
    for i in range(0, len(ranked), 1000):
        for tid, uid, order in session.execute(
            select(Ranking.task_id, Ranking.user_id, Ranking.order).where(Ranking.task_id.in_(ranked[i : i + 1000]))
        ):
            if uid is not None and (s := gold_score_ranking(order, gold[tid][1])) is not None:
                scores[uid].append(s)
    for i in range(0, len(compared), 1000):
        rows = session.execute(
            select(
                Comparison.task_id,
                Comparison.user_id,
                Comparison.choice,
                Comparison.a_completion_id,
                Comparison.b_completion_id,
            ).where(Comparison.task_id.in_(compared[i : i + 1000]))
        )
        for tid, uid, choice, a_id, b_id in rows:
            if uid is not None and "winner" in gold[tid][1]:
                scores[uid].append(1.0 if comparison_winner(choice, a_id, b_id) == gold[tid][1]["winner"] else 0.0)
    return {uid: (len(v), sum(v) / len(v)) for uid, v in scores.items()}


def gold_tasks(session: Session, project_id: int | None = None, limit: int = 100) -> list[Task]:
    q = select(Task).where(Task.gold.is_not(None)).order_by(Task.id.desc()).limit(limit)
    if project_id is not None:
        q = q.where(Task.project_id == project_id)
    return [t for t in session.scalars(q) if isinstance(t.gold, dict)]


def labelers_report(
    session: Session, project_id: int | None = None, *, fresh: bool = False
) -> tuple[list[LabelerFigures], Agreement, Any]:
    """The labelers page: figures, agreement and gold accuracy, and when the remembered part was computed."""
    rows = labeler_figures(session, project_id, fresh=fresh)
    agreement, as_of = memo(
        session, "agreement", (project_id,), lambda s: ranking_agreement(s, project_id), fresh=fresh
    )
    gold = gold_accuracy(session, project_id)
    for row in rows:
        row.agreement = agreement.per_labeler.get(row.user.id)
        if row.user.id in gold:
            row.gold_n, row.gold_accuracy = gold[row.user.id]
    return rows, agreement, as_of


# ---------------------------------------------------------------- data


def project_summary(session: Session, project_id: int, *, fresh: bool = False) -> dict[str, Any]:
    """Prompts per split, tasks per kind and status, submissions per kind (remembered, see memo)."""
    return memo(session, "summary", (project_id,), lambda s: _project_summary(s, project_id), fresh=fresh)[0]


def _project_summary(session: Session, project_id: int) -> dict[str, Any]:
    prompts = dict(
        session.execute(
            select(Prompt.split, func.count()).where(Prompt.project_id == project_id).group_by(Prompt.split)
        ).all()
    )
    tasks = session.execute(
        select(Task.kind, Task.status, func.count())
        .where(Task.project_id == project_id)
        .group_by(Task.kind, Task.status)
    ).all()
    subs = _submissions(project_id, "id")
    done: dict[str, int] = dict(session.execute(select(subs.c.kind, func.count()).group_by(subs.c.kind)).all())
    task_counts: dict[str, dict[str, int]] = defaultdict(dict)
    for kind, status, n in tasks:
        task_counts[kind.value][status.value] = n
    return {
        "prompts": {s.value: prompts.get(s, 0) for s in Split},
        "prompts_total": sum(prompts.values()),
        "tasks": dict(task_counts),
        "done": {k.value: done.get(k.value, 0) for k in TaskKind},
    }


@dataclass
class DataOverview:
    projects: list[Project]
    counts: dict[int, dict[str, dict[str, int]]]
    """project id -> "prompts" / task kind -> split -> count."""
    open_tasks: dict[int, dict[str, int]]
    per_day: list[tuple[date, dict[str, int]]]
    labelers: int
    as_of: Any = None


def _data_counts(session: Session) -> dict[int, dict[str, dict[str, int]]]:
    counts: dict[int, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for pid, split, n in session.execute(
        select(Prompt.project_id, Prompt.split, func.count()).group_by(Prompt.project_id, Prompt.split)
    ):
        counts[pid]["prompts"][split.value] = n
    for kind, model in SUBMISSION_MODELS.items():
        q = (
            select(Task.project_id, Prompt.split, func.count())
            .select_from(model)
            .join(Task, Task.id == model.task_id)
            .join(Prompt, Prompt.id == Task.prompt_id)
            .group_by(Task.project_id, Prompt.split)
        )
        for pid, split, n in session.execute(q):
            counts[pid][kind.value][split.value] = n
    for pid, kind, n in session.execute(
        select(Task.project_id, Task.kind, func.count())
        .where(Task.status == TaskStatus.open)
        .group_by(Task.project_id, Task.kind)
    ):
        counts[pid]["open"][kind.value] = n
    return {pid: dict(c) for pid, c in counts.items()}


def data_overview(
    session: Session, days: int = 30, project_id: int | None = None, *, fresh: bool = False
) -> DataOverview:
    """Counts per project, kind and split, open tasks, and submissions per day; the counts are
    remembered until their rows change (see memo)."""
    projects = session.scalars(select(Project).order_by(Project.name)).all()
    counts, as_of = memo(session, "data", (), _data_counts, fresh=fresh)
    per_day, _ = memo(
        session, "per_day", (days, project_id), lambda s: submissions_per_day(s, days, project_id), fresh=fresh
    )
    open_tasks = {pid: c.get("open", {}) for pid, c in counts.items()}
    labelers = session.scalar(select(func.count(User.id)).where(User.role == Role.labeler, User.is_active)) or 0
    return DataOverview(list(projects), counts, open_tasks, per_day, labelers, as_of)


@dataclass
class CategoryMix:
    """A project's prompts per InstructGPT category, beside the paper's API mix (Table 1)."""

    counts: dict[PromptCategory | None, int] = field(default_factory=dict)
    """None: uncategorized."""
    pii: int = 0
    """Prompts the intake flagged for personal data."""

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def categorized(self) -> int:
        return self.total - self.counts.get(None, 0)

    def rows(self) -> list[tuple[str, int, float | None, float]]:
        """(category, prompts, percent of the categorized prompts, the paper's percent), in the paper's order."""
        n = self.categorized
        return [
            (c.value, self.counts.get(c, 0), 100 * self.counts.get(c, 0) / n if n else None, paper)
            for c, paper in PAPER_CATEGORY_SHARES.items()
        ]


def category_mix(session: Session, project_ids: list[int]) -> dict[int, CategoryMix]:
    """Per project: prompts per category and PII-flagged prompts. Not remembered: cheap, one grouped read of the (project_id, category, pii) index."""
    mixes: dict[int, CategoryMix] = {pid: CategoryMix() for pid in project_ids}
    if not project_ids:
        return mixes
    flagged = Prompt.pii.is_not(None)
    for pid, category, has_pii, n in session.execute(
        select(Prompt.project_id, Prompt.category, flagged, func.count())
        .where(Prompt.project_id.in_(project_ids))
        .group_by(Prompt.project_id, Prompt.category, flagged)
    ):
        mix = mixes[pid]
        mix.counts[category] = mix.counts.get(category, 0) + n
        mix.pii += n if has_pii else 0
    return mixes


def submissions_per_day(
    session: Session, days: int = 30, project_id: int | None = None
) -> list[tuple[date, dict[str, int]]]:
    """Every day of the last `days` (zeros included), with the submissions of each kind."""
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    subs = _submissions(project_id, "created_at")
    day = func.date(subs.c.created_at)
    rows = session.execute(
        select(day, subs.c.kind, func.count()).where(subs.c.created_at >= _start_of(first)).group_by(day, subs.c.kind)
    ).all()
    found: dict[date, dict[str, int]] = defaultdict(dict)
    for d, kind, n in rows:
        d = date.fromisoformat(d) if isinstance(d, str) else d
        found[d][kind] = n
    return [(first + timedelta(days=i), found.get(first + timedelta(days=i), {})) for i in range(days)]


def _start_of(d: date):
    from datetime import UTC, datetime

    return datetime(d.year, d.month, d.day, tzinfo=UTC)
