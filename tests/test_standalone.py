"""The algorithms' own command lines (`python -m trainer.sft` / `trainer.reward`) train and save."""

import json

import pytest
import torch

from trainer import reward, sft
from trainer.modeling import ScalarHeadModel
from trainer.tiny import make_tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_sft_and_reward_command_lines(tmp_path, capsys):
    base = str(make_tiny_model(tmp_path / "base", texts=["red blue", "one two three"]))
    demos = _jsonl(tmp_path / "d.jsonl", [{"prompt": f"say {w}", "completion": w} for w in ("red", "blue") * 4])
    sft.main(
        [
            "--model",
            base,
            "--train",
            demos,
            "--valid",
            demos,
            "--out",
            str(tmp_path / "sft"),
            "--set",
            "epochs=2",
            "--set",
            "batch_size=4",
            "--set",
            "micro_batch_size=4",
        ]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["valid_loss"] < result["initial_valid_loss"]

    ranks = _jsonl(
        tmp_path / "r.jsonl",
        [{"prompt": "pick", "completions": ["red", "blue", "red blue"], "order": [[0], [1, 2]]}] * 4,
    )
    reward.main(
        [
            "--model",
            str(tmp_path / "sft"),
            "--train",
            ranks,
            "--out",
            str(tmp_path / "rm"),
            "--set",
            "batch_size=2",
            "--set",
            "micro_batch_size=2",
        ]
    )
    assert "train_loss" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ScalarHeadModel.from_pretrained(tmp_path / "rm", device="cpu") is not None
    with pytest.raises(ValueError, match="epochs"):
        sft.main(["--model", base, "--train", demos, "--out", str(tmp_path / "x"), "--set", "epochs=0"])
