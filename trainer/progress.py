"""Progress inside a long step, counted from a model's forward passes: no change to the code that
runs them (generate(), a training loop) is needed to see how far it is."""

import time
from collections.abc import Callable

import torch

REPORT_EVERY_S = 2.0
"""on_pass is called at most this often (a report is a database write in the worker)."""


class ForwardPasses:
    """Counts the forward passes of `module` (a pre-hook) and calls on_pass() after counting one, at
    most every REPORT_EVERY_S. On a language model's input embeddings that is one pass per new token
    while generate() samples (the first pass, over the prompt, gives the first token), whatever wraps
    the model (LoRA, DDP, FSDP): each pass through the model runs its embeddings once. close()
    removes the hook."""

    def __init__(self, module: torch.nn.Module, on_pass: Callable[[], None] | None = None):
        self.count = 0
        self.on_pass = on_pass
        self._last_call = float("-inf")
        self._handle = module.register_forward_pre_hook(self._seen)

    def _seen(self, _module, _args) -> None:
        self.count += 1
        now = time.monotonic()
        if self.on_pass is not None and now - self._last_call >= REPORT_EVERY_S:
            self._last_call = now
            self.on_pass()

    def close(self) -> None:
        self._handle.remove()
