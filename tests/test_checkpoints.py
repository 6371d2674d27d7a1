"""Checkpoints and resume of the training loops, on tiny models on the CPU: a run stopped part-way
and resumed from its checkpoint ends with exactly the weights of a run that was never stopped."""

import pytest
import torch

from runconfig import PPOConfig, RewardConfig, SFTConfig
from tests.test_reward import synthetic_rankings
from tests.test_sft import TRAIN, VALID
from trainer import checkpoints
from trainer.checkpoints import KEEP, Checkpoints
from trainer.errors import CheckpointSpaceError
from trainer.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
from trainer.ppo import train_ppo
from trainer.reward import train_reward
from trainer.sft import train_sft
from trainer.tiny import make_tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [f"{ex.prompt} {ex.completion}" for ex in TRAIN]
    return str(make_tiny_model(tmp_path_factory.mktemp("ckpt") / "model", texts=texts))


def stop_after(steps: int) -> dict:
    """on_metrics and should_stop for a run that is told to stop once `steps` steps are reported:
    it notices at its next poll, as a worker's loop notices a cancel or SIGTERM."""
    done = {"steps": 0}

    def on_metrics(step: int, total: int, metrics: dict) -> None:
        done["steps"] = step

    return {"on_metrics": on_metrics, "should_stop": lambda: done["steps"] >= steps}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_sft_stopped_and_resumed_equals_one_uninterrupted_run(tiny, tmp_path):
    config = SFTConfig(learning_rate=1e-2, epochs=2, batch_size=16, micro_batch_size=8, eval_every=3, save_every=2)
    tok = load_tokenizer(tiny)
    torch.manual_seed(0)
    whole = load_causal_lm(tiny, device="cpu")
    expected = train_sft(whole, tok, TRAIN, VALID, config)

    folder = tmp_path / "checkpoints"
    torch.manual_seed(0)
    first = load_causal_lm(tiny, device="cpu")
    stopped = train_sft(first, tok, TRAIN, VALID, config, **stop_after(5), checkpoints=Checkpoints(folder))
    assert stopped["stopped_early"] == 1.0 and stopped["steps"] < expected["steps"]
    saved = sorted(p.name for p in folder.iterdir())
    assert len(saved) <= KEEP and not any(name.endswith(".partial") for name in saved), saved

    torch.manual_seed(123)  # a new process: whatever its random state, the checkpoint's is restored
    second = load_causal_lm(tiny, device="cpu")
    seen = []
    resumed = train_sft(
        second,
        tok,
        TRAIN,
        VALID,
        config,
        checkpoints=Checkpoints(folder),
        on_metrics=lambda step, total, m: m and seen.append(step),
    )
    assert seen[0] == stopped["steps"] + 1  # no step done twice, none skipped
    assert resumed["steps"] == expected["steps"] and resumed["valid_loss"] == expected["valid_loss"]
    assert same_weights(second, whole)


def test_a_checkpoint_of_another_model_is_refused(tiny, tmp_path):
    config = SFTConfig(learning_rate=1e-2, epochs=1, batch_size=16, micro_batch_size=16, save_every=1)
    tok = load_tokenizer(tiny)
    folder = tmp_path / "checkpoints"
    train_sft(
        load_causal_lm(tiny, device="cpu"),
        tok,
        TRAIN,
        [],
        config,
        **stop_after(1),
        checkpoints=Checkpoints(folder),
    )
    lora = load_causal_lm(tiny, device="cpu", lora_r=4)
    with pytest.raises(ValueError, match="does not fit this model"):
        train_sft(lora, tok, TRAIN, [], config.model_copy(update={"lora_r": 4}), checkpoints=Checkpoints(folder))


def test_reward_stopped_and_resumed_equals_one_uninterrupted_run(tiny, tmp_path):
    train, valid = synthetic_rankings(48, seed=0), synthetic_rankings(12, seed=1)
    config = RewardConfig(learning_rate=1e-3, epochs=2, batch_size=8, micro_batch_size=4, eval_every=3, save_every=2)
    tok = load_tokenizer(tiny)
    torch.manual_seed(0)
    whole = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    expected = train_reward(whole, tok, train, valid, config)

    folder = tmp_path / "checkpoints"
    torch.manual_seed(0)
    first = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    stopped = train_reward(first, tok, train, valid, config, **stop_after(5), checkpoints=Checkpoints(folder))
    assert stopped["stopped_early"] == 1.0

    torch.manual_seed(0)  # the same fresh head as the first attempt had (the checkpoint overwrites it)
    second = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    seen = []
    resumed = train_reward(
        second,
        tok,
        train,
        valid,
        config,
        checkpoints=Checkpoints(folder),
        on_metrics=lambda step, total, m: m and seen.append(step),
    )
    assert seen[0] == stopped["steps"] + 1
    assert resumed["steps"] == expected["steps"] and resumed["valid_accuracy"] == expected["valid_accuracy"]
    assert same_weights(second, whole)


def test_ppo_stopped_and_resumed_equals_one_uninterrupted_run(tiny, tmp_path):
    config = PPOConfig(
        learning_rate=1e-3,
        total_episodes=48,
        rollout_batch_size=8,
        minibatch_size=4,
        forward_batch_size=8,
        ppo_epochs=2,
        max_new_tokens=6,
        save_every=2,
    )
    tok = load_tokenizer(tiny)
    prompts = [ex.prompt for ex in TRAIN[:16]]

    def models():
        torch.manual_seed(0)
        policy = load_causal_lm(tiny, device="cpu")
        ref = load_causal_lm(tiny, device="cpu")
        reward = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
        value = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
        value.load_state_dict(reward.state_dict())
        return policy, ref, reward, value

    whole = models()
    expected = train_ppo(*whole, tok, prompts, config)

    folder = tmp_path / "checkpoints"
    first = models()
    stopped = train_ppo(*first, tok, prompts, config, **stop_after(3), checkpoints=Checkpoints(folder))
    assert stopped["stopped_early"] == 1.0 and stopped["steps"] < expected["steps"]

    torch.manual_seed(99)
    second = models()
    seen = []
    resumed = train_ppo(
        *second,
        tok,
        prompts,
        config,
        checkpoints=Checkpoints(folder),
        on_metrics=lambda step, total, m: m and seen.append(step),
    )
    assert seen[0] == stopped["steps"] + 1  # resumed, not started again
    assert resumed["steps"] == expected["steps"]
    assert same_weights(second[0], whole[0]) and same_weights(second[3], whole[3])


SMALL_SFT = SFTConfig(learning_rate=1e-2, epochs=1, batch_size=16, micro_batch_size=16, save_every=1)


def test_a_disk_without_room_refuses_the_checkpoint_naming_the_space_it_needs(tiny, tmp_path, monkeypatch):
    """Issue 29, finding 5: the free space is checked before writing (a tiny quota: the free-space
    function says 1 MB), and the run stops with a message that says how much is needed."""
    monkeypatch.setattr(checkpoints, "free_bytes", lambda folder: 10**6)
    folder = tmp_path / "checkpoints"
    with pytest.raises(CheckpointSpaceError, match=r"step 1 .* needs about 0\.\d\d GiB and 0\.00 GiB is free"):
        train_sft(
            load_causal_lm(tiny, device="cpu"),
            load_tokenizer(tiny),
            TRAIN,
            [],
            SMALL_SFT,
            checkpoints=Checkpoints(folder),
        )
    assert not list(folder.iterdir())  # nothing half-written


def test_at_most_one_complete_checkpoint_beside_the_one_being_written(tiny, tmp_path, monkeypatch):
    """A 1B PPO checkpoint is ~30 GB: two kept plus the one being written overflowed a 64 GiB disk.
    Each write (torch.save, spied on) finds at most one complete checkpoint; KEEP stay at rest."""
    folder = tmp_path / "checkpoints"
    seen: list[list[str]] = []
    save = torch.save

    def spying_save(obj, path, *args, **kwargs):
        seen.append([p.name for p in folder.glob("step-*") if not p.name.endswith(".partial")])
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spying_save)
    train_sft(
        load_causal_lm(tiny, device="cpu"), load_tokenizer(tiny), TRAIN, [], SMALL_SFT, checkpoints=Checkpoints(folder)
    )
    assert len(seen) == 4 and max(len(s) for s in seen) == 1, seen
    assert sorted(p.name for p in folder.iterdir()) == ["step-3.pt", "step-4.pt"]
