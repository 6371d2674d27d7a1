"""Issue 29, finding 8: `python -m trainer.reward --demonstrations` sets the bias as the worker does
(the demonstrations' mean score becomes 0, kept as score_offset in the saved config.json); without
it the command says that the bias is not normalized."""

import json

import torch

from tests.test_reward import TRAIN, VALID, one_thread, tiny  # noqa: F401 - fixtures
from trainer.modeling import ScalarHeadModel, encode_completion, encode_prompt, load_tokenizer
from trainer.reward import main, score


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _train(tiny, tmp_path, capsys, *more: str) -> tuple[dict, str]:  # noqa: F811
    """The command's final figures and what it said on stderr."""
    rankings = [{"prompt": r.prompt, "completions": r.completions, "order": r.order} for r in TRAIN[:24]]
    args = ["--model", tiny, "--train", _write(tmp_path / "train.jsonl", rankings), "--out", str(tmp_path / "rm")]
    sets = {"epochs": 1, "batch_size": 8, "micro_batch_size": 4, "learning_rate": 3e-3, "save_every": 0}
    main([*args, *(a for k, v in sets.items() for a in ("--set", f"{k}={json.dumps(v)}")), *more])
    captured = capsys.readouterr()
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def test_the_command_line_sets_the_bias_from_the_demonstrations(tiny, tmp_path, capsys):  # noqa: F811
    demos = [{"prompt": r.prompt, "completion": r.completions[0]} for r in VALID[:12]]
    result, said = _train(tiny, tmp_path, capsys, "--demonstrations", _write(tmp_path / "demos.jsonl", demos))
    assert result["bias_shift"] != 0 and "not normalized" not in said
    offset = json.loads((tmp_path / "rm" / "config.json").read_text())["score_offset"]
    tokenizer = load_tokenizer(str(tmp_path / "rm"))
    model = ScalarHeadModel.from_pretrained(tmp_path / "rm", device="cpu").eval()
    sequences = [encode_prompt(tokenizer, d["prompt"]) + encode_completion(tokenizer, d["completion"]) for d in demos]
    with torch.no_grad():
        mean = float(score(model, sequences, tokenizer.pad_token_id).mean())
    assert abs(mean) < 1e-4 and offset != 0, (mean, offset)


def test_without_demonstrations_it_says_the_bias_is_not_normalized(tiny, tmp_path, capsys):  # noqa: F811
    result, said = _train(tiny, tmp_path, capsys)
    assert "bias_shift" not in result and "the reward bias is not normalized" in said
