"""Training precision on the CPU (bf16 autocast runs there too): mixed bf16 (fp32 master weights)
trains like fp32 from a model loaded in bf16, which is how GPUs load it; pure bf16 loses most small
updates to rounding, which is why mixed is the default on GPUs and pure only when asked for."""

import json

import pytest
import torch

from runconfig import SFTConfig, config_from_dict
from tests.test_ppo import PROMPTS, sft_folder  # noqa: F401 - the tiny SFT policy fixture
from tests.test_sft import TRAIN, VALID
from trainer.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
from trainer.ppo import main as ppo_main
from trainer.precision import resolve
from trainer.sft import train_sft
from trainer.tiny import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [ex.prompt + " " + ex.completion for ex in TRAIN]
    return str(make_tiny_model(tmp_path_factory.mktemp("precision") / "model", texts=texts))


def _train(tiny, precision: str, loaded: torch.dtype, lr: float, steps: int) -> tuple[float, float]:
    """(share of weights one run of `steps` steps changed, held-out loss drop)."""
    torch.manual_seed(0)
    model = load_causal_lm(tiny, device="cpu", dtype=loaded)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    config = SFTConfig(
        learning_rate=lr,
        epochs=50,
        max_steps=steps,
        batch_size=8,
        micro_batch_size=8,
        warmup_ratio=0.0,
        min_lr_ratio=1.0,
        keep_best=False,
        max_length=64,
        max_prompt_length=32,
        eval_every=steps,
        precision=precision,
    )
    result = train_sft(model, load_tokenizer(tiny), TRAIN, VALID, config)
    changed = sum(int((p.detach().float() != before[n]).sum()) for n, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    return changed / total, result["initial_valid_loss"] - result["valid_loss"]


def test_mixed_bf16_keeps_the_updates_that_pure_bf16_rounds_away(tiny):
    fp32_changed, _ = _train(tiny, "fp32", torch.float32, lr=2e-5, steps=1)
    mixed_changed, _ = _train(tiny, "bf16", torch.bfloat16, lr=2e-5, steps=1)
    pure_changed, _ = _train(tiny, "bf16-pure", torch.bfloat16, lr=2e-5, steps=1)
    print(
        f"weights changed by one step at lr 2e-5: fp32 {fp32_changed:.1%}, bf16 mixed {mixed_changed:.1%}, "
        f"bf16-pure {pure_changed:.1%}"
    )
    assert fp32_changed > 0.9
    assert mixed_changed == pytest.approx(fp32_changed, abs=0.02)  # within 2 points of fp32
    assert pure_changed < 0.5 * fp32_changed


def test_mixed_bf16_lowers_the_held_out_loss_like_fp32(tiny):
    _, fp32_drop = _train(tiny, "fp32", torch.float32, lr=2e-5, steps=8)
    _, mixed_drop = _train(tiny, "bf16", torch.bfloat16, lr=2e-5, steps=8)
    _, pure_drop = _train(tiny, "bf16-pure", torch.bfloat16, lr=2e-5, steps=8)
    print(
        f"held-out loss drop after 8 steps at lr 2e-5: fp32 {fp32_drop:.4f}, bf16 mixed {mixed_drop:.4f}, "
        f"bf16-pure {pure_drop:.4f}"
    )
    assert fp32_drop > 0
    assert mixed_drop == pytest.approx(fp32_drop, rel=0.15)  # within 15% of fp32
    assert pure_drop < 0.6 * fp32_drop


def test_precision_setting_resolves_and_is_checked():
    assert resolve("auto", "cpu").name == "fp32" and resolve("bf16", "cpu").weights_dtype == torch.float32
    assert resolve("bf16-pure", "cpu").weights_dtype == torch.bfloat16 and resolve("fp16", "cpu").scaler is not None
    with pytest.raises(ValueError, match="precision must be one of"):
        config_from_dict("sft", {"precision": "fp8"})


def test_auto_picks_fp16_on_a_gpu_that_only_emulates_bf16():
    """Issue 29, finding 4: torch.cuda.is_bf16_supported() says yes on a T4 or V100 (emulated), so
    "auto" never chose fp16 there. The decision, given the device's facts."""
    assert resolve("auto", "cuda", native_bf16=False).name == "fp16"
    assert resolve("auto", "cuda", native_bf16=True).name == "bf16"
    assert resolve("auto", "cpu", native_bf16=True).name == "fp32"


def test_fp16_under_fsdp_uses_the_sharded_scaler():
    """Each FSDP process sees only its shard of the gradients: torch's ShardedGradScaler all-reduces
    the inf/NaN it finds, so every process skips the same steps (the plain scaler could disagree)."""
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    assert isinstance(resolve("fp16", "cpu", sharded=True).scaler, ShardedGradScaler)
    assert not isinstance(resolve("fp16", "cpu").scaler, ShardedGradScaler)
    assert resolve("bf16", "cpu", sharded=True).scaler is None


@pytest.mark.parametrize("precision", ["bf16", "bf16-pure"])
def test_ppo_reference_and_reward_load_in_the_policys_dtype(sft_folder, tmp_path, capsys, precision):  # noqa: F811
    """Issue 29, finding 3: the frozen models loaded in pick_dtype's dtype (bf16 on CUDA) beside a
    policy in another (fp32 masters), so equal weights had a KL (+0.10 nats per answer on SmolLM2).
    `python -m trainer.ppo` with the reference equal to the policy: the step-1 KL is exactly 0 (on
    the CPU, bf16-pure shows what CUDA did: the policy in bf16, the reference in fp32)."""
    torch.set_num_threads(1)
    reward = tmp_path / "reward"
    ScalarHeadModel.from_causal_lm(sft_folder, device="cpu").save_pretrained(reward, load_tokenizer(sft_folder))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    sets = {"total_episodes": 4, "rollout_batch_size": 4, "minibatch_size": 4, "max_new_tokens": 4}
    sets["precision"] = precision
    args = ["--policy", sft_folder, "--reward", str(reward), "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    ppo_main([*args, *(a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}"))])
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("1 1 ") and json.loads(first[4:])["kl"] == 0.0, first
