"""Issue 29, finding 6, on 2 processes (gloo, tests/ddp_fsdp.py): FSDP2 under bf16 (fp16) mixed
precision all-gathers the blocks' linear weights in bf16 (fp16), half their fp32 bytes, and reduces
their gradients in fp32, with the same logits and gradients as the model unsharded under autocast;
sampling under FSDP gathers the model once per batch, not every FSDP unit at every new token."""

import json
import subprocess
import sys

import pytest
import torch

from app.config import REPO_ROOT
from tests.test_distributed import ENV, _free_port
from tests.test_ppo import sft_folder  # noqa: F401 - the tiny SFT policy fixture
from trainer.modeling import load_causal_lm

pytestmark = pytest.mark.slow  # two processes under torchrun


def _measured(folder: str, precisions: list[str]) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", _free_port()]
    command += ["-m", "tests.ddp_fsdp", folder, json.dumps(precisions)]
    done = subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def half(weight: torch.Tensor) -> int:
    """The elements of one process's shard of a weight: half its rows, rounded up (FSDP pads)."""
    return -(-weight.shape[0] // 2) * weight[0].numel()


def test_fsdp_gathers_linear_weights_in_the_low_precision_and_samples_with_one_gather(sft_folder):  # noqa: F811
    model = load_causal_lm(sft_folder, device="cpu")
    layers = model.model.layers
    linear = sum(half(m.weight) for m in layers.modules() if isinstance(m, torch.nn.Linear))
    everything = sum(half(p) for p in model.parameters())
    out = _measured(sft_folder, ["fp32", "bf16", "fp16"])

    # One forward pass: each process gathers with its half of every weight, once.
    assert out["fp32"]["gathered"] == {"float32": everything}
    for low in ("bf16", "fp16"):
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[low]
        assert out[low]["gathered"] == {dtype: linear, "float32": everything - linear}, out[low]
    for precision, measured in out.items():
        # After gathered_for_sampling the units free their weights after a forward again, as before it.
        assert measured["backward_gathers"] == measured["sampling"]["units"] - 1, (precision, measured)
        # The same numbers as unsharded under autocast: the KL to an unsharded reference stays 0. A
        # policy over whole blocks (norms in bf16) changed the logits by 4e-3; gradients reduced in
        # bf16 were 4e-3 off.
        assert measured["logits_diff"] == 0.0, (precision, measured)
        assert measured["grad_diff"] < 1e-6, (precision, measured)

        sampling = measured["sampling"]
        assert sampling["tokens"] == 12 and sampling["same_answers"], (precision, sampling)
        # Per token: every unit but the root (it keeps its weights after a forward) at every token.
        assert sampling["gathers_per_token"] >= (sampling["units"] - 1) * sampling["tokens"], sampling
        assert sampling["gathers_gathered_once"] <= sampling["units"], sampling
