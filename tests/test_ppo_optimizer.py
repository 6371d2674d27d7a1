"""Issue 29, finding 8: PPO's AdamW has no weight decay (TRL's PPO has none; torch's default is 0.01),
and its learning rate warms up linearly over `warmup_steps` PPO steps (InstructGPT: 10 iterations,
from a tenth of the rate), also across a stop and resume."""

import pytest

from runconfig import config_from_dict
from tests.test_ppo import PROMPTS, models, says_a_number, sft_folder, small  # noqa: F401 - the fixture
from trainer import ppo
from trainer.checkpoints import Checkpoints

LR = 1e-3


def five_steps(**changes):
    """5 PPO steps of one optimizer step each, the first 4 warming up."""
    return small(
        total_episodes=40,
        rollout_batch_size=8,
        minibatch_size=8,
        ppo_epochs=1,
        learning_rate=LR,
        warmup_steps=4,
        **changes,
    )


@pytest.fixture
def steps_taken(monkeypatch) -> list[list[tuple[float, float]]]:
    """Each optimizer step's (learning rate, weight decay) per parameter group, as the step saw them."""
    seen: list[list[tuple[float, float]]] = []
    made = ppo.adamw

    def recorded(*args, **kwargs):
        optimizer = made(*args, **kwargs)
        optimizer.register_step_pre_hook(
            lambda opt, _args, _kwargs: seen.append([(g["lr"], g["weight_decay"]) for g in opt.param_groups])
        )
        return optimizer

    monkeypatch.setattr(ppo, "adamw", recorded)
    return seen


def test_no_weight_decay_and_a_linear_warmup_from_a_quarter(sft_folder, steps_taken):  # noqa: F811
    policy, ref, value, tokenizer = models(sft_folder)
    ppo.train_ppo(policy, ref, None, value, tokenizer, PROMPTS, five_steps(), reward_fn=says_a_number)
    assert {decay for groups in steps_taken for _, decay in groups} == {0.0}
    assert [lr for (lr, _), *_ in steps_taken] == pytest.approx([LR / 4, LR / 2, 3 * LR / 4, LR, LR])


def test_a_resumed_run_goes_on_with_the_warmup_where_it_stopped(sft_folder, steps_taken, tmp_path):  # noqa: F811
    done: list[int] = []
    policy, ref, value, tokenizer = models(sft_folder)
    first = ppo.train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        five_steps(save_every=1),
        reward_fn=says_a_number,
        on_metrics=lambda step, total, metrics: done.append(step),
        should_stop=lambda: len(done) >= 2,
        checkpoints=Checkpoints(tmp_path),
    )
    assert first["steps"] == 2 and first["stopped_early"] == 1.0
    policy, ref, value, tokenizer = models(sft_folder)
    ppo.train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        five_steps(save_every=1),
        reward_fn=says_a_number,
        checkpoints=Checkpoints(tmp_path, resume=True),
    )
    assert [lr for (lr, _), *_ in steps_taken] == pytest.approx([LR / 4, LR / 2, 3 * LR / 4, LR, LR])


def test_warmup_steps_is_checked_and_defaults_to_ten():
    assert config_from_dict("ppo", {}).warmup_steps == 10
    assert config_from_dict("ppo", {"warmup_steps": 0}).warmup_steps == 0
    with pytest.raises(ValueError, match="warmup_steps must be 0 \\(no warmup\\) or positive"):
        config_from_dict("ppo", {"warmup_steps": -1})
    with pytest.raises(ValueError, match="warmup_steps"):
        config_from_dict("ppo", {"warmup_steps": 2.5})
    assert ppo.warmup_lr(small(warmup_steps=0, learning_rate=LR), 1) == LR
