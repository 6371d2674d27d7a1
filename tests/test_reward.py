"""Reward model on tiny models on the CPU: the K-way loss, learning a known preference, bias, input checks."""

import random

import pytest
import torch

from runconfig import RewardConfig, config_from_dict
from trainer.data import RankingExample, SFTExample
from trainer.modeling import ScalarHeadModel, load_tokenizer
from trainer.reward import (
    encode_rankings,
    kway_step_loss,
    pairwise_step_loss,
    ranking_pairs,
    score,
    train_reward,
)
from trainer.tiny import make_tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and much faster than two on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A synthetic preference the labelers would have: the final word's quality level decides the
# order; words of the same level are tied.
LEVELS = [["awful", "wrong", "rude"], ["meh", "vague", "odd"], ["fine", "okay", "decent"], ["great", "correct", "kind"]]
UTILITY = {word: level for level, words in enumerate(LEVELS) for word in words}
FILLERS = ["the answer is", "I think it was", "surely", "well"]
PROMPTS = ["How was it?", "Rate this.", "Answer me.", "Tell me about the film."]


def synthetic_rankings(n: int, seed: int, k: int = 4) -> list[RankingExample]:
    rng = random.Random(seed)
    rankings = []
    for _ in range(n):
        words = rng.sample(list(UTILITY), k)
        groups: dict[int, list[int]] = {}
        for i, word in enumerate(words):
            groups.setdefault(UTILITY[word], []).append(i)
        rankings.append(
            RankingExample(
                prompt=rng.choice(PROMPTS),
                completions=[f"{rng.choice(FILLERS)} {word}" for word in words],
                order=[groups[level] for level in sorted(groups, reverse=True)],
            )
        )
    return rankings


TRAIN, VALID = synthetic_rankings(96, seed=0), synthetic_rankings(32, seed=1)
FAST = RewardConfig(learning_rate=3e-3, epochs=1, batch_size=8, micro_batch_size=4, warmup_ratio=0.0, eval_every=6)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [c for r in TRAIN for c in r.completions] + PROMPTS
    return str(make_tiny_model(tmp_path_factory.mktemp("rm") / "model", texts=texts))


def fresh(tiny, seed=0):
    torch.manual_seed(seed)
    return ScalarHeadModel.from_causal_lm(tiny, device="cpu"), load_tokenizer(tiny)


def test_pairs_follow_the_order_and_skip_ties():
    example = RankingExample("p", ["a", "b", "c", "d"], [[2], [0, 3], [1]])
    assert ranking_pairs(example) == [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
    assert ranking_pairs(RankingExample("p", ["a", "b"], [[0, 1]])) == []


def test_bad_rankings_say_what_is_wrong():
    with pytest.raises(ValueError, match="at least 2"):
        ranking_pairs(RankingExample("p", ["a"], [[0]]))
    with pytest.raises(ValueError, match=r"completion\(s\) \[5\] that do not exist"):
        ranking_pairs(RankingExample("p", ["a", "b"], [[0], [5]]))
    with pytest.raises(ValueError, match="twice"):
        ranking_pairs(RankingExample("p", ["a", "b"], [[0], [1, 0]]))


def test_kway_loss_equals_the_mean_of_the_naive_pairwise_losses(tiny):
    """K forwards per ranking give the same loss and the same gradients as 2*C(K,2) forwards."""
    model, tok = fresh(tiny)
    model.eval()  # no dropout: the two computations must see the same network
    rankings = (
        synthetic_rankings(3, seed=5, k=9) + synthetic_rankings(3, seed=6, k=4) + synthetic_rankings(2, seed=7, k=2)
    )
    rankings.append(RankingExample("ties", ["a b", "c", "d e f", "g"], [[0, 2], [1], [3]]))
    encoded = encode_rankings(tok, rankings, max_length=64)
    n_pairs = sum(len(r.pairs) for r in encoded)
    assert any(len(r.pairs) < len(r.sequences) * (len(r.sequences) - 1) // 2 for r in encoded)  # ties present

    kway_sum, kway_margins = kway_step_loss(model, encoded, tok.pad_token_id)
    (kway_sum / len(encoded)).backward()
    kway_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    naive_sum, naive_margins = pairwise_step_loss(model, encoded, tok.pad_token_id)
    per_pair = -torch.nn.functional.logsigmoid(naive_margins)
    (naive_sum / len(encoded)).backward()

    assert kway_margins.shape == (n_pairs,)
    # The paper's loss: per ranking the mean over its C(K,2) pairs, then the mean over rankings.
    per_ranking, start = [], 0
    for r in encoded:
        per_ranking.append(per_pair[start : start + len(r.pairs)].mean())
        start += len(r.pairs)
    assert torch.allclose(kway_sum / len(encoded), torch.stack(per_ranking).mean(), atol=1e-6)
    assert torch.allclose(kway_margins, naive_margins, atol=1e-5)
    for kway_grad, param in zip(kway_grads, model.parameters()):
        assert torch.allclose(kway_grad, param.grad, rtol=1e-4, atol=1e-5)  # float32 sums in another order


def test_each_ranking_weighs_the_same_whatever_its_k(tiny):
    """A K=9 ranking (36 pairs) and two K=4 rankings (6 pairs each): each ranking's pairs carry a
    total weight of 1, so the K=9 one is a third of the loss (it was 36/48 = 75% when every pair
    of the batch weighed the same)."""
    model, tok = fresh(tiny)
    model.eval()
    full = lambda k: RankingExample("p", [f"answer {i}" for i in range(k)], [[i] for i in range(k)])  # noqa: E731
    encoded = encode_rankings(tok, [full(9), full(4), full(4)], max_length=64)
    assert [len(r.pairs) for r in encoded] == [36, 6, 6]
    with torch.no_grad():
        total, margins = kway_step_loss(model, encoded, tok.pad_token_id)
        nine, _ = kway_step_loss(model, encoded[:1], tok.pad_token_id)
    per_pair = -torch.nn.functional.logsigmoid(margins)
    assert torch.allclose(nine, per_pair[:36].mean(), atol=1e-6)
    assert torch.allclose(total, per_pair[:36].mean() + per_pair[36:42].mean() + per_pair[42:].mean(), atol=1e-6)


def test_reward_model_learns_a_synthetic_preference_and_centres_demonstrations(tiny):
    model, tok = fresh(tiny)
    demos = [SFTExample(r.prompt, r.completions[r.order[0][0]]) for r in TRAIN[:24]]
    seen = []
    result = train_reward(
        model,
        tok,
        TRAIN,
        VALID,
        FAST,
        demonstrations=demos,
        on_metrics=lambda step, total, m: seen.append((step, total, m)),
    )
    assert result["steps"] == 12 and seen[-1][:2] == (12, 12)
    assert result["valid_accuracy"] >= 0.9, result
    assert result["valid_pairs"] == sum(len(ranking_pairs(r)) for r in VALID)
    sequences = encode_rankings(tok, [RankingExample(d.prompt, [d.completion, "x"], [[0], [1]]) for d in demos], 512)
    with torch.no_grad():
        demo_scores = score(model, [r.sequences[0] for r in sequences], tok.pad_token_id)
    assert abs(demo_scores.mean().item()) < 1e-4
    assert result["bias_shift"] != 0


def test_same_seed_gives_the_same_metrics(tiny):
    def run(seed):
        model, tok = fresh(tiny)
        seen = []
        config = RewardConfig(**{**FAST.__dict__, "seed": seed, "max_steps": 3, "eval_every": 3})
        result = train_reward(model, tok, TRAIN, VALID, config, on_metrics=lambda step, total, m: seen.append(m))
        return seen, result["valid_accuracy"]

    first = run(0)
    assert run(0) == first
    assert run(1) != first


def test_should_stop_ends_at_a_safe_point(tiny):
    model, tok = fresh(tiny)
    polls = []  # FAST has 2 micro-batches per step: polled between them, then after the step
    result = train_reward(model, tok, TRAIN, VALID, FAST, should_stop=lambda: polls.append(1) or len(polls) >= 2)
    assert result["steps"] == 1 and result["stopped_early"] == 1.0
    assert "valid_accuracy" not in result  # a stop runs no held-out pass (the stopped model is not kept)
    model, tok = fresh(tiny)
    result = train_reward(model, tok, TRAIN, VALID, FAST, should_stop=lambda: True)  # mid-batch: nothing applied
    assert result["steps"] == 0 and result["stopped_early"] == 1.0


def test_bad_configs_and_data_are_refused_with_clear_messages(tiny):
    model, tok = fresh(tiny)
    with pytest.raises(ValueError, match=r"micro_batch_size \(3\) must divide batch_size \(32\)"):
        train_reward(model, tok, TRAIN, VALID, RewardConfig(micro_batch_size=3))
    all_tied = [RankingExample("p", ["a", "b", "c"], [[0, 1, 2]])]
    with pytest.raises(ValueError, match="No training ranking has two outputs in different places"):
        train_reward(model, tok, all_tied, [], FAST)
    deleted = [RankingExample("p", ["a", "b"], [[0], [2]], meta={"id": 17})]
    with pytest.raises(ValueError, match=r"Ranking #0 \(id 17\) refers to completion\(s\) \[2\]"):
        train_reward(model, tok, deleted, [], FAST)
    with pytest.raises(ValueError) as info:
        config_from_dict("reward", {"epochs": 0, "min_lr_ratio": 2, "max_length": 4, "k": 3})
    assert "Unknown setting 'k'" in str(info.value)
    with pytest.raises(ValueError) as info:
        config_from_dict("reward", {"epochs": 0, "min_lr_ratio": 2, "max_length": 4})
    for part in ("epochs must be at least 1", "min_lr_ratio must be between 0 and 1", "max_length must be between"):
        assert part in str(info.value)


def test_lora_with_gradient_checkpointing_learns_too(tiny, tmp_path):
    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(tiny, device="cpu", lora_r=8, gradient_checkpointing=True)
    tok = load_tokenizer(tiny)
    config = RewardConfig(**{**FAST.__dict__, "epochs": 2})
    result = train_reward(model, tok, TRAIN, VALID, config)
    assert result["valid_accuracy"] >= 0.8, result
    model.save_pretrained(tmp_path / "rm", tokenizer=tok)  # adapters merged: loads as a plain model
    loaded = ScalarHeadModel.from_pretrained(tmp_path / "rm", device="cpu")
    assert not any("lora" in name for name, _ in loaded.named_parameters())


def test_a_trained_reward_model_is_a_standard_sequence_classifier(tiny, tmp_path):
    """The saved folder loads in plain transformers (as TRL, OpenRLHF and vLLM load reward models)
    and its logit plus the documented offset is the project's score, normalization included."""
    from transformers import AutoModelForSequenceClassification

    from trainer.modeling import SCORE_OFFSET, encode_completion, encode_prompt, pad_batch

    model, tok = fresh(tiny)
    demos = [SFTExample(prompt=r.prompt, completion=r.completions[0]) for r in TRAIN[:16]]
    result = train_reward(model, tok, TRAIN[:32], VALID[:8], FAST, demonstrations=demos)
    assert result["bias_shift"] != 0
    model.save_pretrained(tmp_path / "rm", tokenizer=tok)
    sequences = [encode_prompt(tok, r.prompt) + encode_completion(tok, c) for r in VALID[:4] for c in r.completions]
    ids, mask = pad_batch(sequences, tok.pad_token_id)
    with torch.no_grad():
        ours = model.eval()(ids, mask)
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
        theirs = plain(input_ids=ids, attention_mask=mask).logits[:, 0] + getattr(plain.config, SCORE_OFFSET)
        reloaded = ScalarHeadModel.from_pretrained(tmp_path / "rm", device="cpu").eval()(ids, mask)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)
    torch.testing.assert_close(reloaded, ours, atol=1e-5, rtol=0)
    assert plain.config.num_labels == 1 and (tmp_path / "rm" / "chat_template.jinja").exists()
    # Readable by the group (transformers writes weights 0600 through a temporary file).
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in (tmp_path / "rm").iterdir())


def test_reward_models_in_the_older_form_still_load(tiny, tmp_path):
    """Backbone folder + scalar_head.safetensors, as saved before the sequence-classification form."""
    from safetensors.torch import save_file

    from trainer.modeling import HEAD_WEIGHTS, encode_completion, encode_prompt, pad_batch

    model, tok = fresh(tiny, seed=3)
    folder = tmp_path / "old"
    model.backbone.save_pretrained(folder)
    tok.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.head.state_dict().items()}, folder / HEAD_WEIGHTS)
    ids, mask = pad_batch([encode_prompt(tok, "Hi") + encode_completion(tok, "great")], tok.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(
            ScalarHeadModel.from_pretrained(folder, device="cpu").eval()(ids, mask), model.eval()(ids, mask)
        )
