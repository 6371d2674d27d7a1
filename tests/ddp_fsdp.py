"""Run by tests/test_fsdp.py under torchrun (2 processes): the tiny SFT policy sharded with FSDP2 as a
run of each precision in the JSON list of the second argument shards it (trainer/distributed.py), beside
an unsharded copy. Process 0 prints one JSON line with, per precision:

- gathered: the all-gathers of one forward pass, as {dtype: elements} (this process's input), and
  backward_gathers: the all-gathers of its backward pass;
- logits_diff, grad_diff: the largest difference between the sharded model and the unsharded copy in
  the logits of one forward pass and in the weight gradients of one backward pass, both under the
  run's autocast, each process on its own rows and the copy on both (their gradients' mean);
- sampling: the all-gathers of one generate() of `tokens` new tokens without and with
  gathered_for_sampling (first, before any forward pass, as in PPO), the FSDP units, and whether both
  sampled the same answers."""

import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from tests.test_ppo import PROMPTS
from trainer.distributed import Team, full_tensor, gathered_for_sampling
from trainer.modeling import encode_prompt, end_ids, load_causal_lm, load_tokenizer, pad_batch
from trainer.precision import for_model

NEW_TOKENS = 12


@contextmanager
def counting_all_gathers() -> Iterator[Counter]:
    """Counts FSDP's all-gathers (torch.distributed.all_gather_single, all_gather_into_tensor before it),
    by the dtype and elements of this process's input; "calls" counts the collectives."""
    name = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
    original = getattr(dist, name)
    seen: Counter = Counter()

    def counted(output, input, *args, **kwargs):
        seen["calls"] += 1
        seen[str(input.dtype).removeprefix("torch.")] += input.numel()
        return original(output, input, *args, **kwargs)

    setattr(dist, name, counted)
    try:
        yield seen
    finally:
        setattr(dist, name, original)


def measure(folder: str, precision: str, team: Team) -> dict:
    tokenizer = load_tokenizer(folder)
    sharded, plain = (load_causal_lm(folder, device="cpu") for _ in range(2))
    settings = for_model(precision, sharded)
    for_model(precision, plain)
    team.wrap(sharded, "fsdp", settings.name)
    units = sum(1 for m in sharded.modules() if isinstance(m, FSDPModule))
    queries, query_mask = pad_batch([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id, left=True)

    def sample(gather: bool) -> tuple[list, int]:
        """generate() with the same seed, and the all-gathers it took."""
        torch.manual_seed(1)
        with counting_all_gathers() as seen, torch.no_grad(), settings.autocast():
            with gathered_for_sampling(sharded) if gather else nullcontext():
                out = sharded.generate(
                    input_ids=queries,
                    attention_mask=query_mask,
                    do_sample=True,
                    top_k=0,
                    min_new_tokens=NEW_TOKENS,
                    max_new_tokens=NEW_TOKENS,
                    eos_token_id=end_ids(tokenizer, None),
                    pad_token_id=tokenizer.pad_token_id,
                    synced_gpus=True,
                )
        return out.tolist(), seen["calls"]

    # Gathered first, before any forward pass (as PPO samples first); then training passes through the
    # model as left after it; the per-token sampling last (its root stays gathered after it).
    gathered_answers, gathered_once = sample(gather=True)
    rows = [encode_prompt(tokenizer, p) + [5, 6, 7] for p in PROMPTS]

    def loss_of(model, part: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_batch(part, tokenizer.pad_token_id, left=True)
        with settings.autocast():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return logits.detach(), torch.log_softmax(logits.float(), -1)[..., 5].sum()

    # Each process its own rows: FSDP averages the two parts' gradients, as the copy does below.
    parts = [rows[:2], rows[2:]]
    with counting_all_gathers() as gathered:
        logits, loss = loss_of(sharded, parts[team.rank])
    with counting_all_gathers() as regathered:  # each unit but the root freed its weights after the forward
        loss.backward()
    for rank, part in enumerate(parts):
        plain_logits, plain_loss = loss_of(plain, part)
        plain_loss.backward()
        if rank == team.rank:
            logits_diff = float((logits.float() - plain_logits.float()).abs().max())
    for param in plain.parameters():  # the mean of the parts' gradients, in fp32 (as FSDP's reduce_dtype)
        param.grad /= len(parts)
    grads = dict(plain.named_parameters())
    grad_diff = max(
        float((full_tensor(p.grad).float() - grads[n].grad.float()).abs().max() / grads[n].grad.abs().max())
        for n, p in sharded.named_parameters()
    )

    answers, per_token = sample(gather=False)
    return {
        "gathered": {k: v for k, v in gathered.items() if k != "calls"},
        "backward_gathers": regathered["calls"],
        "logits_diff": logits_diff,
        "grad_diff": grad_diff,
        "sampling": {
            "units": units,
            "tokens": len(answers[0]) - queries.shape[1],
            "gathers_per_token": per_token,
            "gathers_gathered_once": gathered_once,
            "same_answers": answers == gathered_answers,
        },
    }


def main() -> None:
    torch.set_num_threads(1)
    team = Team()
    out = {precision: measure(sys.argv[1], precision, team) for precision in json.loads(sys.argv[2])}
    if team.is_main:
        print(json.dumps(out), flush=True)
    team.leave()


if __name__ == "__main__":
    main()
