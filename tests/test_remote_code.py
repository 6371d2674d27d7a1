"""A model folder that ships its own Python code (`auto_map`) is refused cleanly: the worker never
runs it and never waits for an answer on a terminal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import modeling
from trainer.tiny import make_tiny_model

EVIL = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("remote code ran")
from transformers import PreTrainedTokenizerFast
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


def _with_remote_tokenizer(folder: Path) -> Path:
    (folder / "evil_tokenizer.py").write_text(EVIL)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "EvilTokenizer"
    config["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    path.write_text(json.dumps(config))
    return folder


def _with_remote_model(folder: Path) -> Path:
    (folder / "evil_model.py").write_text(
        EVIL.replace("PreTrainedTokenizerFast", "LlamaForCausalLM").replace("EvilTokenizer", "EvilModel")
    )
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil_model.EvilModel"}
    config["architectures"] = ["EvilModel"]
    path.write_text(json.dumps(config))
    return folder


def test_a_tokenizer_with_its_own_code_is_refused_without_running_it(tmp_path):
    folder = _with_remote_tokenizer(make_tiny_model(tmp_path / "m"))
    with pytest.raises(ValueError, match="trust_remote_code"):
        modeling.load_tokenizer(str(folder))
    # Even with someone at the terminal ready to say yes, nothing asks and nothing runs.
    load = f"from trainer import modeling; modeling.load_tokenizer({str(folder)!r})"
    done = subprocess.run(
        [sys.executable, "-c", load],
        input="y\n",
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode != 0 and "ValueError" in done.stderr and "Do you wish" not in done.stdout
    assert not (folder / "RAN").exists()


def test_a_model_with_its_own_code_loads_only_the_standard_class(tmp_path):
    folder = _with_remote_model(make_tiny_model(tmp_path / "m"))
    model = modeling.load_causal_lm(str(folder), device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"  # the config's model_type, never the folder's code
    assert not (folder / "RAN").exists()
