"""Run by tests/test_distributed.py as `python -m tests.ddp_ppo SFT_FOLDER` (one process) or under
`accelerate launch` (several): PPO of the tiny SFT policy against the digit reward of
tests/test_ppo.py, with the config changes given as JSON in a second argument. Process 0 prints one JSON line: the summary, every step's mean score, and each
process's sum of the policy's and value model's weights (equal when DDP kept them in step)."""

import json
import sys

import torch

from tests.test_ppo import PROMPTS, models, says_a_number, small
from trainer.distributed import Team, full_tensor
from trainer.ppo import train_ppo


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the value head starts from random weights
    policy, ref, value, tokenizer = models(sys.argv[1])
    scores: list[float] = []
    result = train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        small(
            total_episodes=192, kl_limit=20.0, warmup_steps=0, **json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
        ),
        reward_fn=says_a_number,
        on_metrics=lambda step, total, metrics: scores.append(metrics["score"]),
    )
    team = Team()
    weights = sum(
        float(full_tensor(p.detach()).double().sum()) for model in (policy, value) for p in model.parameters()
    )
    sums = team.gather(weights)
    if team.is_main:
        print(json.dumps({**result, "scores": scores, "weight_sums": sums}), flush=True)
    team.leave()


if __name__ == "__main__":
    main()
