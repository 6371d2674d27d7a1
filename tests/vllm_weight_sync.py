"""Run by tests/test_vllm_rollouts.py as `python -m tests.vllm_weight_sync MODEL_FOLDER` (one process)
or under `accelerate launch` (two, DDP on gloo): each process starts its own vLLM engine from the
tiny policy, takes one PPO update of it (the digit reward of tests/test_ppo.py, rollouts from that
engine), hands the engine the updated weights, and compares the engine's greedy answers with the
updated policy's own greedy generate(). Process 0 prints one JSON line: per process, how many of 16
greedy answers were equal before the update, after it, and how many the update changed."""

import json
import sys

import torch

from tests.test_ppo import PROMPTS, models, says_a_number, small
from trainer import modeling
from trainer.distributed import Team
from trainer.ppo import PPORun, StepProgress, _steps
from trainer.rollout import HFSampler, SamplingSpec, VLLMSampler


def greedy(sampler, prompts: list[list[int]], ends: list[int]) -> list[list[int]]:
    spec = SamplingSpec(1, 0.0, 1.0, 16, ends)
    return [answers[0].token_ids for answers in sampler.sample(prompts, spec)]


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy, ref, value, tokenizer = models(sys.argv[1])
    # A learning rate that moves greedy answers in one step on any CPU (at 1e-3 the two-process step
    # changed none of the 16 on an AMD EPYC without AVX-512, leaving the check below nothing to see).
    config = small(total_episodes=32, rollout_batch_size=16, learning_rate=1e-2, rollout_backend="vllm")
    run = PPORun(
        policy,
        ref,
        None,
        value,
        tokenizer,
        PROMPTS,
        config,
        ptx=(),
        reward_tokenizer=None,
        reward_fn=says_a_number,
        checkpoints=None,
        should_stop=None,
    )
    run.resume()
    ends = modeling.end_ids(tokenizer, policy.generation_config)
    prompts = [modeling.encode_prompt(tokenizer, f"{PROMPTS[i % 3]} ({i})") for i in range(16)]
    run.sampler = VLLMSampler(policy, max_model_len=256)
    try:
        before_policy = greedy(HFSampler(policy, batch_size=16, pad_id=tokenizer.pad_token_id), prompts, ends)
        before_engine = greedy(run.sampler, prompts, ends)
        # One step: rollouts from the engine, the update, the new weights into the engine.
        run.total_steps = 1
        _steps(run, config, None, StepProgress(run, lambda phase, total, fraction: None))
        run.sampler.load_weights(policy)
        after_policy = greedy(HFSampler(policy, batch_size=16, pad_id=tokenizer.pad_token_id), prompts, ends)
        after_engine = greedy(run.sampler, prompts, ends)
    finally:
        run.sampler.close()
    mine = {
        "equal_before": sum(a == b for a, b in zip(before_policy, before_engine, strict=True)),
        "equal_after": sum(a == b for a, b in zip(after_policy, after_engine, strict=True)),
        "changed_by_update": sum(a != b for a, b in zip(before_policy, after_policy, strict=True)),
    }
    team = Team()
    every = team.gather(mine)
    if team.is_main:
        print(json.dumps({"processes": every, "world_size": team.size}), flush=True)
    team.leave()


if __name__ == "__main__":
    main()
