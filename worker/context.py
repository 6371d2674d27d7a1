"""One run as its code sees it (`RunContext`): its settings, database sessions on process 0, input
models, metrics, the stop signal; and what a run hands back (`Outcome`). Used by worker.jobs, made by
worker.worker."""

import ctypes
import gc
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.config import Settings
from app.models import ModelKind, ModelVersion, Project, RunKind
from app.services import ServiceError, registry, runs
from runconfig import DataFilter
from trainer.errors import TrainingDiverged

log = logging.getLogger("instructloop.worker")

T = TypeVar("T")


class RunStopped(Exception):
    """Raised at a safe point between phases once should_stop() is true."""


class SharedError(ValueError):
    """An error process 0 met while reading for the whole team (`RunContext.on_main`), raised in the others."""


# Failures that every process of a team meets at the same point, after which the team is still in step.
IN_STEP_FAILURES = (RunStopped, TrainingDiverged, ValueError)


@dataclass(frozen=True)
class VersionInfo:
    """What a run needs of an input model version (a plain copy, usable outside any session)."""

    id: int
    name: str
    kind: ModelKind
    location: str


@dataclass
class Outcome:
    """What a run kind hands back: its summary, and the model to register when it trained one."""

    summary: dict[str, Any]
    model_kind: ModelKind | None = None
    artifact: Path | None = None
    parent_ids: list[int] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class OutageLog:
    """While the database is away: one line when writes start failing, one every `every_s` while
    they go on failing, one when they work again, instead of a traceback per failed write (a 15 s
    outage once wrote 244,243 log lines)."""

    def __init__(self, what: str, every_s: float = 30.0):
        self.what, self.every_s = what, every_s
        self.failures, self.last_logged = 0, float("-inf")

    def failed(self, exc: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self.last_logged >= self.every_s:
            self.last_logged = now
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning(
                "%s: database unreachable (%s); %d failed attempt(s) so far, retrying",
                self.what,
                first_line,
                self.failures,
            )

    def ok(self) -> None:
        if self.failures:
            log.warning("%s: database reachable again after %d failed attempt(s)", self.what, self.failures)
            self.failures, self.last_logged = 0, float("-inf")


# Metrics kept in memory while the database is away, at most this many steps (the oldest go first).
MAX_UNSENT_METRICS = 100_000

TRIM_EVERY_S = 10.0
"""At the end of a step, the C heap's free pages go back to the system (trim_heap) if the last
time was this long ago: a step's freed tensors otherwise stay resident (SmolLM2-135M PPO: 8.3 GiB
during step 2's rollouts instead of 5.6), while trimming after every short step would cost the page
faults of taking them back each time."""


class Host(Protocol):
    """What a run's context uses of the worker that runs it (worker.worker.Worker)."""

    settings: Settings
    team: Any  # trainer.distributed.Team of several processes, or None
    worker_id: str
    device: str | None
    terminating: threading.Event

    def transaction(self) -> AbstractContextManager[Session]: ...

    def run_folder(self, run_id: int, suffix: str = "") -> Path: ...


class RunContext:
    """Everything one run's code may use: its row's settings, database sessions, model resolution,
    the metrics callback and the stop signal."""

    def __init__(
        self,
        worker: Host,
        run_id: int,
        kind: RunKind,
        project_id: int | None,
        config: dict,
        input_model_ids: list[int],
        data_filter: dict,
    ):
        self.worker = worker
        self.settings = worker.settings
        self.run_id, self.kind, self._project_id = run_id, kind, project_id
        self.config, self.input_model_ids, self._data_filter = config, input_model_ids, data_filter
        self.stop = threading.Event()
        self.stop_reason = ""
        self.lost = False
        self.last_step, self.last_total = 0, 0
        self.phase = "starting"
        self.partial: float | None = None  # work done beyond last_step, in steps (set_phase)
        self._device: Any = None  # a torch.device once asked for (torch loads with the first run)
        self._unsent: list[tuple[int, dict[str, float]]] = []  # steps whose metrics wait for the database
        self._metrics_outage = OutageLog(f"run {run_id}: metrics")
        self._trimmed = time.monotonic()

    @property
    def data_filter(self) -> DataFilter:
        """The run's data selection, from the row's JSON: read in the job, so a row that does not
        load fails its run with the reason."""
        return DataFilter.model_validate(self._data_filter)

    # -- database ----------------------------------------------------------------------------
    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.worker.transaction() as session:
            yield session

    @property
    def is_main(self) -> bool:
        """Process 0 of the team (or the only process): the one that talks to the database."""
        return self.worker.team is None or self.worker.team.is_main

    def on_main(self, read: Callable[[], T]) -> T:
        """read() run by process 0 only, its result handed to every process of the team (an error
        there is raised in every process): what a run reads of the database is read once, and all
        processes train on the same snapshot."""
        team = self.worker.team
        if team is None or team.size == 1:
            return read()
        if not team.is_main:
            value, error = team.share(None)
            if error is not None:
                raise SharedError(error)
            return value
        try:
            value = read()
        except Exception as exc:
            team.share((None, describe_error(exc)))
            raise
        team.share((value, None))
        return value

    def read(self, query: Callable[[Session], T]) -> T:
        """query(session) on process 0, its result in every process (see on_main)."""

        def in_session() -> T:
            with self.session() as session:
                return query(session)

        return self.on_main(in_session)

    def set_snapshot(self, snapshot) -> None:
        if not self.is_main:
            return
        with self.session() as session:
            runs.set_snapshot(session, self.run_id, self.worker.worker_id, snapshot.record())

    def on_metrics(self, step: int, total: int, metrics: dict[str, float]) -> None:
        """Records progress and metrics; while the database is away they wait in memory and are
        written, in order, with the first step after it is back (training goes on meanwhile)."""
        if int(step) != self.last_step:  # a new step: what was done beyond the last one is in it
            self.partial = None
        self.last_step, self.last_total = int(step), int(total)
        if metrics and time.monotonic() - self._trimmed >= TRIM_EVERY_S:  # a step ended: its freed pages go back
            trim_heap()
            self._trimmed = time.monotonic()
        if not self.is_main:  # the metrics are the team's (summed over the processes); process 0 writes them
            return
        if metrics:
            self._unsent.append((int(step), metrics))
            del self._unsent[:-MAX_UNSENT_METRICS]
        try:
            with self.session() as session:
                if not runs.record_progress(
                    session, self.run_id, self.worker.worker_id, step, total, phase=self.phase, partial=self.partial
                ):
                    self._lose()
                    return
                for unsent_step, unsent in self._unsent:
                    runs.record_metrics(session, self.run_id, unsent_step, unsent)
        except OperationalError as exc:
            self._metrics_outage.failed(exc)
            return
        self._unsent.clear()
        self._metrics_outage.ok()

    def set_phase(self, phase: str, total: int | None = None, partial: float | None = None) -> None:
        """Says what the run is doing now (shown on the run page at once), with the number of steps
        when it becomes known, and how much of the next step is done (`partial`, in steps: the
        run page's bar and time left move inside long steps; None: nothing measured)."""
        self.phase, self.partial = phase, partial
        self.on_metrics(self.last_step, self.last_total if total is None else total, {})

    # -- stopping ------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        return self.stop.is_set() or self.worker.terminating.is_set()

    def checkpoint(self) -> None:
        """A safe point between phases (after loading a model, between models), decided by the whole team."""
        stop = self.should_stop()
        if self.worker.team is not None:
            stop = self.worker.team.any(stop)
        if stop:
            raise RunStopped()

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop.set()

    def _lose(self) -> None:
        self.lost = True
        self.request_stop("the run is no longer this worker's")

    @property
    def project_id(self) -> int:
        if self._project_id is None:
            raise ValueError("The run's project was deleted; there is no data to run on.")
        return self._project_id

    # -- models --------------------------------------------------------------------------------
    @property
    def device(self):
        if self._device is None:
            from trainer import modeling

            team = self.worker.team
            self._device = team.device if team is not None else self.worker.device or modeling.pick_device()
        return self._device

    def input_version(self, index: int) -> VersionInfo:
        if index >= len(self.input_model_ids):
            raise ValueError(f"The run names no input model at position {index + 1}.")
        version_id = self.input_model_ids[index]

        def info(session: Session) -> VersionInfo:
            version = session.get(ModelVersion, version_id)
            if version is None or version.deleted_at is not None:
                raise ValueError(f"Input model version {version_id} no longer exists; start the run with another one.")
            return VersionInfo(version.id, version.name, version.kind, registry.weights_location(version))

        return self.read(info)

    def resolve(self, version: VersionInfo) -> str:
        """A folder or hub id from_pretrained can load; ValueError saying what to fix otherwise. Process
        0 resolves (and converts the default model once) for the team."""
        from trainer import modeling

        def source() -> str:
            try:
                return modeling.resolve_model_source(version.location, self.settings.data_dir)
            except ValueError as exc:
                raise ValueError(f"Model version {version.id} ({version.name}): {exc}") from None

        return self.on_main(source)

    def load_tokenizer(self, source: str):
        """The model's tokenizer, with the project's chat template when the project sets one."""
        from trainer import modeling

        tokenizer = modeling.load_tokenizer(source)
        template = self.read(lambda session: session.get_one(Project, self.project_id).chat_template)
        if template:
            tokenizer.chat_template = template
        return tokenizer

    def save_model(self, write: Callable[[Path], Any]) -> Path | None:
        """Process 0 writes the run's model with write(folder) into artifact_dir(); the folder (None in
        the other processes of a team)."""
        if not self.is_main:
            return None
        folder = self.artifact_dir()
        write(folder)
        return folder

    def artifact_dir(self) -> Path:
        """An empty folder for the run's model: `run-<id>.partial`, renamed to `run-<id>` only when the
        run succeeds, so a half-written model is never registered (nor taken for a whole one)."""
        folder = self.worker.run_folder(self.run_id, ".partial")
        if folder.exists():  # left by an earlier attempt of this run that died before finishing
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        return folder

    def checkpoints(self):
        """Where this run's checkpoints go (kept across attempts, removed when the run ends)."""
        from trainer.checkpoints import Checkpoints

        return Checkpoints(self.worker.run_folder(self.run_id, ".checkpoints"), on_start=self.started_at)

    def started_at(self, step: int | None) -> None:
        """The training goes on from the checkpoint of `step` (None: from the beginning). The attempt
        log said the last step the previous attempt reported, which may lie beyond its newest
        checkpoint; those steps run again, so their metrics go (runs.start_attempt_at)."""
        self.last_step = step or 0
        if not self.is_main:
            return
        with self.session() as session:
            if not runs.start_attempt_at(session, self.run_id, self.worker.worker_id, step):
                self._lose()


def describe_error(exc: BaseException) -> str:
    """One clear line for the run's error field."""
    name = type(exc).__name__
    text = str(exc).strip() or name
    if name == "OutOfMemoryError" or "out of memory" in text.lower():
        return (
            "Out of memory: lower the batch size or max lengths, or turn on gradient_checkpointing / LoRA "
            f"(lora_r), or use a bigger GPU. ({name}: {text.splitlines()[0][:300]})"
        )
    if isinstance(exc, TrainingDiverged):
        return f"Training diverged: {text}"
    if isinstance(exc, ServiceError):
        return exc.message
    if isinstance(exc, ValueError):
        return text
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "The worker was interrupted while running this run."
    return f"{name}: {text}"


def free_memory() -> None:
    """Gives back what a run no longer holds: its objects (a run's objects refer to each other, so
    only the cycle collector frees them), the GPU's cached blocks, and the free pages of the C heap."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
    trim_heap()


LOW_MEMORY_MMAP_THRESHOLD = 1 << 20
"""glibc's mmap threshold for `instructloop worker --low-memory`: blocks from 1 MiB up are mapped
and unmapped on their own (bench/README.md, "Worker memory": PPO's peak 3.6 -> 2.35 GiB with a LoRA
policy and value model and gradient checkpointing, for 16-46% more time)."""


def hold_mmap_threshold(size: int = LOW_MEMORY_MMAP_THRESHOLD) -> bool:
    """mallopt(M_MMAP_THRESHOLD, size): the threshold stays where it is set, where glibc would raise
    it to each freed block's size (the same as MALLOC_MMAP_THRESHOLD_ in the environment). False
    where the C library has no mallopt (macOS, musl)."""
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    except OSError:
        return False
    m_mmap_threshold = -3  # glibc's malloc.h
    return mallopt is not None and mallopt(m_mmap_threshold, size) == 1


def trim_heap() -> None:
    """glibc's malloc_trim: the pages of freed tensors that glibc keeps for later allocations go back
    to the system (without it, an idle worker held most of a PPO run's peak: bench/README.md,
    "Worker memory"). Nothing to do where the C library has no malloc_trim (macOS, musl).

    glibc also raises its mmap threshold to the size of each mapped block freed (up to 32 MiB), after
    which most tensors come from the heap; `instructloop worker --low-memory` holds it
    (hold_mmap_threshold), for less memory at more CPU time (figures in bench/README.md)."""
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return
    if trim is not None:
        trim(0)
