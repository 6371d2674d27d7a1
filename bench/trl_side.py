"""The TRL side of bench/rm_throughput.py and bench/sft_throughput.py.

TRL lives in its own virtual environment (bench/.venv-trl, gitignored) so it never touches the
project's dependencies: `ensure_venv()` (called from the project's venv) creates it with the
same torch and transformers versions as the project, then TRL. The benchmarks then run

    bench/.venv-trl/bin/python bench/trl_side.py rm|sft SPEC.json RESULT.json

on the same model folder and the same token ids as the project's side. This file imports only
torch, transformers, datasets and trl (not the project)."""

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv-trl"


def ensure_venv() -> Path:
    """Python of bench/.venv-trl, created on first use: torch first (pinned to the project's
    version, so pip never pulls another build), then trl with the project's transformers and peft
    (LoRA on TRL's side as on ours)."""
    from importlib.metadata import version

    import torch
    import transformers

    python = VENV / "bin" / "python"
    if python.exists():
        return python
    torch_version = torch.__version__.split("+")[0]
    peft_version = version("peft")
    print(
        f"creating {VENV} (torch=={torch_version}, transformers=={transformers.__version__}, "
        f"peft=={peft_version}, trl)",
        flush=True,
    )
    base_python = Path(sys.base_prefix) / "bin" / "python3"  # the interpreter the project's venv was made from
    subprocess.run([str(base_python), "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + [f"torch=={torch_version}"], check=True)
    subprocess.run(pip + ["trl", f"transformers=={transformers.__version__}", f"peft=={peft_version}"], check=True)
    return python


def run(kind: str, spec: dict, workdir: Path, timeout: float = 1800) -> dict:
    """Run the TRL side in its venv and return its result dict."""
    python = ensure_venv()
    spec_path, result_path = workdir / f"trl-{kind}-spec.json", workdir / f"trl-{kind}-result.json"
    spec_path.write_text(json.dumps(spec))
    subprocess.run(
        [str(python), str(Path(__file__)), kind, str(spec_path), str(result_path)], check=True, timeout=timeout
    )
    return json.loads(result_path.read_text())


# ---- inside the TRL venv ---------------------------------------------------------------------


def _timing_callback():
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        """Wall time at the end of each optimizer step (the first one is warm-up and not counted)."""

        def __init__(self):
            self.times, self.cpu_times = [], []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())

    return StepTimes()


def _peak_memory_mb(device) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _common_args(spec: dict, device: str) -> dict:
    return dict(
        output_dir=spec["workdir"],
        max_steps=spec["steps"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=10_000,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=spec["seed"],
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        # bf16 autocast over fp32 weights where the spec asks for it (bench/rm_quality.py --precision);
        # without the key, bf16 on a GPU as before.
        bf16=spec["precision"] == "bf16" if "precision" in spec else device == "cuda",
        # The project's trainers default to no activation checkpointing; TRL's configs default to it
        # on (slower, less memory). Same setting on both sides, or the speed figures flatter ours.
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
    )


def trl_reward(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = json.loads(Path(spec["data"]).read_text())
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    torch.manual_seed(spec["seed"])
    # Weights in fp32 when the spec names a precision (bf16 is then autocast, as on our side).
    bf16_weights = device == "cuda" and "precision" not in spec
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"], num_labels=1, dtype=torch.bfloat16 if bf16_weights else torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    pairs = [(seqs[w], seqs[l]) for seqs, pair_list in data["train"] for w, l in pair_list]
    train = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})
    args = RewardConfig(
        per_device_train_batch_size=spec["pairs_per_step"],
        max_length=None,
        center_rewards_coefficient=None,
        **_common_args(spec, device),
    )
    peft_config = None
    if spec.get("lora_r"):
        from peft import LoraConfig

        # As trainer/modeling.py's LoRA: alpha 2r, no dropout, every linear layer of the backbone;
        # SEQ_CLS keeps the score head trained in full (peft's modules_to_save), as ours is.
        r = spec["lora_r"]
        peft_config = LoraConfig(
            r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear", task_type="SEQ_CLS"
        )
    clock = _timing_callback()
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=[clock],
        peft_config=peft_config,
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    seconds, cpu_seconds = clock.times[-1] - clock.times[0], clock.cpu_times[-1] - clock.cpu_times[0]
    # Held-out scores, (winner, loser) per pair: the accuracy is counted as the project's (winner
    # scored strictly higher). bench/rm_quality.py computes its figures from these.
    model = trainer.model
    model.eval()
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec.get("precision") == "bf16")
    valid, size, pad = data["valid"], spec.get("eval_rankings", 1), tokenizer.pad_token_id
    pair_scores = []
    with torch.no_grad(), autocast:
        for start in range(0, len(valid), size):
            rows = valid[start : start + size]
            seqs = [s for sequences, _ in rows for s in sequences]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=model.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=model.device)
            flat = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).float().tolist()
            offset = 0
            for sequences, pair_list in rows:
                pair_scores += [[flat[offset + w], flat[offset + lose]] for w, lose in pair_list]
                offset += len(sequences)
    return {
        "pairs_per_s": spec["pairs_per_step"] * (spec["steps"] - 1) / seconds,
        "pairs_per_cpu_s": spec["pairs_per_step"] * (spec["steps"] - 1) / cpu_seconds,
        "valid_accuracy": sum(c > r for c, r in pair_scores) / len(pair_scores),
        "scores": pair_scores,
        "trainable_params": trainable,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "peak_memory_mb": _peak_memory_mb(device),
        "device": device,
    }


def trl_sft(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(spec["threads"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = json.loads(Path(spec["data"]).read_text())
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(
        spec["model"], dtype=torch.bfloat16 if device == "cuda" else torch.float32
    )
    rows = data["train"]
    train = Dataset.from_dict(
        {
            "input_ids": [ids for ids, _ in rows],
            "completion_mask": [[0] * n_prompt + [1] * (len(ids) - n_prompt) for ids, n_prompt in rows],
        }
    )
    args = SFTConfig(
        per_device_train_batch_size=spec["batch_size"],
        max_length=None,
        packing=False,
        completion_only_loss=True,
        **_common_args(spec, device),
    )
    clock = _timing_callback()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=[clock])
    tokens_at_step = []

    class Tokens(type(clock)):
        def on_step_end(self, args, state, control, **kwargs):
            tokens_at_step.append(trainer._total_train_tokens)  # non-pad tokens seen so far (TRL's own count)

    trainer.add_callback(Tokens())
    trainer.train()
    seconds, cpu_seconds = clock.times[-1] - clock.times[0], clock.cpu_times[-1] - clock.cpu_times[0]
    return {
        "tokens_per_s": (tokens_at_step[-1] - tokens_at_step[0]) / seconds,
        "tokens_per_cpu_s": (tokens_at_step[-1] - tokens_at_step[0]) / cpu_seconds,
        "peak_memory_mb": _peak_memory_mb(device),
        "device": device,
    }


def trl_check(spec: dict) -> dict:
    """What an ML engineer does with instructloop's outputs in TRL: one optimizer step each of
    RewardTrainer from the project's reward-model folder, and of SFTTrainer / DPOTrainer /
    RewardTrainer on the project's exports loaded with `datasets`, for each set of exports in
    spec["sets"] ({"plain, single-turn": {"sft": path, "preferences": path, "rankings-pairs": path}, ...}).
    Reports per check whether it ran, whether TRL applied the model's chat template, how many of the
    first prompt's turns (spec["first_rows"][set]["turns"]) are in the token ids TRL made of it, and
    for SFT whether the loss is on the first answer's tokens only."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    torch.set_num_threads(spec["threads"])
    results = {}
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"])
    marker = spec["template_marker"]  # text only the chat template writes (e.g. "<|assistant|>")

    def common(name: str) -> dict:
        return dict(
            output_dir=str(Path(spec["workdir"]) / name.replace(", ", "-")),
            max_steps=1,
            per_device_train_batch_size=2,
            learning_rate=1e-4,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
        )

    def first_ids(trainer) -> list[int]:
        """The token ids TRL made of the first example (its column names differ per trainer and version)."""
        row = trainer.train_dataset[0]
        keys = [k for k in row if k.endswith("ids") and k != "completion_ids"] or list(row)
        return [i for k in keys if isinstance(row[k], list) for i in row[k] if isinstance(i, int)]

    def answer_only(trainer, answer: str) -> bool:
        """SFT: the tokens that carry a label (the loss) in the first example are its answer's."""
        row = trainer.train_dataset[0]
        labels = row.get("labels") or [
            i if m else -100 for i, m in zip(row["input_ids"], row["completion_mask"], strict=True)
        ]
        trained = [i for i, label in zip(row["input_ids"], labels, strict=True) if label != -100]
        return tokenizer.decode(trained, skip_special_tokens=True).strip() == answer

    def record(name: str, trainer, first: dict, sft: bool = False) -> None:
        try:
            out = trainer.train()
            text = tokenizer.decode(first_ids(trainer))
            found = sum(turn in text for turn in first["turns"])
            results[name] = {
                "ok": True,
                "loss": float(out.training_loss),
                "chat_template_applied": marker in text,
                "turns_in_tokens": f"{found}/{len(first['turns'])}",
                "loss_on_answer_only": answer_only(trainer, first["answer"]) if sft else None,
            }
        except Exception as exc:  # report the failure in the table instead of stopping the other checks
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}

    def reward_pairs(path: str):
        ds = load_dataset("json", data_files=path, split="train")
        return ds.remove_columns([c for c in ds.column_names if c not in ("prompt", "chosen", "rejected")])

    # 1. The project's reward model folder, loaded as TRL loads any reward model.
    rm = AutoModelForSequenceClassification.from_pretrained(spec["reward_model"], num_labels=1)
    for label, files in spec["sets"].items():
        trainer = RewardTrainer(
            model=rm,
            args=RewardConfig(**common(f"rm-folder-{label}")),
            train_dataset=reward_pairs(files["preferences"]),
            processing_class=tokenizer,
        )
        record(f"RewardTrainer from our reward-model folder, preferences ({label})", trainer, spec["first_rows"][label])
    # 2. The exports in each trainer.
    for label, files in spec["sets"].items():
        first = spec["first_rows"][label]
        sft = load_dataset("json", data_files=files["sft"], split="train").remove_columns(["split"])
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(spec["policy"]),
            train_dataset=sft,
            args=SFTConfig(**common(f"sft-{label}"), max_length=256),
            processing_class=tokenizer,
        )
        record(f"SFTTrainer on the sft export ({label})", trainer, first, sft=True)
        trainer = DPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(spec["policy"]),
            train_dataset=reward_pairs(files["preferences"]),
            args=DPOConfig(**common(f"dpo-{label}"), max_length=256),
            processing_class=tokenizer,
        )
        record(f"DPOTrainer on the preferences export ({label})", trainer, first)
        trainer = RewardTrainer(
            model=AutoModelForSequenceClassification.from_pretrained(spec["policy"], num_labels=1),
            train_dataset=reward_pairs(files["rankings-pairs"]),
            args=RewardConfig(**common(f"rm-rankings-{label}")),
            processing_class=tokenizer,
        )
        record(f"RewardTrainer on the rankings export ({label})", trainer, first)
    return {"checks": results}


def main() -> None:
    kind, spec_path, result_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    result = {"rm": trl_reward, "sft": trl_sft, "check": trl_check}[kind](spec)
    import trl

    result["trl_version"] = trl.__version__
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
