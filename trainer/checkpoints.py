"""Checkpoints of a training loop, so that a run stopped or killed part-way resumes where it was.

A checkpoint is one file, `step-<n>.pt` in the run's checkpoint folder, holding everything the
loop needs to go on as if it had never stopped: the trained weights (all weights of a full
fine-tune; the adapters and heads of a LoRA model), the optimizer, the learning-rate schedule and
the fp16 loss scaler, torch's random generators, and the loop's own position (step, data order,
shuffling generator, best weights so far). On the CPU a resumed run ends with the same weights as
an uninterrupted one (tests/test_checkpoints.py).

It is written to `step-<n>.pt.partial` and renamed when complete, so a file without `.partial` is
whole; the newest `KEEP` are kept. These are plain `torch.save` files rather than accelerate's
`save_state` folders: the loops here hold no Accelerator, and their own position (the data order of
the current epoch, the prompt queue of PPO) has to be in the same file as the weights it belongs to."""

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor

from trainer.distributed import Team, full_tensor, is_sharded

KEEP = 2
"""Checkpoints kept per run: the newest, and one more in case the newest was cut short on disk."""


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights that training changes (those with requires_grad), copied to the CPU (whole: for a
    sharded model every process calls this)."""
    return {
        name: full_tensor(p.detach()).to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad
    }


def load_trained_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in state]
    if missing:
        raise ValueError(
            f"The checkpoint does not fit this model: {len(missing)} trained weights missing "
            f"(first: {missing[0]}). Was the run's model or lora_r changed?"
        )
    with torch.no_grad():
        for name, value in state.items():
            param = params[name]
            if isinstance(param, DTensor):  # this process's share of the whole weight
                value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
            param.copy_(value.to(param.device))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def random_state(generator: random.Random) -> list:
    """A `random.Random` state in a form torch.load(weights_only=True) accepts (lists, ints)."""
    version, internal, gauss = generator.getstate()
    return [version, list(internal), gauss]


def set_random_state(generator: random.Random, state: list) -> None:
    version, internal, gauss = state
    generator.setstate((version, tuple(internal), gauss))


@dataclass
class Checkpoints:
    """Where a loop saves (every `save_every` steps of its config, and when it is stopped);
    `folder` None: never (a plain run)."""

    folder: Path | None = None
    resume: bool = True
    """Load the newest checkpoint at the start, when there is one."""
    on_start: Callable[[int | None], None] | None = None
    """Told by `load` where the loop goes on: the step of the checkpoint it resumes, None when it
    starts from the beginning (the worker records it, and drops the metrics of steps done again)."""

    def due(self, step: int, every: int, *, stopping: bool = False) -> bool:
        return self.folder is not None and (stopping or (every > 0 and step % every == 0))

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def latest(self, at_most: int | None = None) -> Path | None:
        """The newest checkpoint (of a step <= at_most when given)."""
        if self.folder is None or not self.folder.is_dir():
            return None
        steps = sorted((int(p.stem.split("-")[1]), p) for p in self.folder.glob("step-*.pt"))
        found = [p for step, p in steps if at_most is None or step <= at_most]
        return found[-1] if found else None

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Writes `state` (tensors, numbers, lists, dicts) as the checkpoint of `step`."""
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step-{step}.pt"
        partial = path.with_name(path.name + ".partial")
        torch.save({**state, "step": step, "rng": rng_state()}, partial)
        partial.replace(path)
        for old in sorted(self.folder.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))[:-KEEP]:
            old.unlink(missing_ok=True)
        return path

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint's state to resume from (torch's generators already restored), or None."""
        state = self.load_file() if self.resume else None
        if state is not None:
            set_rng_state(state["rng"])
        if self.on_start is not None:
            self.on_start(None if state is None else int(state["step"]))
        return state

    def load_file(self, at_most: int | None = None) -> dict[str, Any] | None:
        """The newest checkpoint (of a step <= at_most when given) as saved, or None when there is none."""
        path = self.latest(at_most)
        return None if path is None else torch.load(path, map_location="cpu", weights_only=True)


def save_together(checkpoints: Checkpoints, team: Team, step: int, state: dict[str, Any]) -> None:
    """Process 0 writes the checkpoint; every process waits for it (the state was gathered by all)."""
    if team.is_main:
        checkpoints.save(step, state)
    team.barrier()


def training_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, scaler: Any, owner: Any = None
) -> dict:
    """The trained weights, the optimizer, the schedule (or None) and the fp16 scaler (or None).
    `owner`: the module that holds all the optimizer's parameters, when not `model` alone."""
    return {
        "weights": trained_state(model),
        "optimizer": optimizer_state(owner or model, optimizer),
        "schedule": schedule.state_dict() if schedule is not None else {},
        "scaler": scaler.state_dict() if scaler is not None else {},
    }


def restore_training_state(
    state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, scaler: Any, owner: Any = None
) -> None:
    load_trained_state(model, state["weights"])
    load_optimizer_state(owner or model, optimizer, state["optimizer"])
    if schedule is not None:
        schedule.load_state_dict(state["schedule"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])


def optimizer_state(owner: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state; for a sharded model its whole state by parameter name (torch's
    distributed state-dict API; collective), which any number of processes can load again."""
    if not is_sharded(owner):
        return optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"sharded": True, "state": get_optimizer_state_dict(owner, optimizer, options=options)}


def load_optimizer_state(owner: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if state.get("sharded"):
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(owner, optimizer, optim_state_dict=state["state"], options=options)
    else:
        optimizer.load_state_dict(state)


class EpochOrder:
    """Batches of example indices: each epoch a new order from the loop's own seeded generator (not
    torch's global state), consumed `batch_size` at a time. Its state is part of a checkpoint."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size = size, batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.position = 0

    def batch(self) -> list[int]:
        """The next batch (the same until `advance`); a new epoch's order when this one is used up."""
        if self.position >= len(self.order):
            self.order = list(range(self.size))
            self.rng.shuffle(self.order)
            self.position = 0
        return self.order[self.position : self.position + self.batch_size]

    def advance(self) -> None:
        self.position += self.batch_size

    def state(self) -> dict:
        return {"order": self.order, "position": self.position, "rng": random_state(self.rng)}

    def load(self, state: dict) -> None:
        self.order, self.position = list(state["order"]), int(state["position"])
        set_random_state(self.rng, state["rng"])
