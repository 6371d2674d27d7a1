"""The whole loop with a tiny model and simulated labelers, through the real worker process and
the database (issue 7): every stage succeeds, the lineage is complete, the SFT held-out loss falls,
during PPO the reward-model score rises while the KL to the SFT model stays under a bound, and the
simulated labelers prefer the PPO model's answers to the SFT model's on held-out prompts in at least
65% of the comparisons (a tie counts half). A seeded run is reproducible on the CPU; with the tiny
profile seeds 0-3 gave 83%, 88%, 74% and 78% over 60 comparisons each. The test runs seed 0."""

import pytest
from sqlalchemy import select

from app.config import Settings
from app.db import make_engine, make_sessionmaker
from app.migrate import upgrade
from app.models import ModelKind, ModelVersion, RunStatus, TrainingRun
from app.services import registry
from worker.demo import run_demo

pytestmark = pytest.mark.slow
KL_BOUND = 15.0


def test_whole_loop_through_the_worker(tmp_path):
    settings = Settings(
        DATABASE_URL=f"sqlite:///{tmp_path / 'loop.db'}", INSTRUCTLOOP_DATA_DIR=tmp_path / "data", SECRET_KEY="k"
    )
    upgrade(settings.db_url)
    lines: list[str] = []
    result = run_demo(settings, "tiny", echo=lines.append, seed=0)
    print("\n".join(lines))

    f = result.figures
    assert f["sft_valid_loss_end"] < f["sft_valid_loss_start"]
    assert f["reward_accuracy"] > 0.6
    assert f["ppo_score_end"] > f["ppo_score_start"]
    assert f["ppo_kl_end"] < KL_BOUND
    win = f["labeler_win_rate"]
    assert win["n"] >= 40 and win["wins"] + win["losses"] + win["ties"] == win["n"]
    assert win["win_rate"] >= 0.65, win
    # What the win rate is made of: per template, and the same pairs judged again (issue 26).
    assert (
        set(f["per_template"]) <= {"sentence", "fruit"} and sum(w["n"] for w in f["per_template"].values()) == win["n"]
    )
    for judge in ("preference_judge", "without_filler_judge", "fewer_words_judge"):
        assert f[judge]["n"] == win["n"] and 0 <= f[judge]["win_rate"] <= 1
    assert any("fewer words wins" in line for line in lines) and any("filler taken out" in line for line in lines)
    # Each stage's time, and the run form's estimate where it had something comparable to go on:
    # on a fresh database nothing ran before the first SFT run (a tiny model has no first guess).
    assert set(result.timings) == {"sft", "generate", "reward", "ppo", "evaluate"}
    assert all(taken > 0 for taken, _ in result.timings.values())
    assert result.timings["sft"][1] is None

    engine = make_engine(settings.db_url)
    with make_sessionmaker(engine)() as session:
        statuses = {r.kind.value: r.status for r in session.scalars(select(TrainingRun))}
        assert statuses == {k: RunStatus.succeeded for k in ("sft", "generate", "reward", "ppo", "evaluate")}
        ppo = session.scalar(select(ModelVersion).where(ModelVersion.kind == ModelKind.ppo))
        kinds = {v.kind for v in registry.lineage(session, ppo.id)}
        assert kinds == {ModelKind.ppo, ModelKind.sft, ModelKind.reward, ModelKind.base}
    engine.dispose()
