"""Tiny Llama-style causal LMs with a locally built tokenizer, for tests and dry runs (no hub).

    from trainer.tiny import make_tiny_model
    folder = make_tiny_model(tmp_path / "tiny", texts=my_texts, hidden_size=64)

The tokenizer is a byte-level BPE trained on `texts` (any text encodes, nothing is unknown),
with distinct <pad>, <s> (BOS), </s> (EOS) tokens and a small chat template, so the code paths
that real models take (format_prompt, padding, EOS handling) run unchanged on these."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]

# One message per block: "<|role|>\ncontent", assistant turns end with EOS; the generation
# prompt is the assistant header, so a completion starts right after it. Newlines are written
# as expressions because transformers renders templates with trim_blocks.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

DEFAULT_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A labeler writes a demonstration and ranks the outputs of the model.",
    "What is the capital of France? The capital of France is Paris.",
    "Count from one to ten: one two three four five six seven eight nine ten.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "Please answer politely and briefly. Thank you, that is helpful!",
]


def build_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (in memory, in milliseconds)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
    )


def make_tiny_model(
    folder: Path,
    texts: list[str] | None = None,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised tiny LlamaForCausalLM and its tokenizer to `folder` (HF format)."""
    folder = Path(folder)
    tokenizer = build_tokenizer(list(texts or DEFAULT_TEXTS), vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
