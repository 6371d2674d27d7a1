"""Run by tests/test_training_stops.py under torchrun (2 processes, sharding "ddp" or "fsdp" in the
first argument, the tiny model's folder in the second): SFT with a long held-out set, and a stop
asked in process 0 only, during the third batch of its held-out pass after step 2. Process 0 prints
one JSON line: each process's steps, batches run in that pass, and forward passes begun after the
stop was asked (the team decides the stop together before each held-out batch: no process may
wait in a collective for one that left)."""

import json
import sys

import torch

from runconfig import SFTConfig
from tests.test_sft import TRAIN
from tests.test_training_stops import LONG_VALID, StopInPass
from trainer.distributed import Team
from trainer.modeling import load_causal_lm, load_tokenizer
from trainer.sft import train_sft


def main() -> None:
    torch.set_num_threads(1)
    sharding, folder = sys.argv[1], sys.argv[2]
    team = Team()
    config = SFTConfig(
        learning_rate=1e-2,
        epochs=1,
        batch_size=16,
        micro_batch_size=4,
        eval_every=2,
        eval_batch_size=2,
        sharding=sharding,
    )
    torch.manual_seed(0)
    model = load_causal_lm(folder, device=team.device)
    stop = StopInPass(model, pass_number=2, at=3 if team.is_main else 0)
    result = train_sft(model, load_tokenizer(folder), TRAIN, LONG_VALID, config, should_stop=stop.should_stop)
    mine = {"steps": result["steps"], "in_pass": stop.in_pass, "after_asked": stop.after_asked}
    every = team.gather(mine)
    if team.is_main:
        print(json.dumps(every), flush=True)
    team.leave()


if __name__ == "__main__":
    main()
