"""Checkpoints of a training loop, so that a run stopped or killed part-way resumes where it was.

A checkpoint is one file, `step-<n>.pt` in the run's checkpoint folder, holding everything the
loop needs to go on as if it had never stopped: the trained weights (all weights of a full
fine-tune; the adapters and heads of a LoRA model), the optimizer, the learning-rate schedule and
the fp16 loss scaler, torch's random generators, and the loop's own position (step, data order,
shuffling generator, best weights so far). On the CPU a resumed run ends with the same weights as
an uninterrupted one (tests/test_checkpoints.py).

It is written to `step-<n>.pt.partial` and renamed when complete, so a file without `.partial` is
whole. These are plain `torch.save` files rather than accelerate's `save_state` folders: the loops
here hold no Accelerator, and their own position (the data order of the current epoch, the prompt
queue of PPO) has to be in the same file as the weights it belongs to.

A model sharded across processes (FSDP) is saved as a folder `step-<n>/` instead: its weights and
optimizer state through torch.distributed.checkpoint, each process writing its own shards (no
process gathers the whole model), and the rest (`state.pt`) by process 0. Any number of processes
(one included) can load it again.

Disk: before a checkpoint is written, all but the newest complete one are deleted (at most one
complete checkpoint beside the one being written; two at rest, so a divergence can go back one
more), and the free space is checked against the new checkpoint's size (CheckpointSpaceError)."""

import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor

from trainer.distributed import Team, full_tensor, is_sharded
from trainer.errors import CheckpointSpaceError

KEEP = 2
"""Complete checkpoints kept at rest per run: the newest and the one before (what a divergence found
right after a checkpoint goes back to). Before a new one is written only the newest is kept."""
MARGIN = 1.05
"""Free space asked for beyond the checkpoint's tensor bytes (pickled structure, file system)."""


class Shards(dict):
    """Part of a checkpoint's state that is sharded across the processes (FSDP's DTensors, a sharded
    optimizer state): written through torch.distributed.checkpoint, each process its own shards."""


class ShardsOnDisk:
    """A `Shards` part of a saved checkpoint, read into a template of the same structure (the live
    model's parameters, an optimizer state dict) when the loop restores it."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key

    def load_into(self, template: dict) -> dict:
        import torch.distributed.checkpoint as dcp

        box = {self.key: template}
        dcp.load(box, checkpoint_id=str(self.folder))  # in place into the template's tensors
        return box[self.key]


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def _split(state: dict, prefix: str = "") -> tuple[dict, dict[str, dict]]:
    """(state with each Shards part replaced by a placeholder, {key: that part})."""
    plain: dict = {}
    shards: dict[str, dict] = {}
    for name, value in state.items():
        key = f"{prefix}{name}"
        if isinstance(value, Shards):
            plain[name], shards[key] = {"__shards__": key}, dict(value)
        elif isinstance(value, dict):
            plain[name], inner = _split(value, key + "/")
            shards.update(inner)
        else:
            plain[name] = value
    return plain, shards


def _placeholders(state: Any, folder: Path) -> Any:
    """A loaded state.pt with its placeholders turned into ShardsOnDisk."""
    if isinstance(state, dict):
        if set(state) == {"__shards__"}:
            return ShardsOnDisk(folder, state["__shards__"])
        return {k: _placeholders(v, folder) for k, v in state.items()}
    return state


def _bytes(value: Any) -> int:
    """The bytes of the tensors in `value` that this process writes (a DTensor: its own shard)."""
    if isinstance(value, DTensor):
        return value.to_local().nbytes
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_bytes(v) for v in value)
    return 0


def _step_of(path: Path) -> int | None:
    """The step of a complete checkpoint (step-N.pt or step-N/), None for anything else."""
    name = path.name
    if not name.startswith("step-") or name.endswith(".partial"):
        return None
    number = name[len("step-") :].removesuffix(".pt")
    return int(number) if number.isdigit() else None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def checkpoint_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained weights for a checkpoint: a sharded model's own shards (Shards, not gathered),
    else trained_state's CPU copies."""
    if is_sharded(model):
        return Shards({name: p.detach() for name, p in model.named_parameters() if p.requires_grad})
    return trained_state(model)


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights that training changes (those with requires_grad), copied to the CPU (whole: for a
    sharded model every process calls this)."""
    return {
        name: full_tensor(p.detach()).to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad
    }


def load_trained_state(model: torch.nn.Module, state: "Mapping[str, torch.Tensor] | ShardsOnDisk") -> None:
    params = dict(model.named_parameters())
    if isinstance(state, ShardsOnDisk):  # read into the parameters (this process's shards) in place
        state.load_into({name: p.detach() for name, p in params.items() if p.requires_grad})
        return
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

    def complete(self) -> list[tuple[int, Path]]:
        """The complete checkpoints (step-N.pt files, step-N/ folders of a sharded run), oldest first."""
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted((step, p) for p in self.folder.iterdir() if (step := _step_of(p)) is not None)

    def latest(self, at_most: int | None = None) -> Path | None:
        """The newest checkpoint (of a step <= at_most when given)."""
        found = [p for step, p in self.complete() if at_most is None or step <= at_most]
        return found[-1] if found else None

    def make_room(self) -> None:
        """Before writing: partial checkpoints (of a crash) and all complete ones but the newest go."""
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        for partial in self.folder.glob("step-*.partial"):
            _remove(partial)
        for _, old in self.complete()[:-1]:
            _remove(old)

    def check_space(self, step: int, needed: int, free: int) -> None:
        if needed * MARGIN > free:
            raise CheckpointSpaceError(
                f"Not enough disk space for the checkpoint of step {step} in {self.folder}: it needs about "
                f"{_gib(needed * MARGIN)} and {_gib(free)} is free (older checkpoints already removed, "
                f"the newest kept). Free space on that disk, give a checkpoint folder on a larger one "
                f"(--checkpoints), or save less often (save_every)."
            )

    def save(self, step: int, state: dict[str, Any], team: Team | None = None) -> Path:
        """Writes `state` (tensors, numbers, lists, dicts; Shards parts through
        torch.distributed.checkpoint) as the checkpoint of `step`. With a team every process calls it
        (collective); process 0 writes all but the other processes' shards."""
        assert self.folder is not None
        main = team is None or team.is_main
        plain, shards = _split({**state, "step": step, "rng": rng_state()})
        if main:
            self.make_room()
        local = sum(_bytes(part) for part in shards.values()) + (_bytes(plain) if main else 0)
        needed = int(team.sum(local)[0]) if team is not None else local
        free = free_bytes(self.folder) if main else 0
        self.check_space(step, needed, team.share(free) if team is not None else free)  # alike everywhere
        path = self.folder / (f"step-{step}" if shards else f"step-{step}.pt")
        partial = path.with_name(path.name + ".partial")
        if shards:
            import torch.distributed.checkpoint as dcp

            dcp.save(shards, checkpoint_id=str(partial))  # each process writes its own shards
            if main:
                torch.save(plain, partial / "state.pt")
        elif main:
            torch.save(plain, partial)
        if team is not None:
            team.barrier()
        if main:
            if path.exists():  # the same step saved again (a stop right after a due checkpoint)
                _remove(path)
            partial.replace(path)
        if team is not None:
            team.barrier()
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
        """The newest checkpoint (of a step <= at_most when given) as saved (its sharded parts as
        ShardsOnDisk, read when restored), or None when there is none."""
        path = self.latest(at_most)
        if path is None:
            return None
        if path.is_dir():
            return _placeholders(torch.load(path / "state.pt", map_location="cpu", weights_only=True), path)
        return torch.load(path, map_location="cpu", weights_only=True)


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


def save_together(checkpoints: Checkpoints, team: Team, step: int, state: dict[str, Any]) -> None:
    """Every process saves its part of the checkpoint (collective); process 0 the unsharded rest."""
    checkpoints.save(step, state, team)


def training_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, scaler: Any, owner: Any = None
) -> dict:
    """The trained weights, the optimizer, the schedule (or None) and the fp16 scaler (or None).
    `owner`: the module that holds all the optimizer's parameters, when not `model` alone."""
    return {
        "weights": checkpoint_weights(model),
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
    """The optimizer's state; for a sharded model this process's shards of it by parameter name
    (torch's distributed state-dict API, saved through torch.distributed.checkpoint), which any number
    of processes can load again; None before the first step (asking torch for the state of an
    optimizer without one would take a step of lr 0 and count it in AdamW's bias correction)."""
    if not is_sharded(owner):
        return optimizer.state_dict()
    if not optimizer.state:
        return {"sharded": True, "state": None}
    return {"sharded": True, "state": Shards(get_optimizer_state_dict(owner, optimizer))}


def load_optimizer_state(owner: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    if not state.get("sharded"):
        optimizer.load_state_dict(state)
    elif isinstance(state["state"], ShardsOnDisk):
        template = get_optimizer_state_dict(owner, optimizer)  # the structure (and tensors) to read into
        loaded = state["state"].load_into(template)
        set_optimizer_state_dict(owner, optimizer, optim_state_dict=loaded)
    elif state["state"] is not None:  # a gathered whole state (checkpoints written before shards)
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(owner, optimizer, optim_state_dict=state["state"], options=options)


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
