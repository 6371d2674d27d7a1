"""The worker gives memory back after a run (issue 28 item 8): the run's models are freed, and the
C heap's free pages go back to the system (bench/worker_memory.py measures the real figures)."""

import platform
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

from app.config import REPO_ROOT
from app.models import RunStatus
from app.services import runs
from tests.test_worker_resume import _inputs, _when
from tests.worker_helpers import WorkerThread, fast_settings, make_project, one_torch_thread, wait_for
from trainer.tiny import make_tiny_model
from worker import context, jobs
from worker.context import trim_heap

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)


def _rss_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_heap_gives_the_free_pages_of_the_heap_back():
    # Freeing an mmapped block raises glibc's mmap threshold above it, so the 1 MiB blocks below come
    # from the heap; every other one is freed, each between two in use, so glibc keeps their pages
    # (as it kept those of a run's freed tensors).
    big = bytearray(4 << 20)
    del big
    blocks = [bytearray(1 << 20) for _ in range(128)]
    before = _rss_kb()
    del blocks[::2]
    kept = _rss_kb()
    trim_heap()
    after = _rss_kb()
    assert kept > before - 16 * 1024, (before, kept)  # freed, but still resident
    assert after < kept - 48 * 1024, (kept, after)  # given back


def test_a_ppo_runs_models_and_heap_are_freed_once_it_has_ended(settings, session, tmp_path, monkeypatch):
    held: list[weakref.ref] = []

    def watching(policy, ref_policy, reward_model, value_model, *args, **kwargs):
        held.extend(weakref.ref(m) for m in (policy, ref_policy, reward_model, value_model))
        return train_ppo(policy, ref_policy, reward_model, value_model, *args, **kwargs)

    train_ppo = jobs.train_ppo
    monkeypatch.setattr(jobs, "train_ppo", watching)
    trims: list[int] = []
    monkeypatch.setattr(context, "TRIM_EVERY_S", 0.0)
    monkeypatch.setattr(context, "trim_heap", lambda: trims.append(1) or trim_heap())
    tiny = make_tiny_model(tmp_path / "tiny")
    project = make_project(session)
    inputs = _inputs(session, project, tiny, "ppo", tmp_path)
    config = {"total_episodes": 16, "rollout_batch_size": 8, "minibatch_size": 4, "max_new_tokens": 4}
    run = runs.create_run(session, project_id=project.id, kind="ppo", config=config, input_model_ids=inputs)
    session.commit()
    with WorkerThread(fast_settings(settings)) as worker:
        ended = wait_for(lambda: _when(worker.engine, run.id), timeout=120)
        assert ended.status == RunStatus.succeeded, ended.error
        assert len(held) == 4
        # The worker, idle again, holds none of the four models (nor their optimizer and rollouts),
        # and gave the heap's free pages back at the end of each of the 2 steps and of the run.
        wait_for(lambda: all(ref() is None for ref in held), timeout=30)
        wait_for(lambda: len(trims) == 3, timeout=30)


HELD_THRESHOLD_PROBE = """
import sys
from pathlib import Path
from worker.context import hold_mmap_threshold

def rss_kb():
    status = Path("/proc/self/status").read_text()
    return int(next(l for l in status.splitlines() if l.startswith("VmRSS")).split()[1])

held = sys.argv[1] == "held" and hold_mmap_threshold()
big = bytearray(4 << 20)
del big  # by default glibc now serves blocks up to 4 MiB from the heap
blocks = [bytearray(1 << 20) for _ in range(128)]
before = rss_kb()
del blocks[::2]
print(held, before - rss_kb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_low_memory_worker_gives_large_freed_blocks_back_at_once():
    """`instructloop worker --low-memory` (hold_mmap_threshold): 1 MiB blocks are mapped on their own,
    so freeing 64 of them between others in use gives their 64 MiB back without a trim; by default
    glibc keeps them. In a process of its own: the setting lasts for the process."""
    freed = {}
    for mode in ("default", "held"):
        command = [sys.executable, "-c", HELD_THRESHOLD_PROBE, mode]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        held, given_back_kb = done.stdout.split()
        assert held == str(mode == "held")
        freed[mode] = int(given_back_kb)
    assert freed["held"] > 48 * 1024 and freed["default"] < 16 * 1024, freed
