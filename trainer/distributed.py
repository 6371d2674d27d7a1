"""Several processes training one model: data parallel (DDP) through accelerate.

    accelerate launch --multi_gpu --num_processes 8 -m trainer.sft --model ... --train ... --out ...
    torchrun --nproc_per_node 8 -m trainer.sft ...                       # the same through torchrun
    accelerate launch --multi_gpu --num_processes 2 -m trainer.reward ...  # no GPU: gloo on the CPU

(accelerate 1.16's `launch --cpu` starts one process unless given an MPI hostfile; `--multi_gpu`
starts the processes through torchrun, and on a machine without GPUs they train on the CPU.)

`Team` is what a training loop needs to know about the other processes. accelerate's PartialState
reads the launcher's environment (accelerate launch or torchrun: rank, world size, rendezvous),
starts the process group (NCCL on GPUs, gloo on the CPU) and picks this process's device; one plain
process is a team of one and changes nothing. The model is wrapped by `Accelerator.prepare_model`
(DistributedDataParallel), which averages the gradients of every backward pass over the processes.

The loops keep the global batch of their config: each optimizer step's batch is split into one
contiguous part per process (`shard`), each process accumulates the gradients of its part over
micro-batches with the all-reduce only on the last one (`no_sync`), and the losses are scaled so
that DDP's average of the parts equals the gradient of the whole batch. A process whose part is
short runs an extra micro-batch with weight 0, so that every process joins every all-reduce. Held-out
figures and logged metrics are sums over the processes (`sum`). Process 0 writes checkpoints and
the model; the others wait for it (`barrier`).

With a run's `sharding="fsdp"` the model is sharded instead (torch's FSDP2, `fully_shard`: each
transformer block, then the whole model, as accelerate's FSDP2 plugin wraps them): each process holds
a 1/N share of the weights, gradients and optimizer state, and gathers a block's weights for its
forward and backward pass. accelerate's own FSDP plugin is not used because it refuses to run on the
CPU, where the tests run; the wrapping is the same. Under bf16 (fp16) mixed precision each linear
layer of a block is a unit of its own that is all-gathered in bf16 (fp16) with its gradients reduced
in fp32 (`mixed_precision_policy`). Under FSDP every forward pass is collective: the loops run as
many passes in every process (equal parts, weight-0 fillers), PPO samples with the whole policy
gathered once per rollout (`gathered_for_sampling`) and `synced_gpus`, and the full weights are
gathered for the saved model (`full_state_dict`)."""

import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import torch
from accelerate import Accelerator, PartialState
from torch.distributed.tensor import DTensor

T = TypeVar("T")


class Team:
    def __init__(self) -> None:
        # Without a GPU, several processes (LOCAL_RANK set by the launcher) make a gloo group on the CPU.
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.size = self.state.process_index, self.state.num_processes
        self.device = self.state.device
        self._accelerator: Accelerator | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous part of a global batch (parts differ by at most one item)."""
        per, extra = divmod(len(items), self.size)
        start = self.rank * per + min(self.rank, extra)
        return list(items[start : start + per + (self.rank < extra)])

    def batches(self, items: Sequence[T], size: int) -> Iterator[tuple[list[T], float]]:
        """This process's part of `items` (e.g. a held-out set) in batches of `size`, as (rows, weight):
        as many batches in every process, so that sharded (FSDP) forward passes meet; a process whose
        part is shorter runs items[:1] with weight 0."""
        part = self.shard(items)
        count = math.ceil(math.ceil(len(items) / self.size) / size)
        for i in range(count):
            rows = part[i * size : (i + 1) * size]
            yield (rows or list(items[:1])), (1.0 if rows else 0.0)

    def micro_batches(self, batch: Sequence[T], micro: int) -> Iterator[tuple[list[T], float, bool]]:
        """This process's micro-batches of a global batch, as (rows, weight, last). Every process runs as
        many as the longest part needs, so all join the same backward passes; a part that is short
        runs batch[:1] with weight 0 (its gradient is zero, but it joins the all-reduce)."""
        part = self.shard(batch)
        longest = math.ceil(len(batch) / self.size)
        count = max(1, math.ceil(longest / micro))
        for i in range(count):
            rows = part[i * micro : (i + 1) * micro]
            yield (rows or list(batch[:1])), (1.0 if rows else 0.0), i == count - 1

    def wrap(self, model: torch.nn.Module, sharding: str = "ddp", precision: str = "fp32") -> torch.nn.Module:
        """DDP around the model when there are several processes (or, with sharding="fsdp", the model
        itself sharded in place); the model itself otherwise. precision: the run's resolved setting
        (trainer/precision.py), which sets what FSDP all-gathers."""
        if self.size == 1:
            return model
        if sharding == "fsdp":
            return self._shard(model, precision)
        if self._accelerator is None:
            # mixed_precision="no": the run's own precision (trainer/precision.py) autocasts; an
            # accelerate default (ACCELERATE_MIXED_PRECISION, from `accelerate config` or `launch
            # --mixed_precision`) would otherwise wrap the model's forward in a second autocast.
            self._accelerator = Accelerator(cpu=self.device.type == "cpu", mixed_precision="no")
        return self._accelerator.prepare_model(model)

    def _shard(self, model: torch.nn.Module, precision: str) -> torch.nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.size,))
        policy = mixed_precision_policy(precision)
        blocks = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
        for module in model.modules():
            if type(module).__name__ in blocks:
                if policy is not None:
                    for linear in module.modules():
                        if type(linear) is torch.nn.Linear:
                            fully_shard(linear, mesh=mesh, mp_policy=policy)
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def no_sync(self, wrapped: torch.nn.Module, last: bool) -> AbstractContextManager:
        """No gradient all-reduce for this backward pass unless it is the step's last one."""
        if self.size == 1 or last:
            return nullcontext()
        if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP: gradients reduce-scattered on the last pass
            return _fsdp_no_sync(wrapped)
        return wrapped.no_sync()  # type: ignore[operator]

    @property
    def loss_scale(self) -> float:
        """DDP averages the processes' gradients; each part's loss is a share of the whole batch's sum."""
        return float(self.size)

    def sum(self, *values: float) -> list[float]:
        """The sums over the team of these numbers (one all-reduce)."""
        if self.size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over the team of a tensor (a copy; the tensor itself is untouched)."""
        if self.size == 1:
            return tensor
        total = tensor.detach().clone()
        torch.distributed.all_reduce(total)
        return total

    def gather(self, value: T) -> list[T]:
        """Every process's `value`, in rank order, on every process (small picklable objects)."""
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, value)
        return out

    def share(self, value: T) -> T:
        """Process 0's `value` on every process (the others pass anything, e.g. None)."""
        if self.size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one: a stop is decided together, or the others
        would wait in the next step's all-reduce for a process that left."""
        if self.size == 1:
            return flag
        return self.sum(float(flag))[0] > 0

    def barrier(self) -> None:
        if self.size > 1:
            self.state.wait_for_everyone()

    def leave(self, code: int = 0) -> None:
        """The end of a process of a team: every process waits for the others, then exits at once with
        `code`. Past the wait no collective is left, and skipping the interpreter's teardown avoids
        torch's communication threads aborting a finished run (SIGABRT, "terminate called without an
        active exception": seen after a correct 2-process FSDP PPO run on the CPU, torch 2.13). One
        process returns and ends as usual."""
        if self.size == 1 or not torch.distributed.is_initialized():
            return
        self.state.wait_for_everyone()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def info(self) -> dict[str, Any]:
        return {"world_size": float(self.size)}


@contextmanager
def _fsdp_no_sync(model: Any) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the model's weights are split across processes (FSDP)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded weight (collective: every process calls it), else the tensor."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state_dict(model: torch.nn.Module) -> dict[str, Any] | None:
    """For a sharded model, its whole state dict on the CPU of process 0 ({} elsewhere), to save it
    (collective: every process calls it); None for a model that is not sharded (it saves as it is)."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (an LM head that is the embedding) come back as separate copies, which transformers
    # would then save twice: keep the first name of each shared parameter, as save_pretrained does.
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(param), name) != name:
            whole.pop(name, None)
    return whole


def mixed_precision_policy(precision: str) -> Any:
    """FSDP2's mixed precision for a run's precision: under bf16 (fp16) mixed, the weights of the
    transformer blocks' linear layers are all-gathered in bf16 (fp16), half the bytes of their fp32
    masters, and their gradients reduced in fp32; None otherwise (fp32, bf16-pure: gathered as kept).

    Linear layers only: autocast computes them in the low dtype from the fp32 weights anyway (the
    same rounding, so the same numbers as DDP and as an unsharded reference: the step-1 KL stays 0),
    and their weight gradients come out of the low-dtype matmul either way. The norms and the
    embedding stay fp32, as autocast keeps them: a policy over whole blocks would run them in bf16
    and change the model's function (logits 4e-3 off on the tiny test model; gradients reduced in
    bf16 were 4e-3 off: tests/test_fsdp.py). Each linear layer is then its own FSDP unit: a Llama
    block is 8 all-gathers (7 linear layers, then its norms) instead of 1, smaller ones."""
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if low is None:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    # The cast of a linear layer's input to `low` is autocast's own cast; outside autocast it keeps
    # the matmul's dtypes matched.
    return MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)


@contextmanager
def gathered_for_sampling(model: torch.nn.Module) -> Iterator[None]:
    """The whole of a sharded (FSDP2) model gathered once for the block and kept until its end, so that
    generate()'s forward pass per new token all-gathers nothing (without it every FSDP unit is gathered
    and freed again at every token); then sharded again. Nothing happens to a model that is not
    sharded, nor on a torch without FSDPModule.set_reshard_after_forward (before 2.8), where sampling
    gathers per token as before. Collective: every process enters it. Memory: the whole model's weights
    for the block (the linear layers' in bf16 under bf16 mixed precision)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units or not hasattr(units[0], "set_reshard_after_forward"):
        yield
        return
    state = model._get_fsdp_state() if units[0] is model else None
    if state is not None:  # what the root's first forward does (sampling may come first): the root and its
        state._lazy_init()  # units' shared streams settled before the units are gathered outside a forward
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            # As fully_shard set them: each unit frees its weights after its forward, the root keeps them.
            unit.set_reshard_after_forward(unit is not model, recurse=False)
