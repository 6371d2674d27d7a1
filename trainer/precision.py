"""Training precision, one setting for SFT, reward and PPO runs (`precision`).

- "fp32": weights, optimizer state and arithmetic in fp32.
- "bf16" (mixed, the default on GPUs with bf16): fp32 master weights and AdamW state, forward and
  backward under bf16 autocast. Updates of lr * grad ~ 1e-7 survive: they are added to fp32 weights.
- "fp16" (mixed, the default on older GPUs): the same under fp16 autocast, with torch's GradScaler
  scaling the loss so small gradients do not underflow (steps with inf/NaN gradients are skipped;
  under FSDP torch's ShardedGradScaler, so every process skips the same steps).
- "bf16-pure": weights and optimizer state in bf16, no master copy. Half the memory, but an update
  smaller than about 1/256 of a weight rounds away: at lr 2e-5 one step changed 3% of SmolLM2's
  weights (97% in fp32). Only when asked for, for models that do not fit otherwise.
- "auto": bf16 on a GPU that has it natively (not emulated: a T4 or V100 gets fp16), fp16 on an older
  GPU, fp32 on the CPU.

This is what accelerate's `mixed_precision` does (torch.autocast around the forward, fp32 weights,
GradScaler for fp16); it is written out here because the training loops are single-process loops of
our own and need only these few lines, not an Accelerator object."""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from runconfig import PRECISIONS


@dataclass
class Precision:
    name: str
    """The resolved setting: fp32, bf16, fp16 or bf16-pure."""
    device_type: str
    scaler: torch.amp.GradScaler | None = None

    @property
    def weights_dtype(self) -> torch.dtype:
        """The dtype the trained model's weights (and so AdamW's state) are kept in."""
        return torch.bfloat16 if self.name == "bf16-pure" else torch.float32

    @property
    def fused_optimizer(self) -> bool:
        """Whether AdamW may use its fused kernel: not beside torch's ShardedGradScaler, whose found-inf
        tensor ([1]) the fused step refuses (it wants a scalar; seen on torch 2.13)."""
        return self.scaler is None or type(self.scaler) is torch.amp.GradScaler

    def autocast(self) -> AbstractContextManager:
        if self.name in ("bf16", "fp16"):
            return torch.autocast(self.device_type, dtype=torch.bfloat16 if self.name == "bf16" else torch.float16)
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, clip: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Clips (on unscaled gradients) and steps; returns the gradient norm clip() measured."""
        if self.scaler is None:
            norm = clip()
            optimizer.step()
            return norm
        self.scaler.unscale_(optimizer)
        norm = clip()
        self.scaler.step(optimizer)  # skipped when the gradients overflowed; the scale then shrinks
        self.scaler.update()
        return norm


def bf16_native() -> bool:
    """Whether this machine's GPU computes in bf16 itself (Ampere and later). torch's
    is_bf16_supported() says yes on a T4 or V100 too, where bf16 is emulated (and slow)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def auto_name(device_type: str, native_bf16: bool) -> str:
    """What "auto" means on a device: bf16 where the GPU has it natively, fp16 on an older GPU, fp32 elsewhere."""
    if device_type == "cuda":
        return "bf16" if native_bf16 else "fp16"
    return "fp32"


def resolve(
    name: str, device: torch.device | str, *, sharded: bool = False, native_bf16: bool | None = None
) -> Precision:
    """The setting `name` on `device`. sharded: the model is split across processes (FSDP), so fp16's
    scaler must agree on skipping a step across them (ShardedGradScaler all-reduces what each found).
    native_bf16: the device's fact (None: asked of torch)."""
    device = torch.device(device)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}.")
    if name == "auto":
        name = auto_name(device.type, bf16_native() if native_bf16 is None else native_bf16)
    scaler: torch.amp.GradScaler | None = None
    if name == "fp16":
        if sharded:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            scaler = ShardedGradScaler(device.type)
        else:
            scaler = torch.amp.GradScaler(device.type)
    return Precision(name, device.type, scaler)


def load_dtype(name: str) -> torch.dtype:
    """The dtype to load a model that will be trained in: fp32 (the master weights, as accelerate's
    mixed precision keeps them) unless bf16-pure. Measured on SmolLM2 (bench/precision.py): loading in
    bf16 and training bf16-mixed from those rounded weights lowered the held-out loss much less."""
    return torch.bfloat16 if name == "bf16-pure" else torch.float32


def frozen_dtype(name: str) -> torch.dtype:
    """The dtype to load PPO's frozen models (reference, reward model) in: the dtype of the policy's
    weights (load_dtype). Loading them in bf16 beside a policy trained from fp32 masters made the
    KL between equal weights +0.10 nats per 32-token answer (autocast runs the norms, softmax and
    rotary in the weights' dtype): a penalty for nothing. Costs their fp32 size in memory (low_memory
    keeps them in CPU memory)."""
    return load_dtype(name)


def for_model(name: str, model: torch.nn.Module, *, sharded: bool = False) -> Precision:
    """The precision for training `model`, its trainable weights (the master weights) put in the
    dtype it wants: fp32 for fp32/bf16/fp16 (a model loaded in bf16 gets fp32 copies of what it
    trains; frozen weights, such as a LoRA model's base, stay as they are), bf16 for bf16-pure.
    Call it before making the optimizer (and `sharded`: it will be wrapped with FSDP)."""
    precision = resolve(name, next(model.parameters()).device, sharded=sharded)
    for param in model.parameters():
        if param.requires_grad and param.dtype != precision.weights_dtype:
            param.data = param.data.to(precision.weights_dtype)
    if precision.weights_dtype == torch.float32:  # small constants such as rotary frequencies, in fp32 too
        for module in model.modules():
            for key, buffer in module._buffers.items():
                if buffer is not None and buffer.is_floating_point() and buffer.dtype != torch.float32:
                    module._buffers[key] = buffer.float()
    return precision
