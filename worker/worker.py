"""The training worker: claims queued runs from the database and runs them, one at a time.

    instructloop worker [--once] [--poll-interval 2] [--device cuda]

Several workers (on several machines) can share one Postgres queue: a run is claimed with
SELECT ... FOR UPDATE SKIP LOCKED, so no two workers run the same run (on SQLite one worker at a
time holds the writer lock while it claims). The state machine is in app/services/runs.py.

While a run is running:
- a background thread writes its heartbeat every settings.worker_heartbeat_s and reads
  `cancel_requested`; the algorithms poll `should_stop()` at safe points, so a cancel takes effect
  within seconds (the run ends `cancelled`, no model is registered);
- `on_metrics(step, total, metrics)` writes RunMetric rows and the progress as they come;
- SIGTERM / SIGINT make `should_stop()` true: the run stops at the next safe point, is marked
  cancelled with that reason, and the worker exits;
- any error (bad config, missing data, unknown model, out of memory, divergence) marks the run
  failed with a clear message and a short traceback, and the worker goes on with the next run;
- runs whose worker vanished (heartbeat older than settings.worker_stale_s) are marked failed by
  any live worker: before each claim, and with each heartbeat while it is busy.

A run that succeeds saves its model with save_pretrained under
settings.artifacts_dir/<database id>/run-<id>
and registers it as a ModelVersion (parents, run, final metrics) in the same transaction that
marks the run succeeded.

Several processes (`instructloop worker --processes N`, or the worker started by `accelerate
launch` / `torchrun` on one or several machines): the processes form one team (trainer/distributed.py)
and run each SFT, reward and PPO run together, data parallel. Only process 0 talks to the database:
it claims the run, tells the others what to run (over a gloo group of its own, so the others can
wait for work as long as the queue is empty), reads what the run reads once and hands it to them
(`RunContext.on_main`), beats, writes metrics and registers the model. A cancel or SIGTERM reaches
every process through the training loops, which decide each stop together. Generate and evaluate
runs are sampled by process 0 alone. The processes share the data folder (artifacts, checkpoints):
on several machines it must be a shared file system.

A failure that every process meets alike (bad config, no data, divergence) ends the run and the team
goes on. Any other failure (e.g. out of memory in one process) leaves the processes out of step: the
run is marked failed where process 0 can still do so, and the team exits, so that the launcher
(accelerate launch --max_restarts, systemd, Kubernetes) starts it again."""

import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from app.config import Settings
from app.db import make_engine, write_session
from app.models import RunKind, RunStatus
from app.services import registry, runs
from worker.context import (
    IN_STEP_FAILURES,
    OutageLog,
    Outcome,
    RunContext,
    RunStopped,
    describe_error,
    free_memory,
)

log = logging.getLogger("instructloop.worker")

TRACEBACK_FRAMES = 6

TEAM_IDLE_TIMEOUT = timedelta(days=30)
"""How long the other processes of a team wait for process 0's next run (the queue may stay empty)."""


TEAM_KINDS = (RunKind.sft, RunKind.reward, RunKind.ppo)
"""The run kinds a team of processes trains together; the others run in process 0 alone."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        poll_interval: float = 2.0,
        device: str | None = None,
        team: Any = None,
    ):
        self.settings = settings
        self.team = team  # trainer.distributed.Team of several processes, or None
        self._control: Any = None  # the team's gloo group for "run this" / "stop" (created with the first message)
        self.engine = make_engine(settings.db_url)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.poll_interval = poll_interval
        self.device = device
        self.terminating = threading.Event()
        self.signal_name = ""
        self.outage = OutageLog("worker")
        self._database_id: str | None = None

    def run_folder(self, run_id: int, suffix: str = "") -> Path:
        """artifacts/<database id>/run-<id><suffix>: the model (no suffix), `.partial` while it is
        written, `.checkpoints`, `.last-good` (a diverged PPO's last good policy)."""
        if self._database_id is None:
            with self.transaction() as session:
                self._database_id = registry.database_id(session)
        return Path(self.settings.artifacts_dir) / self._database_id / f"run-{run_id}{suffix}"

    def remove_work_folders(self, run_id: int) -> None:
        """The checkpoints and the unfinished model of a run that has ended (or will start over)."""
        for suffix in (".partial", ".checkpoints"):
            shutil.rmtree(self.run_folder(run_id, suffix), ignore_errors=True)

    def transaction(self):
        """A committed-on-exit transaction. On SQLite it takes the writer lock at its start: the
        worker's threads read then write, and a deferred SQLite transaction that another connection
        wrote behind fails at once with "database is locked" instead of waiting."""
        return write_session(self.engine)

    # -- the loop ------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name
        log.info("%s received: stopping at the next safe point", self.signal_name)
        self.terminating.set()

    def run(self, *, once: bool = False) -> int:
        """Serves runs until SIGTERM (or, with once, until one run is done or none is queued).
        Returns how many runs it handled."""
        if self.team is not None and not self.team.is_main:
            return self.follow()
        handled = 0
        log.info(
            "worker %s polling %s every %gs%s",
            self.worker_id,
            self.engine.url.render_as_string(),
            self.poll_interval,
            f" (process 0 of {self.team.size})" if self.team is not None else "",
        )
        while not self.terminating.is_set():
            self.reap()
            if self.run_next():
                handled += 1
                if once:
                    break
            elif once:
                log.info("no queued run")
                break
            else:
                self.terminating.wait(self.poll_interval)
        self.tell_team(None)  # the other processes leave too (after an out-of-step failure the launcher stops them)
        return handled

    # -- a team of processes ---------------------------------------------------------------------
    def tell_team(self, run: dict | None) -> dict | None:
        """Process 0 hands a run's description (None: stop) to the other processes; they get it
        back from this call. Over a gloo group of its own with a long timeout: the others wait here
        while the queue is empty or process 0 samples a generate run alone."""
        if self.team is None:
            return run
        import torch.distributed

        if self._control is None:
            self._control = torch.distributed.new_group(backend="gloo", timeout=TEAM_IDLE_TIMEOUT)
        box = [run]
        torch.distributed.broadcast_object_list(box, src=0, group=self._control)
        return box[0]

    def follow(self) -> int:
        """A process other than 0: runs, with process 0, each run it is told to, until told to stop."""
        log.info("worker process %d of %d: waiting for runs from process 0", self.team.rank, self.team.size)
        handled = 0
        while (message := self.tell_team(None)) is not None:
            self._database_id = message.pop("database_id")
            ctx = RunContext(self, **message)
            handled += 1
            try:
                self._dispatch(ctx)
            except IN_STEP_FAILURES as exc:  # met by every process alike: process 0 records it
                log.info("run %s ended on this process: %s", ctx.run_id, describe_error(exc))
            except BaseException:
                log.exception("run %s failed on this process alone: the team is out of step and exits", ctx.run_id)
                raise
            finally:
                free_memory()
        return handled

    def reap(self) -> list[int]:
        try:
            with self.transaction() as session:
                reaped = runs.reap_stale_runs(session, self.settings.worker_stale_s)
        except OperationalError as exc:  # the database being briefly away must not kill the worker
            self.outage.failed(exc)
            return []
        except Exception:
            log.exception("reaping stale runs failed")
            return []
        self.outage.ok()
        for run_id, status in reaped.items():
            if status == RunStatus.queued:
                log.warning("run %s: its worker vanished; queued again (resumes from its checkpoint)", run_id)
            else:
                log.warning(
                    "run %s: its worker vanished; not retried (cancel asked or no attempts left): %s",
                    run_id,
                    status.value,
                )
                self.remove_work_folders(run_id)
        return list(reaped)

    def claim(self) -> RunContext | None:
        with write_session(self.engine) as session:
            run = runs.claim_next_run(session, self.worker_id)
            if run is None:
                return None
            description: dict[str, Any] = {
                "run_id": run.id,
                "kind": run.kind,
                "project_id": run.project_id,
                "config": dict(run.config or {}),
                "input_model_ids": list(run.input_model_ids or []),
                "data_filter": dict(run.data_filter or {}),
            }
        if self.team is not None and description["kind"] in TEAM_KINDS:  # the others train it too
            self.tell_team({**description, "database_id": self.run_folder(0).parent.name})
        return RunContext(self, **description)

    def run_next(self) -> bool:
        """Claims and runs one queued run; False when the queue is empty."""
        try:
            ctx = self.claim()
        except OperationalError as exc:
            self.outage.failed(exc)
            return False
        except Exception:
            log.exception("claiming a run failed")
            return False
        if ctx is None:
            return False
        log.info("run %s (%s): started", ctx.run_id, ctx.kind.value)
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(ctx, beat_stop), daemon=True, name=f"heartbeat-run-{ctx.run_id}"
        )
        beat.start()
        started = time.monotonic()
        try:
            outcome = self._dispatch(ctx)
            if ctx.should_stop():
                raise RunStopped()
            self._succeed(ctx, outcome)
            log.info("run %s: succeeded in %.1fs", ctx.run_id, time.monotonic() - started)
        except RunStopped:
            self._stopped(ctx)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes the run's error; the worker goes on
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                self.terminating.set()
            self._fail(ctx, exc)
            if self.team is not None and not isinstance(exc, IN_STEP_FAILURES):
                raise  # the team is out of step: all its processes exit, the launcher starts them again
        finally:
            beat_stop.set()
            beat.join(timeout=10)
            free_memory()
        return True

    # -- run kinds -----------------------------------------------------------------------------
    def _dispatch(self, ctx: RunContext) -> Outcome:
        from worker import jobs  # torch and the models load with the first run, not at import

        job = jobs.JOBS.get(ctx.kind)
        if job is None:
            raise ValueError(f"This worker does not know run kind {ctx.kind!r}.")
        return job(ctx)

    # -- endings -------------------------------------------------------------------------------
    def _heartbeat(self, ctx: RunContext, stop: threading.Event) -> None:
        outage = OutageLog(f"run {ctx.run_id}: heartbeat")
        while not stop.wait(self.settings.worker_heartbeat_s):
            try:
                with self.transaction() as session:
                    state = runs.heartbeat(session, ctx.run_id, self.worker_id)
            except OperationalError as exc:  # a missed beat is retried; the reaper tolerates worker_stale_s of them
                outage.failed(exc)
                continue
            except Exception:
                log.exception("run %s: heartbeat failed", ctx.run_id)
                continue
            outage.ok()
            if state == "cancel":
                ctx.request_stop("cancelled by an admin")
            elif state == "lost":
                ctx._lose()
            self.reap()  # a busy worker still notices others that vanished

    def _succeed(self, ctx: RunContext, outcome: Outcome) -> None:
        summary = _plain(outcome.summary)
        if outcome.artifact is not None:  # the model is whole: it gets its final name
            final = self.run_folder(ctx.run_id)
            shutil.rmtree(final, ignore_errors=True)
            outcome.artifact = outcome.artifact.replace(final)
        with self.transaction() as session:
            run = runs.get_run(session, ctx.run_id)
            if not runs.finish_run(session, ctx.run_id, self.worker_id, RunStatus.succeeded, summary=summary):
                log.warning("run %s finished, but it is no longer this worker's (reaped?): result dropped", ctx.run_id)
                if outcome.artifact is not None:
                    shutil.rmtree(outcome.artifact, ignore_errors=True)
                return
            if outcome.model_kind is not None and outcome.artifact is not None:
                version = registry.register_trained(
                    session,
                    kind=outcome.model_kind,
                    run=run,
                    artifact_path=outcome.artifact,
                    parent_ids=outcome.parent_ids,
                    metrics=outcome.metrics,
                )
                run.summary = {**summary, "model_version_id": version.id}
        self.remove_work_folders(ctx.run_id)

    def _stopped(self, ctx: RunContext) -> None:
        if ctx.lost:
            log.warning("run %s: no longer this worker's; dropped", ctx.run_id)
            return
        where = f" at step {ctx.last_step} of {ctx.last_total}" if ctx.last_total else ""
        if self.terminating.is_set() and not ctx.stop.is_set():  # shutting down: another worker goes on
            why = f"{self.signal_name or 'a stop signal'}{where}"
            with self.transaction() as session:
                status = runs.release_run(session, ctx.run_id, self.worker_id, why)
            shutil.rmtree(self.run_folder(ctx.run_id, ".partial"), ignore_errors=True)
            if status != RunStatus.queued:
                self.remove_work_folders(ctx.run_id)
            log.info("run %s: stopped by %s; now %s", ctx.run_id, why, status.value if status else "not ours")
            return
        reason = f"Cancelled{where}: {ctx.stop_reason or 'cancel requested'}."
        with self.transaction() as session:
            runs.finish_run(session, ctx.run_id, self.worker_id, RunStatus.cancelled, error=reason)
        self.remove_work_folders(ctx.run_id)
        log.info("run %s: %s", ctx.run_id, reason)

    def _fail(self, ctx: RunContext, exc: BaseException) -> None:
        message = describe_error(exc)
        frames = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-TRACEBACK_FRAMES))
        log.error("run %s failed: %s", ctx.run_id, message)
        try:
            with self.transaction() as session:
                runs.finish_run(
                    session,
                    ctx.run_id,
                    self.worker_id,
                    RunStatus.failed,
                    error=f"{message}\n\nTraceback (last {TRACEBACK_FRAMES} frames):\n{frames[-4000:]}",
                )
        except Exception:
            log.exception("run %s: could not record the failure (the reaper will mark it failed)", ctx.run_id)
            return
        self.remove_work_folders(ctx.run_id)


def _plain(value: Any) -> Any:
    """JSON-safe copy of a summary (tensors and numpy scalars become numbers, NaN becomes None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if hasattr(value, "item"):
        return _plain(value.item())
    return str(value)


def main(
    settings: Settings | None = None, *, once: bool = False, poll_interval: float = 2.0, device: str | None = None
) -> int:
    """The `instructloop worker` command: serve runs until SIGTERM (or one run with once). Started by
    accelerate launch / torchrun (WORLD_SIZE > 1), it is one process of a team (see the header)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-load progress bars only clutter the worker's log
    team = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from trainer.distributed import Team

        team = Team()
    worker = Worker(settings or Settings(), poll_interval=poll_interval, device=device, team=team)
    worker.install_signal_handlers()
    handled = worker.run(once=once)
    if team is not None:
        team.leave(0)
    return handled
