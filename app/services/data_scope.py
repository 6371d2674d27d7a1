"""Which submissions and prompts may leave the app: the one filter that every export
(app.services.exports) and every run's snapshot (worker/snapshots.py) applies, so that no path
can forget a rule.

Left out everywhere:
- submissions an admin rejected (review);
- everything of a retired prompt: an admin retired it after a flag (PII, nonsense, harmful), which
  retires its tasks; what was submitted on it before stays in the database but is never exported
  or trained on (a prompt is retired when any of its tasks is);
- the labelers asked to be left out: an export leaves out the labelers an admin left out of runs
  (Labelers page, `left_out_labelers`) beside the ones it names; a run resolved them when it was
  created (DataFilter.exclude_labelers), so its data does not change under it.

And a run or an export takes the sources it asks for: labelers' submissions, imported feedback
(no labeler: user_id is NULL), or both."""

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, Select, false, or_, select, true
from sqlalchemy.orm import Session

from app.models import IMPORTED, LABELER, ReviewStatus, Task, TaskStatus, User

SOURCES = ("labelers", "imported")
"""What a run's data filter or an export may choose: labelers' submissions, imported feedback."""
SOURCE_OF = {"labelers": LABELER, "imported": IMPORTED}


def retired_prompt_ids() -> Select[Any]:
    """The prompts an admin retired (any of their tasks retired)."""
    return select(Task.prompt_id).where(Task.status == TaskStatus.retired)


def prompt_kept(prompt_id: Any) -> ColumnElement[bool]:
    """The prompt (a column holding its id) is not retired."""
    return prompt_id.not_in(retired_prompt_ids())


def from_sources(model: Any, sources: Collection[str]) -> ColumnElement[bool]:
    """Submissions of the chosen sources ("labelers", "imported")."""
    labelers, imported = "labelers" in sources, "imported" in sources
    if labelers and imported:
        return true()
    if labelers:
        return model.user_id.is_not(None)
    return model.user_id.is_(None) if imported else false()


def submission_kept(
    model: Any, prompt_id: Any, *, exclude_labelers: Collection[int] = (), sources: Collection[str] = SOURCES
) -> list[ColumnElement[bool]]:
    """The conditions a submission (of `model`, on the prompt whose id is the column `prompt_id`)
    meets to be exported or trained on."""
    conditions = [model.review != ReviewStatus.rejected, prompt_kept(prompt_id), from_sources(model, sources)]
    if exclude_labelers:
        # Imported feedback has no labeler: NOT IN alone would drop it (NULL NOT IN (...) is NULL).
        conditions.append(or_(model.user_id.is_(None), model.user_id.not_in(sorted(exclude_labelers))))
    return conditions


def left_out_labelers(session: Session) -> list[int]:
    """Labelers an admin left out of training (Labelers page, "Leave out of runs")."""
    return sorted(session.scalars(select(User.id).where(User.left_out_of_training)))
