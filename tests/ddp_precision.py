"""Run by tests/test_distributed.py under torchrun (2 processes, ACCELERATE_MIXED_PRECISION set in the
environment as `accelerate config` or `accelerate launch --mixed_precision` sets it): one PPO step of
the tiny SFT policy against its own copy as the reference, in each precision named in the JSON list
of the second argument, with the sharding of the third ("ddp" or "fsdp"). Process 0 prints one JSON
line: for each precision the step-1 KL (0 when the run's precision is the one in force: the policy
and reference are equal), and the gradient scaler's class (fp16)."""

import json
import sys

import torch

from tests.test_ppo import PROMPTS, models, says_a_number, small
from trainer.distributed import Team
from trainer.ppo import train_ppo


def main() -> None:
    torch.set_num_threads(1)
    precisions, sharding = json.loads(sys.argv[2]), sys.argv[3]
    out: dict[str, float] = {}
    for precision in precisions:
        torch.manual_seed(0)
        policy, ref, value, tokenizer = models(sys.argv[1])
        kls: list[float] = []
        config = small(
            total_episodes=8,
            rollout_batch_size=8,
            minibatch_size=4,
            ppo_epochs=1,
            max_new_tokens=4,
            precision=precision,
            sharding=sharding,
        )
        train_ppo(
            policy,
            ref,
            None,
            value,
            tokenizer,
            PROMPTS,
            config,
            reward_fn=says_a_number,
            on_metrics=lambda step, total, metrics, kls=kls: kls.append(metrics["kl"]),
        )
        out[precision] = kls[0]
    team = Team()
    if team.is_main:
        print(json.dumps(out), flush=True)
    team.leave()


if __name__ == "__main__":
    main()
