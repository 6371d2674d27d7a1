"""The database snapshot a run trains on (the worker's side: SQLAlchemy and the app's models,
no torch): demonstrations, rankings and prompts become the plain examples of trainer/data.py, each
prompt as its conversation (Prompt.messages), which the trainer formats with the chat template.

A run reads its data once, when it starts, and records exactly which rows it used (ids) and a
sha256 of their contents in run.dataset_snapshot, so every model can be traced to its data and a
later edit of a row shows up as a different hash."""

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import (
    Comparison,
    ComparisonChoice,
    Completion,
    Demonstration,
    Prompt,
    Ranking,
    ReviewStatus,
    Split,
    Task,
    TaskKind,
)
from app.services import data_scope
from runconfig import DataFilter
from trainer.data import PromptItem, RankingExample, SFTExample

HOLDOUT_EVERY = 10
"""With no rows on the valid split, every 10th training prompt (by id) is held out instead."""


class DataError(ValueError):
    """The project's data cannot feed this run; the message says what to fix."""


@dataclass
class Snapshot:
    """Which rows a run used: {table: [ids]}, a sha256 of their contents, counts and notes."""

    rows: dict[str, list[int]]
    manifest: list[Any] = field(repr=False)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    revisions: dict[str, dict[int, int]] = field(default_factory=dict)
    """Submissions used at a revision past the first, per table: id -> revision (the labeler's revised answer)."""

    @property
    def sha256(self) -> str:
        blob = json.dumps(self.manifest, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def record(self) -> dict[str, Any]:
        """What goes into TrainingRun.dataset_snapshot."""
        return {
            "rows": {k: sorted(v) for k, v in self.rows.items()},
            "sha256": self.sha256,
            "counts": self.counts,
            "notes": self.notes,
            **(
                {"revisions": {t: {str(k): v for k, v in sorted(ids.items())} for t, ids in self.revisions.items()}}
                if self.revisions
                else {}
            ),
        }

    def keep_prompts(self, ids: list[int]) -> None:
        """Narrows a prompt snapshot to the prompts the run really used (e.g. those that fit the context)."""
        keep = set(ids)
        self.rows["prompts"] = [i for i in self.rows.get("prompts", []) if i in keep]
        self.manifest = [m for m in self.manifest if m[0] != "prompt" or m[1] in keep]
        self.counts["prompts"] = len(self.rows["prompts"])

    def merge(self, other: "Snapshot") -> "Snapshot":
        rows = {k: list(v) for k, v in self.rows.items()}
        for key, ids in other.rows.items():
            rows[key] = sorted(set(rows.get(key, [])) | set(ids))
        return Snapshot(
            rows,
            self.manifest + other.manifest,
            {**self.counts, **other.counts},
            self.notes + other.notes,
            {**self.revisions, **other.revisions},
        )


def _conversation(prompt: Prompt) -> str | list[dict[str, str]]:
    """What the model reads: the prompt's messages (copied, so no example shares the row's list), or
    for a single user turn its text, which the trainer reads as that one message (the same tokens)."""
    messages = prompt.messages
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _manifest_prompt(prompt: Prompt) -> str | list[list[str]]:
    """The prompt in a manifest: a single user turn as its text (so the hash of a snapshot taken
    before conversations stays the same), a longer conversation as its [role, content] turns."""
    model_prompt = _conversation(prompt)
    if isinstance(model_prompt, str):
        return model_prompt
    return [[m["role"], m["content"]] for m in model_prompt]


def _splits(names: Sequence[str]) -> list[Split]:
    return [Split(s) for s in names]


def _held_out(prompt_ids: set[int]) -> set[int]:
    return {pid for i, pid in enumerate(sorted(prompt_ids)) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1}


def _revised(table: str, subs: list) -> dict[str, dict[int, int]]:
    revised = {s.id: s.revision for s in subs if s.revision > 1}
    return {table: revised} if revised else {}


def _kept(model, data_filter: DataFilter) -> list:
    """The shared rule of what may be trained on (app.services.data_scope), for this run's filter.
    Every statement here joins Prompt."""
    return data_scope.submission_kept(
        model, Prompt.id, exclude_labelers=data_filter.exclude_labelers, sources=data_filter.sources
    )


def _left_out_notes(session: Session, stmt, model, data_filter: DataFilter, what: str) -> tuple[int, list[str]]:
    """How many of the rows `stmt` selects (before the shared filter) an admin rejected, and the
    notes of what the filter leaves out: rejected, on retired prompts, of the sources not chosen."""

    def count(*where) -> int:
        return int(session.scalar(stmt.with_only_columns(func.count(model.id)).where(*where)) or 0)

    rejected = count(model.review == ReviewStatus.rejected)
    notes = [f"Left out {rejected} {what} an admin rejected."] if rejected else []
    if retired := count(~data_scope.prompt_kept(Prompt.id)):
        notes.append(f"Left out {retired} {what} of retired prompts.")
    if set(data_filter.sources) != set(data_scope.SOURCES):
        other = [s for s in data_scope.SOURCES if s not in data_filter.sources]
        if unchosen := count(data_scope.from_sources(model, other)):
            notes.append(f"Left out {unchosen} {what} of the sources not chosen ({', '.join(other)}).")
    return rejected, notes


def _source_counts(table: str, subs: list) -> dict[str, int]:
    """How many of the rows used came from labelers and how many were imported."""
    imported = sum(1 for s in subs if s.user_id is None)
    return {f"{table}_labelers": len(subs) - imported, f"{table}_imported": imported}


def snapshot_demonstrations(
    session: Session, project_id: int, data_filter: DataFilter | None = None
) -> tuple[list[SFTExample], list[SFTExample], Snapshot]:
    """Accepted demonstrations -> (train, valid) SFT examples, split by their prompt's split."""
    data_filter = data_filter or DataFilter()
    train_splits = _splits(data_filter.splits)
    valid_splits = _splits(data_filter.valid_splits)
    stmt = (
        select(Demonstration, Prompt)
        .join(Prompt, Prompt.id == Demonstration.prompt_id)
        .where(Prompt.project_id == project_id, Prompt.split.in_(train_splits + valid_splits))
        .order_by(Demonstration.id)
    )
    rejected, notes = _left_out_notes(session, stmt.order_by(None), Demonstration, data_filter, "demonstration(s)")
    rows = session.execute(stmt.where(*_kept(Demonstration, data_filter))).all()
    if not any(p.split in train_splits for _, p in rows):
        raise DataError(
            f"No accepted demonstrations on the {'/'.join(train_splits)} prompts of project "
            f"{project_id}: collect (or accept) demonstrations before an SFT run."
        )
    holdout: set[int] = set()
    if not any(p.split in valid_splits and p.split not in train_splits for _, p in rows):
        holdout = _held_out({p.id for _, p in rows})
        notes.append(
            f"No demonstrations on the {'/'.join(valid_splits)} split: held out every "
            f"{HOLDOUT_EVERY}th training prompt ({len(holdout)} prompts) for the validation loss."
        )
    train: list[SFTExample] = []
    valid: list[SFTExample] = []
    manifest: list[Any] = []
    for demo, prompt in rows:
        example = SFTExample(prompt=_conversation(prompt), completion=demo.text)
        is_valid = prompt.id in holdout or (prompt.split in valid_splits and prompt.split not in train_splits)
        (valid if is_valid else train).append(example)
        manifest.append(
            ["demonstration", demo.id, prompt.id, "valid" if is_valid else "train", _manifest_prompt(prompt), demo.text]
        )
    snapshot = Snapshot(
        rows={"demonstrations": [d.id for d, _ in rows], "prompts": sorted({p.id for _, p in rows})},
        manifest=manifest,
        counts={
            "sft_train": len(train),
            "sft_valid": len(valid),
            "demonstrations_rejected": rejected,
            **_source_counts("demonstrations", [d for d, _ in rows]),
        },
        notes=notes,
        revisions=_revised("demonstrations", [d for d, _ in rows]),
    )
    return train, valid, snapshot


def snapshot_rankings(
    session: Session, project_id: int, data_filter: DataFilter | None = None
) -> tuple[list[RankingExample], list[RankingExample], Snapshot]:
    """Labelers' rankings -> (train, valid) RankingExamples. Rankings with one group only (all tied)
    carry no preference and are left out. A ranking naming a completion that no longer exists fails."""
    data_filter = data_filter or DataFilter()
    train_splits = _splits(data_filter.splits)
    valid_splits = _splits(data_filter.valid_splits)
    stmt = (
        select(Ranking, Task, Prompt)
        .join(Task, Task.id == Ranking.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .where(
            Task.project_id == project_id, Task.kind == TaskKind.ranking, Prompt.split.in_(train_splits + valid_splits)
        )
        .order_by(Ranking.id)
    )
    rejected, notes = _left_out_notes(session, stmt.order_by(None), Ranking, data_filter, "ranking(s)")
    rows = session.execute(stmt.where(*_kept(Ranking, data_filter))).all()
    pairs = _imported_pairs(session, project_id, train_splits + valid_splits, data_filter)
    if not any(p.split in train_splits for _, _, p in rows) and not any(
        p.split in train_splits for _, _, p, _ in pairs
    ):
        raise DataError(
            f"No rankings on the {'/'.join(train_splits)} prompts of project {project_id}: run "
            "`generate` and collect rankings before a reward run."
        )
    wanted = {cid for r, _, _ in rows for group in r.order for cid in group}
    found = session.execute(
        select(Completion.id, Completion.text, Completion.generation).where(Completion.id.in_(wanted))
    ).all()
    texts = {cid: text for cid, text, _ in found}
    ended = {cid: bool((generation or {}).get("ended_with_eos", True)) for cid, _, generation in found}
    for ranking, task, _ in rows:
        missing = sorted({cid for group in ranking.order for cid in group} - set(texts))
        if missing:
            raise DataError(
                f"Ranking {ranking.id} (task {task.id}) refers to completion(s) {missing}, which no "
                "longer exist. Exclude its labeler with data_filter.exclude_labelers, or restore the "
                "completions, then start the run again."
            )
    holdout: set[int] = set()
    prompts_used = [p for _, _, p in rows] + [p for _, _, p, _ in pairs]
    if not any(p.split in valid_splits and p.split not in train_splits for p in prompts_used):
        holdout = _held_out({p.id for p in prompts_used})
        notes.append(
            f"No rankings on the {'/'.join(valid_splits)} split: held out every {HOLDOUT_EVERY}th "
            f"training prompt ({len(holdout)} prompts) for the held-out accuracy."
        )
    train: list[RankingExample] = []
    valid: list[RankingExample] = []
    manifest: list[Any] = []
    used: list[Ranking] = []
    no_preference = 0
    for ranking, task, prompt in rows:
        groups = [list(g) for g in ranking.order if g]
        if len(groups) < 2:
            no_preference += 1
            continue
        ids = [cid for group in groups for cid in group]
        index = {cid: i for i, cid in enumerate(ids)}
        example = RankingExample(
            prompt=_conversation(prompt),
            completions=[texts[cid] for cid in ids],
            order=[[index[cid] for cid in group] for group in groups],
            ended=[ended[cid] for cid in ids],
            meta={"ranking_id": ranking.id, "task_id": task.id, "prompt_id": prompt.id, "user_id": ranking.user_id},
        )
        is_valid = prompt.id in holdout or (prompt.split in valid_splits and prompt.split not in train_splits)
        (valid if is_valid else train).append(example)
        used.append(ranking)
        manifest.append(
            [
                "ranking",
                ranking.id,
                prompt.id,
                "valid" if is_valid else "train",
                _manifest_prompt(prompt),
                groups,
                [texts[cid] for cid in ids],
            ]
        )
    for comparison, task, prompt, (chosen, rejected_text) in pairs:
        example = RankingExample(
            prompt=_conversation(prompt),
            completions=[chosen[1], rejected_text[1]],
            order=[[0], [1]],
            ended=[True, True],  # written by people, not sampled: nothing was cut off
            meta={"comparison_id": comparison.id, "task_id": task.id, "prompt_id": prompt.id, "user_id": None},
        )
        is_valid = prompt.id in holdout or (prompt.split in valid_splits and prompt.split not in train_splits)
        (valid if is_valid else train).append(example)
        manifest.append(
            [
                "comparison",
                comparison.id,
                prompt.id,
                "valid" if is_valid else "train",
                _manifest_prompt(prompt),
                [[chosen[0]], [rejected_text[0]]],
                [chosen[1], rejected_text[1]],
            ]
        )
    if no_preference:
        notes.append(f"Left out {no_preference} ranking(s) with every output tied (no preference to learn).")
    if not train:
        raise DataError(
            f"Every training ranking of project {project_id} ties all its outputs: there is no preference to learn yet."
        )
    snapshot = Snapshot(
        rows={
            "rankings": [r.id for r in used],
            **({"comparisons": [c.id for c, _, _, _ in pairs]} if pairs else {}),
            "prompts": sorted({p.id for p in prompts_used}),
            "completions": sorted(
                {cid for r in used for g in r.order for cid in g} | {a[0] for _, _, _, ab in pairs for a in ab}
            ),
        },
        revisions=_revised("rankings", used),
        manifest=manifest,
        counts={
            "rankings_train": len(train),
            "rankings_valid": len(valid),
            "rankings_rejected": rejected,
            **_source_counts("rankings", used),
            "comparisons_imported": len(pairs),
        },
        notes=notes,
    )
    return train, valid, snapshot


def _imported_pairs(session: Session, project_id: int, splits: list[Split], data_filter: DataFilter) -> list:
    """Imported comparisons (hh-rlhf pairs, TRL preference files) as (comparison, task, prompt,
    ((chosen id, text), (rejected id, text))), when the run takes imported feedback. Labelers'
    A/B comparisons are an evaluation's verdicts on two models, never reward training data: the
    judge stays apart from the training signal."""
    if "imported" not in data_filter.sources:
        return []
    stmt = (
        select(Comparison, Task, Prompt)
        .join(Task, Task.id == Comparison.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .where(
            Task.project_id == project_id,
            Prompt.split.in_(splits),
            Comparison.user_id.is_(None),
            Comparison.choice != ComparisonChoice.tie,
            *_kept(Comparison, data_filter),
        )
        .order_by(Comparison.id)
    )
    rows = session.execute(stmt).all()
    ids = {cid for c, _, _ in rows for cid in (c.a_completion_id, c.b_completion_id)}
    texts: dict[int, str] = {}
    for i in range(0, len(ids), 1000):
        chunk = sorted(ids)[i : i + 1000]
        texts.update(session.execute(select(Completion.id, Completion.text).where(Completion.id.in_(chunk))).all())
    pairs = []
    for c, task, prompt in rows:
        chosen, rejected = (
            (c.a_completion_id, c.b_completion_id)
            if c.choice == ComparisonChoice.a
            else (c.b_completion_id, c.a_completion_id)
        )
        pairs.append((c, task, prompt, ((chosen, texts[chosen]), (rejected, texts[rejected]))))
    return pairs


def snapshot_prompts(
    session: Session,
    project_id: int,
    splits: Sequence[str],
    *,
    limit: int = 0,
    without_task_kind: TaskKind | None = None,
) -> tuple[list[PromptItem], Snapshot]:
    """Prompts of the given splits, oldest first (at most `limit`, 0 = all); with `without_task_kind`
    only prompts that have no task of that kind yet."""
    split_values = [Split(s) for s in splits]
    stmt = (
        select(Prompt)
        .where(Prompt.project_id == project_id, Prompt.split.in_(split_values), data_scope.prompt_kept(Prompt.id))
        .order_by(Prompt.id)
    )
    if without_task_kind is not None:
        has_task = select(Task.prompt_id).where(Task.project_id == project_id, Task.kind == without_task_kind)
        stmt = stmt.where(Prompt.id.not_in(has_task))
    if limit:
        stmt = stmt.limit(limit)
    prompts = list(session.scalars(stmt))
    if not prompts:
        extra = f" without a {without_task_kind.value} task" if without_task_kind else ""
        raise DataError(
            f"Project {project_id} has no {'/'.join(splits)} prompts{extra}: import prompts "
            "(or choose another split) and start the run again."
        )
    items = []
    for p in prompts:
        model_prompt = _conversation(p)
        messages = None if isinstance(model_prompt, str) else model_prompt
        items.append(PromptItem(id=p.id, text=p.text, split=p.split.value, messages=messages))
    snapshot = Snapshot(
        rows={"prompts": [p.id for p in items]},
        manifest=[["prompt", p.id, p.split.value, _manifest_prompt(p)] for p in prompts],
        counts={"prompts": len(items)},
    )
    return items, snapshot
