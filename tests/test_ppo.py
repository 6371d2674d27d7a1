"""train_ppo on tiny CPU models: learning a checkable reward under a KL bound, EOS and padding,
the reward-model and LoRA paths, ptx, bad input and divergence."""

import math
from pathlib import Path

import pytest
import torch
import transformers

from runconfig import PPOConfig
from trainer.checkpoints import Checkpoints
from trainer.data import SFTExample
from trainer.errors import TrainingDiverged
from trainer.modeling import ScalarHeadModel, encode_completion, encode_prompt, load_causal_lm, load_tokenizer
from trainer.ppo import train_ppo
from trainer.sft import IGNORE, response_loss_sum
from trainer.tiny import DEFAULT_TEXTS, make_tiny_model

transformers.logging.set_verbosity_error()

PROMPTS = ["Say a number or a word", "Answer briefly", "One thing, please"]
ANSWERS = ["7", "42", "19", "fox", "dog", "Paris"]  # half digits: the SFT policy says a number half the time
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; two spin-waiting threads on a busy 2-core box are 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def says_a_number(prompts, completions):
    """The known reward: 1 when the answer contains a digit."""
    return [float(any(ch.isdigit() for ch in c)) for c in completions]


@pytest.fixture(scope="module")
def sft_folder(tmp_path_factory):
    return train_sft_policy(tmp_path_factory.mktemp("tiny"), tmp_path_factory.mktemp("sft"), SIZES)


def train_sft_policy(base: Path, out: Path, sizes: dict) -> str:
    """A tiny policy fine-tuned to answer with one of ANSWERS then EOS (a quick SFT on the CPU)."""
    folder = make_tiny_model(base, **sizes)
    tokenizer = load_tokenizer(str(folder))
    model = load_causal_lm(str(folder), device="cpu")
    pairs = [(encode_prompt(tokenizer, p), encode_completion(tokenizer, a)) for p in PROMPTS for a in ANSWERS]
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    rows = [(p + c, [IGNORE] * len(p) + c) for p, c in pairs]
    for _ in range(60):
        loss_sum, tokens = response_loss_sum(model, rows, tokenizer.pad_token_id)
        loss = loss_sum / tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def models(folder, lora_r=0):
    tokenizer = load_tokenizer(folder)
    policy = load_causal_lm(folder, device="cpu", lora_r=lora_r)
    ref = None if lora_r else load_causal_lm(folder, device="cpu")
    value = ScalarHeadModel.from_causal_lm(folder, device="cpu")
    return policy, ref, value, tokenizer


def small(**changes) -> PPOConfig:
    values = dict(
        total_episodes=64,
        rollout_batch_size=16,
        minibatch_size=8,
        ppo_epochs=2,
        max_new_tokens=8,
        learning_rate=5e-4,
        kl_coef=0.1,
        seed=0,
    )
    values.update(changes)
    return PPOConfig(**values)


def test_mean_reward_rises_while_the_kl_stays_under_the_bound(sft_folder):
    policy, ref, value, tokenizer = models(sft_folder)
    history = []
    config = small(total_episodes=192, kl_limit=2.0)  # passing kl_limit would raise TrainingDiverged
    result = train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        config,
        reward_fn=says_a_number,
        on_metrics=lambda step, total, m: history.append((step, total, m)),
    )
    scores = [m["score"] for _, _, m in history]
    assert [s for s, _, _ in history] == list(range(1, 13)) and history[0][1] == 12
    assert sum(scores[-4:]) / 4 > sum(scores[:2]) / 2 + 0.2, scores
    assert max(m["kl"] for _, _, m in history) < config.kl_limit
    assert result["steps"] == 12 and result["episodes"] == 192 and result["stopped_early"] == 0
    assert result["score"] == history[-1][2]["score"]
    for name in ("score", "reward", "kl", "entropy", "clip_frac", "value_loss", "approx_kl", "response_length"):
        assert math.isfinite(result[name]), name


def test_responses_are_cut_after_eos_and_a_missing_eos_is_penalized(sft_folder):
    policy, ref, value, tokenizer = models(sft_folder)
    raw, seen = [], []
    generate = policy.generate

    def recording_generate(**kwargs):  # the real generate, its output kept for the check below
        out = generate(**kwargs)
        raw.append(out[:, kwargs["input_ids"].shape[1] :])
        return out

    policy.generate = recording_generate

    def constant(prompts, completions):
        seen.extend(completions)
        return [1.0] * len(completions)

    history = []
    train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=16),
        reward_fn=constant,
        on_metrics=lambda s, t, m: history.append(m),
    )
    eos = tokenizer.eos_token_id
    expected, lengths = [], []
    for row in raw[0].tolist():
        cut = row[: row.index(eos) + 1] if eos in row else row
        lengths.append(len(cut))
        expected.append(tokenizer.decode(cut, skip_special_tokens=True))
    assert seen == expected
    first = history[0]
    assert first["response_length"] == pytest.approx(sum(lengths) / len(lengths))
    assert first["eos_fraction"] > 0.9  # the SFT policy stops by itself
    assert first["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before any update

    # One token is too short for any answer + EOS: no response ends, each loses the penalty.
    history.clear()
    policy, ref, value, tokenizer = models(sft_folder)
    train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=16, max_new_tokens=1, missing_eos_penalty=0.75),
        reward_fn=constant,
        on_metrics=lambda s, t, m: history.append(m),
    )
    assert history[0]["eos_fraction"] == 0.0
    assert history[0]["reward"] == pytest.approx(1.0 - 0.75, abs=1e-5)


def test_rollouts_ignore_sampling_defaults_of_the_model(sft_folder):
    """A model's generation_config (min_new_tokens, repetition_penalty, top_k) must not change what
    the rollouts sample from, or the PPO ratio would be computed for another distribution."""
    policy, ref, value, tokenizer = models(sft_folder)
    policy.generation_config.min_new_tokens = 8  # would forbid EOS for 8 tokens
    policy.generation_config.repetition_penalty = 5.0
    policy.generation_config.top_k = 1
    history = []
    train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=16, max_new_tokens=8),
        reward_fn=says_a_number,
        on_metrics=lambda s, t, m: history.append(m),
    )
    assert history[0]["eos_fraction"] > 0.9 and history[0]["response_length"] < 5


def test_reward_model_path_trains_policy_and_value_and_leaves_frozen_models(sft_folder):
    policy, ref, value, tokenizer = models(sft_folder)
    reward = ScalarHeadModel.from_causal_lm(sft_folder, device="cpu")
    frozen = {k: v.clone() for k, v in list(ref.state_dict().items()) + list(reward.state_dict().items())}
    before_policy = policy.get_input_embeddings().weight.detach().clone()
    before_value = value.head.weight.detach().clone()
    result = train_ppo(
        policy,
        ref,
        reward,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=32),
        reward_tokenizer=load_tokenizer(sft_folder),
    )
    assert result["steps"] == 2 and math.isfinite(result["score"])
    after = dict(list(ref.state_dict().items()) + list(reward.state_dict().items()))
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert not torch.equal(before_policy, policy.get_input_embeddings().weight)
    assert not torch.equal(before_value, value.head.weight)


def test_lora_policy_uses_its_base_as_the_reference(sft_folder):
    policy, _, value, tokenizer = models(sft_folder, lora_r=4)
    base = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" not in k}
    history = []
    train_ppo(
        policy,
        None,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=48, learning_rate=5e-3),
        reward_fn=says_a_number,
        on_metrics=lambda s, t, m: history.append(m),
    )
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA B starts at 0: policy == base
    assert history[-1]["kl"] != pytest.approx(0.0, abs=1e-5)  # the adapters moved it away
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in base.items())


def test_ptx_mixes_the_sft_loss_on_demonstrations(sft_folder):
    policy, ref, value, tokenizer = models(sft_folder)
    demos = [SFTExample("Name a colour", "blue"), SFTExample("Name an animal", "a brown fox")]
    history = []
    train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=64, ptx_coef=1.0, ptx_batch_size=2),
        ptx=demos,
        reward_fn=lambda p, c: [0.0] * len(c),
        on_metrics=lambda s, t, m: history.append(m),
    )
    losses = [m["ptx_loss"] for m in history]
    assert losses[-1] < losses[0], losses


def test_should_stop_returns_early_with_what_it_has(sft_folder):
    policy, ref, value, tokenizer = models(sft_folder)
    steps = []
    result = train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=160),
        reward_fn=says_a_number,
        on_metrics=lambda s, t, m: steps.append(s),
        should_stop=lambda: len(steps) >= 2,
    )
    assert result["stopped_early"] == 1 and result["steps"] == 2 and steps == [1, 2]


def test_bad_input_is_refused_with_a_clear_message(sft_folder, tmp_path):
    policy, ref, value, tokenizer = models(sft_folder)
    with pytest.raises(ValueError, match="context is 512"):
        train_ppo(policy, ref, None, value, tokenizer, ["word " * 600], small(), reward_fn=says_a_number)
    with pytest.raises(ValueError, match="kl_coef"):
        train_ppo(policy, ref, None, value, tokenizer, PROMPTS, small(kl_coef=3.0), reward_fn=says_a_number)
    with pytest.raises(ValueError, match="empty"):
        train_ppo(policy, ref, None, value, tokenizer, [], small(), reward_fn=says_a_number)
    with pytest.raises(ValueError, match="returned 1 scores for 16 completions"):
        train_ppo(policy, ref, None, value, tokenizer, PROMPTS, small(), reward_fn=lambda p, c: [1.0])
    # A reward model of another tokenizer family: a different vocabulary size...
    other = make_tiny_model(tmp_path / "other", texts=["a completely different corpus"] * 3, vocab_size=300, **SIZES)
    reward = ScalarHeadModel.from_causal_lm(str(other), device="cpu")
    with pytest.raises(ValueError, match="another tokenizer family"):
        train_ppo(policy, ref, reward, value, tokenizer, PROMPTS, small())
    # ...or the same size but other tokens, seen through its tokenizer.
    mine = make_tiny_model(tmp_path / "mine", texts=DEFAULT_TEXTS, vocab_size=300, **SIZES)
    theirs = make_tiny_model(tmp_path / "theirs", texts=[t[::-1] for t in DEFAULT_TEXTS], vocab_size=300, **SIZES)
    policy, ref, value, tokenizer = models(str(mine))
    reward = ScalarHeadModel.from_causal_lm(str(theirs), device="cpu")
    assert len(load_tokenizer(str(theirs))) == len(tokenizer) == 300
    with pytest.raises(ValueError, match="tokenizer differs"):
        train_ppo(policy, ref, reward, value, tokenizer, PROMPTS, small(), reward_tokenizer=load_tokenizer(str(theirs)))


def weights(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_kl_past_the_limit_stops_the_run_and_puts_back_the_last_good_policy(sft_folder, tmp_path):
    """A fully fine-tuned policy goes back to its newest checkpoint (no copy of it per step)."""
    policy, ref, value, tokenizer = models(sft_folder)
    after_step = {0: weights(policy)}
    config = small(total_episodes=160, learning_rate=2e-2, kl_coef=0.0, kl_limit=0.5, save_every=1)
    with pytest.raises(TrainingDiverged, match="past kl_limit=0.5") as err:
        train_ppo(
            policy,
            ref,
            None,
            value,
            tokenizer,
            PROMPTS,
            config,
            reward_fn=says_a_number,
            on_metrics=lambda s, t, m: after_step.update({s: weights(policy)}),
            checkpoints=Checkpoints(tmp_path),
        )
    good = err.value.last_good_step
    assert good in after_step and good < max(after_step)
    assert all(torch.equal(v, dict(policy.named_parameters())[k]) for k, v in after_step[good].items())


def test_an_exploding_loss_stops_the_run_before_the_step_is_applied(sft_folder, tmp_path):
    policy, ref, value, tokenizer = models(sft_folder)
    calls = []
    after_step = {0: weights(policy)}

    def explodes_on_second_step(prompts, completions):
        calls.append(1)
        return [1e38 if len(calls) == 2 else 0.0] * len(completions)

    with pytest.raises(TrainingDiverged, match=r"Step 2: the loss became (nan|inf)") as err:
        train_ppo(
            policy,
            ref,
            None,
            value,
            tokenizer,
            PROMPTS,
            small(save_every=1),
            reward_fn=explodes_on_second_step,
            on_metrics=lambda s, t, m: after_step.update({s: weights(policy)}),
            checkpoints=Checkpoints(tmp_path),
        )
    assert err.value.last_good_step == 1
    assert all(torch.equal(v, dict(policy.named_parameters())[k]) for k, v in after_step[1].items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="low-memory mode moves models between a GPU and the CPU")
def test_low_memory_keeps_the_frozen_models_in_cpu_memory(sft_folder):
    tokenizer = load_tokenizer(sft_folder)
    policy = load_causal_lm(sft_folder, device="cuda")
    value = ScalarHeadModel.from_causal_lm(sft_folder, device="cuda")
    ref = load_causal_lm(sft_folder, device="cpu")
    reward = ScalarHeadModel.from_causal_lm(sft_folder, device="cpu")
    result = train_ppo(policy, ref, reward, value, tokenizer, PROMPTS, small(total_episodes=32, low_memory=True))
    assert result["steps"] == 2 and math.isfinite(result["score"])
    assert next(ref.parameters()).device.type == "cpu" and reward.device.type == "cpu"


def test_command_line_trains_and_saves_the_policy(sft_folder, tmp_path, capsys):
    from trainer.ppo import main

    reward_folder = tmp_path / "rm"
    ScalarHeadModel.from_causal_lm(sft_folder, device="cpu").save_pretrained(
        reward_folder, tokenizer=load_tokenizer(sft_folder)
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "{p}"}}\n' for p in PROMPTS))
    out = tmp_path / "ppo"
    main(
        [
            "--policy",
            sft_folder,
            "--reward",
            str(reward_folder),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--low-memory",
            "--set",
            "total_episodes=16",
            "--set",
            "max_new_tokens=4",
            "--set",
            "ppo_epochs=1",
        ]
    )
    assert (out / "config.json").is_file()
    assert '"steps": 1.0' in capsys.readouterr().out
    assert load_causal_lm(str(out), device="cpu") is not None


def test_a_lora_value_model_trains_only_its_adapters_and_head(sft_folder):
    """value_lora_r: the value model as LoRA adapters on the reward model's backbone, plus its head."""
    policy, ref, _, tokenizer = models(sft_folder)
    value = ScalarHeadModel.from_causal_lm(sft_folder, device="cpu", lora_r=4, gradient_checkpointing=True)
    frozen = {n: p.detach().clone() for n, p in value.named_parameters() if not p.requires_grad}
    history = []
    train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=16),
        reward_fn=says_a_number,
        on_metrics=lambda s, t, m: history.append(m),
    )
    trained = [n for n, p in value.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or n.startswith("head.") for n in trained)
    assert all(torch.equal(p, frozen[n]) for n, p in value.named_parameters() if n in frozen)
    assert history[0]["peak_memory_mb"] > 0


def test_without_a_checkpoint_a_diverged_full_policy_is_not_put_back(sft_folder):
    policy, ref, value, tokenizer = models(sft_folder)
    config = small(total_episodes=160, learning_rate=2e-2, kl_coef=0.0, kl_limit=0.5)
    with pytest.raises(TrainingDiverged, match="no earlier good policy") as err:
        train_ppo(policy, ref, None, value, tokenizer, PROMPTS, config, reward_fn=says_a_number)
    assert err.value.last_good_step is None


def test_each_step_reports_the_seconds_of_its_phases(sft_folder, tmp_path):
    """Issue 29: rollout (sampling), scoring, update and checkpoint seconds in every step's metrics;
    the step-0 checkpoint is counted in step 1's."""
    policy, ref, value, tokenizer = models(sft_folder)
    history = []
    train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(total_episodes=32, save_every=0),
        reward_fn=says_a_number,
        checkpoints=Checkpoints(tmp_path / "checkpoints"),
        on_metrics=lambda step, total, m: history.append(m),
    )
    for metrics in history:
        assert all(metrics[k] > 0 for k in ("rollout_s", "scoring_s", "update_s")), metrics
    assert history[0]["checkpoint_s"] > 0 and history[1]["checkpoint_s"] == 0


def test_top_p_below_one_is_refused(sft_folder):
    """Issue 29, finding 8: log-probs use the whole softmax, so nucleus sampling would make the ratio
    and the KL those of another distribution."""
    policy, ref, value, tokenizer = models(sft_folder)
    with pytest.raises(ValueError, match=r"top_p=0\.9 is not supported in PPO"):
        train_ppo(policy, ref, None, value, tokenizer, PROMPTS, small(top_p=0.9), reward_fn=says_a_number)
