"""Training precision, one setting for SFT, reward and PPO runs (`precision`).

- "fp32": weights, optimizer state and arithmetic in fp32.
- "bf16" (mixed, the default on GPUs with bf16): fp32 master weights and AdamW state, forward and
  backward under bf16 autocast. Updates of lr * grad ~ 1e-7 survive: they are added to fp32 weights.
- "fp16" (mixed, the default on older GPUs): the same under fp16 autocast, with torch's GradScaler
  scaling the loss so small gradients do not underflow (steps with inf/NaN gradients are skipped).
- "bf16-pure": weights and optimizer state in bf16, no master copy. Half the memory, but an update
  smaller than about 1/256 of a weight rounds away: at lr 2e-5 one step changed 3% of SmolLM2's
  weights (97% in fp32). Only when asked for, for models that do not fit otherwise.
- "auto": bf16 on a GPU that supports it, fp16 on an older GPU, fp32 on the CPU.

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


def resolve(name: str, device: torch.device | str) -> Precision:
    device = torch.device(device)
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}.")
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(name, device.type, scaler)


def load_dtype(name: str) -> torch.dtype:
    """The dtype to load a model that will be trained in: fp32 (the master weights, as accelerate's
    mixed precision keeps them) unless bf16-pure. Measured on SmolLM2 (bench/precision.py): loading in
    bf16 and training bf16-mixed from those rounded weights lowered the held-out loss much less."""
    return torch.bfloat16 if name == "bf16-pure" else torch.float32


def for_model(name: str, model: torch.nn.Module) -> Precision:
    """The precision for training `model`, its trainable weights (the master weights) put in the
    dtype it wants: fp32 for fp32/bf16/fp16 (a model loaded in bf16 gets fp32 copies of what it
    trains; frozen weights, such as a LoRA model's base, stay as they are), bf16 for bf16-pure.
    Call it before making the optimizer."""
    precision = resolve(name, next(model.parameters()).device)
    for param in model.parameters():
        if param.requires_grad and param.dtype != precision.weights_dtype:
            param.data = param.data.to(precision.weights_dtype)
    if precision.weights_dtype == torch.float32:  # small constants such as rotary frequencies, in fp32 too
        for module in model.modules():
            for key, buffer in module._buffers.items():
                if buffer is not None and buffer.is_floating_point() and buffer.dtype != torch.float32:
                    module._buffers[key] = buffer.float()
    return precision
