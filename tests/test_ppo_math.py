"""The pure pieces of trainer/ppo.py against values computed by hand on small tensors."""

import math

import pytest
import torch

from runconfig import PPOConfig, config_from_dict
from trainer.modeling import pad_batch
from trainer.ppo import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae_advantages,
    logprobs_from_logits,
    masked_whiten,
    per_token_kl,
    response_mask_after_eos,
    rewards_with_kl,
    trim,
)

EOS, PAD = 3, 1


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def close(actual, expected):
    torch.testing.assert_close(actual, t(expected), atol=1e-5, rtol=1e-5)


def test_mask_after_eos_keeps_the_eos_and_nothing_after():
    responses = torch.tensor([[5, 9, EOS, 7, EOS], [5, 6, 7, 8, 9], [EOS, 4, 4, 4, 4]])
    mask, ended = response_mask_after_eos(responses, [EOS])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_mask_stops_at_any_end_token():
    responses = torch.tensor([[5, 8, 7, EOS], [5, EOS, 8, 9], [5, 6, 7, 9]])
    mask, ended = response_mask_after_eos(responses, [EOS, 8])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert ended.tolist() == [True, True, False]


def test_left_padding_and_trim():
    ids, mask = pad_batch([[7, 8, 9], [4]], PAD, left=True)
    assert ids.tolist() == [[7, 8, 9], [PAD, PAD, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    # Only the second row: its first two query columns and the response tail are padding for it.
    first, length = trim(mask[1:], torch.tensor([[1, 1, 0, 0]]))
    assert (first, length) == (2, 2)


def test_logprobs_and_entropy_use_the_temperature():
    logits = t([[[2.0, 0.0]]])
    # softmax([2, 0] / 2) = softmax([1, 0]): log p(0) = 1 - log(e + 1)
    assert logprobs_from_logits(logits, torch.tensor([[0]]), 2.0).item() == pytest.approx(1 - math.log(math.e + 1))
    p = math.e / (math.e + 1)
    assert entropy_from_logits(logits, 2.0).item() == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)))


def test_per_token_kl_is_zero_on_padding():
    kl = per_token_kl(t([[-1.0, -2.0, -3.0]]), t([[-1.5, -1.0, -9.0]]), t([[1, 1, 0]]))
    assert kl.tolist() == [[0.5, -1.0, 0.0]]


def test_rewards_put_the_score_at_the_last_real_token():
    kl = t([[0.5, -1.0, 0.0], [0.2, 0.2, 0.2]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    rewards = rewards_with_kl(t([2.0, -1.0]), kl, mask, kl_coef=0.1)
    close(rewards, [[-0.05, 0.1 + 2.0, 0.0], [-0.02, -0.02, -0.02 - 1.0]])


def test_gae_by_hand():
    rewards, values, mask = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.2, 0.4]]), t([[1, 1, 1]])
    # gamma 1, lambda 0.5: deltas 0.6 (t=2), 0.2 (t=1), -0.3 (t=0)
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    close(adv, [[-0.05, 0.5, 0.6]])
    close(ret, [[0.45, 0.7, 1.0]])
    # lambda 1: returns are the discounted sums of rewards, 0.9^2 * 1 at t=0
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=1.0)
    close(adv, [[0.31, 0.7, 0.6]])
    close(ret, [[0.81, 0.9, 1.0]])


def test_gae_ignores_padding_and_ends_the_episode_at_the_last_real_token():
    rewards, values, mask = t([[0.0, 1.0, 5.0]]), t([[0.5, 0.2, 9.0]]), t([[1, 1, 0]])
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=1 is the last token: delta = 1 + 0 - 0.2; t=0: delta = 0 + 0.2 - 0.5 = -0.3, plus 0.5 * 0.8
    close(adv, [[0.1, 0.8, 0.0]])
    close(ret, [[0.6, 1.0, 0.0]])


def test_whitening_over_real_tokens_only():
    x, mask = t([[1.0, 2.0, 3.0, 100.0]]), t([[1, 1, 1, 0]])
    z = 1 / math.sqrt(2 / 3)  # population std of 1, 2, 3
    close(masked_whiten(x, mask), [[-z, 0.0, z, 0.0]])
    close(masked_whiten(x, mask, shift_mean=False), [[2 - z, 2.0, 2 + z, 0.0]])


def test_clipped_policy_loss_by_hand():
    old = t([[0.0, 0.0, 0.0]])
    new = t([[math.log(1.5), math.log(0.5), 7.0]])  # the third token is padding
    adv = t([[1.0, -1.0, 3.0]])
    loss, clip_frac, approx_kl = clipped_policy_loss(new, old, adv, t([[1, 1, 0]]), cliprange=0.2)
    # token 1: max(-1.5, -1.2) = -1.2; token 2: max(0.5, 0.8) = 0.8; both clipped
    assert loss.item() == pytest.approx(-0.2)
    assert clip_frac.item() == pytest.approx(1.0)
    assert approx_kl.item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 2)


def test_clipped_value_loss_by_hand():
    loss = clipped_value_loss(t([[1.0, 0.0]]), t([[0.0, 0.0]]), t([[1.0, 0.0]]), t([[1, 0]]), cliprange_value=0.2)
    # v=1 is clipped to 0.2: max(0, 0.8^2) / 2
    assert loss.item() == pytest.approx(0.32)


def test_ppo_config_refuses_bad_values_with_clear_messages():
    assert PPOConfig().problems() == []
    with pytest.raises(ValueError) as err:
        config_from_dict("ppo", {"kl_coef": -0.1, "cliprange": 1.5, "rollout_batch_size": 16, "minibatch_size": 5})
    message = str(err.value)
    assert "kl_coef (beta) must be between 0 and 1" in message
    assert "cliprange must be in (0, 1)" in message
    assert "minibatch_size (5) must divide rollout_batch_size (16)" in message
    with pytest.raises(ValueError, match="Unknown setting 'beta'"):
        config_from_dict("ppo", {"beta": 0.1})


def _whole(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp.exp() * logp).sum(-1)


def test_log_probs_and_entropy_in_chunks_equal_the_whole_batch_and_no_fp32_batch_tensor_exists():
    """Issue 29, finding 7: no fp32 [batch, length, vocab] tensor of the whole batch (1.2 GB at the GPU
    preset): the log-softmax runs a row at a time here, with the same numbers and gradient to 1e-5."""
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.manual_seed(0)
    batch, length, vocab = 4, 5, 64
    logits = (3 * torch.randn(batch, length, vocab)).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, vocab, (batch, length))
    expected_lp, expected_ent = _whole(logits, tokens, 0.7)
    expected_lp.sum().backward()
    expected_grad, logits.grad = logits.grad.clone(), None

    class Largest(TorchDispatchMode):
        biggest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    Largest.biggest = max(Largest.biggest, t.numel())
            return out

    one_row = length * vocab * 4
    with Largest():
        lp = logprobs_from_logits(logits, tokens, 0.7, chunk_bytes=one_row)
        ent = entropy_from_logits(logits, 0.7, chunk_bytes=one_row)
        lp.sum().backward()
    assert Largest.biggest <= length * vocab < batch * length * vocab
    assert torch.allclose(lp, expected_lp, atol=1e-5) and torch.allclose(ent, expected_ent, atol=1e-5)
    assert torch.allclose(logits.grad.float(), expected_grad.float(), atol=1e-5)
