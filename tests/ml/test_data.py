"""Rows → tokens and loss labels, and batches that keep examples apart."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from app.contract.spec import Packing, TrainingSpec
from worker.ml import DatasetError
from worker.ml.data import (
    IGNORE_INDEX,
    REAL_TOKENS_KEY,
    BatchCollator,
    Task,
    Tokenization,
    choose_batching,
    pack,
    read_jsonl,
    split_documents,
    split_for_eval,
)
from worker.ml.loading import load_model, plan_device

CHAT = {
    "messages": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
        {"role": "assistant", "content": "Green."},
    ]
}


def trained_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The text of each run of consecutive tokens that carry loss."""
    assert len(ids) == len(labels)
    runs, current = [], []
    for token, label in zip(ids, labels):
        assert label in (IGNORE_INDEX, token), "a label is either ignored or the token itself"
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def tokenize_one(tokenizer, row, **options):
    examples = Tokenization(tokenizer, max_length=options.pop("max_length", 256), **options)([row])
    assert len(examples) == 1
    return examples.input_ids[0], examples.labels[0]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param(CHAT, ["Blue.<|im_end|>\n", "Green.<|im_end|>\n"], id="chat"),
        pytest.param(
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Name a fruit."},
                    {"from": "gpt", "value": "Apple."},
                ]
            },
            ["Apple.<|im_end|>\n"],
            id="sharegpt",
        ),
        pytest.param(
            {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour"},
            ["bonjour<|im_end|>\n"],
            id="instruction",
        ),
        pytest.param(
            {"prompt": "Two plus two is", "completion": " four."}, [" four.<|im_end|>"], id="prompt_completion"
        ),
    ],
)
def test_only_assistant_and_completion_tokens_carry_loss(tokenizer, row, expected):
    ids, labels = tokenize_one(tokenizer, row)
    assert trained_runs(tokenizer, ids, labels) == expected


def test_tool_definitions_and_results_are_prompt_and_tool_calls_are_trained(tokenizer):
    with_tools = copy.deepcopy(tokenizer)
    with_tools.chat_template = (
        "{% if tools %}Tools: {{ tools | map(attribute='function') | map(attribute='name') | join(', ') }}\n{% endif %}"
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% for call in m.get('tool_calls', []) %}call {{ call['function']['name'] }}{% endfor %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    call = {"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    row = {
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "sunny", "tool_call_id": "1"},
            {"role": "assistant", "content": "Sunny."},
        ],
    }
    ids, labels = tokenize_one(with_tools, row)
    assert with_tools.decode(ids).startswith("Tools: get_weather\n")
    assert trained_runs(with_tools, ids, labels) == ["call get_weather<|im_end|>\n", "Sunny.<|im_end|>\n"]


def test_sharegpt_tool_calls_render_with_the_templates_tool_support_and_train_the_calls(tokenizer):
    """LLaMA-Factory's ShareGPT tool rows: the tools reach the template, the function_call turns
    and the answers carry loss, the tool definitions and observations are prompt."""
    weather = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    row = {
        "tools": json.dumps([weather]),
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": '{"sky": "cloudy"}'},
            {"from": "gpt", "value": "Cloudy."},
        ],
    }
    ids, labels = tokenize_one(tokenizer, row, max_length=1024)
    rendered = tokenizer.decode(ids)
    assert json.dumps({"type": "function", "function": weather}) in rendered
    assert '<|im_start|>tool\n{"sky": "cloudy"}<|im_end|>' in rendered
    assert trained_runs(tokenizer, ids, labels) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n',
        "Cloudy.<|im_end|>\n",
    ]


def test_assistant_turns_with_weight_zero_are_context_only(tokenizer):
    row = copy.deepcopy(CHAT)
    row["messages"][2]["weight"] = 0
    ids, labels = tokenize_one(tokenizer, row)
    assert trained_runs(tokenizer, ids, labels) == ["Green.<|im_end|>\n"]


def test_prompt_tokens_are_what_the_template_renders(tokenizer):
    ids, _ = tokenize_one(tokenizer, CHAT)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)


def test_text_rows_train_on_every_token_and_end_with_eos(tokenizer):
    ids, labels = tokenize_one(tokenizer, {"text": "The river runs north in the morning."})
    assert tokenizer.decode(ids) == "The river runs north in the morning.<|im_end|>"
    assert labels[0] == IGNORE_INDEX  # nothing comes before the first token to predict it from
    assert labels[1:] == ids[1:]


def test_train_on_prompt_trains_every_token(tokenizer):
    ids, labels = tokenize_one(tokenizer, CHAT, train_on_prompt=True)
    assert labels[1:] == ids[1:]


def test_templates_that_rewrite_earlier_turns_still_mask_right(tokenizer):
    """Like Mistral's template: the system prompt goes into the last user message, so the
    text rendered up to the first answer is not a prefix of the whole conversation."""
    mistral_like = copy.deepcopy(tokenizer)
    mistral_like.chat_template = (
        "{%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else none %}"
        "{%- set turns = messages[1:] if system is not none else messages %}"
        "{%- set last_user = turns | selectattr('role', 'equalto', 'user') | list | length %}"
        "{%- set ns = namespace(users=0) %}"
        "{%- for m in turns %}"
        "{%- if m['role'] == 'user' %}{%- set ns.users = ns.users + 1 %}"
        "[INST] {% if system is not none and ns.users == last_user %}{{ system }}\n\n{% endif %}{{ m['content'] }} [/INST]"
        "{%- else %}{{ m['content'] }}<|im_end|>{%- endif %}"
        "{%- endfor %}"
    )
    ids, labels = tokenize_one(mistral_like, CHAT)
    assert trained_runs(mistral_like, ids, labels) == ["Blue.<|im_end|>", "Green.<|im_end|>"]


def test_tokenizers_without_a_chat_template_get_chatml(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    ids, labels = tokenize_one(plain, CHAT)
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nYou answer in one word.<|im_end|>")
    assert trained_runs(plain, ids, labels) == ["Blue.<|im_end|>\n", "Green.<|im_end|>\n"]


def test_conversations_a_template_refuses_are_reported_with_their_row(tokenizer):
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(DatasetError, match="row 2: the model's chat template refuses this conversation"):
        Tokenization(strict, max_length=64)([{"instruction": "Hi.", "output": "Hello."}, CHAT])


def test_long_rows_are_truncated_and_counted_and_rows_left_without_answer_skipped(tokenizer):
    long_answer = {"instruction": "Count.", "output": " ".join(["one two three"] * 40)}
    long_prompt = {"instruction": " ".join(["four five six"] * 40), "output": "Done."}
    short = {"instruction": "Say hi.", "output": "Hi."}
    examples = Tokenization(tokenizer, max_length=48)([long_answer, long_prompt, short])
    assert examples.truncated == 2
    assert examples.dropped == 1  # the long prompt leaves no room for its answer
    assert len(examples) == 2
    assert max(len(ids) for ids in examples.input_ids) == 48


def test_classification_rows_get_class_indices(tokenizer):
    rows = [{"text": "warm sun", "label": "hot"}, {"text": "snow", "label": "cold"}]
    examples = Tokenization(tokenizer, max_length=32, class_names=["cold", "hot"])(rows)
    assert examples.task == Task.classification
    assert examples.labels == [1, 0]


def test_unreadable_rows_are_reported_with_their_line(tmp_path, write_jsonl):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(DatasetError, match="bad.jsonl, line 2: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(DatasetError, match="line 1: a row must be"):
        read_jsonl(write_jsonl(tmp_path / "odd.jsonl", [{"question": "?"}]))
    with pytest.raises(DatasetError, match="has no rows"):
        read_jsonl(write_jsonl(tmp_path / "empty.jsonl", []))


def test_eval_split_is_seeded_and_disjoint(tokenizer):
    rows = [{"text": f"row number {i}"} for i in range(20)]
    examples = Tokenization(tokenizer, max_length=32)(rows)
    train, held_out = split_for_eval(examples, 0.2, seed=3)
    again, _ = split_for_eval(examples, 0.2, seed=3)
    assert len(held_out) == 4 and len(train) == 16
    assert train.input_ids == again.input_ids
    assert not {tuple(ids) for ids in train.input_ids} & {tuple(ids) for ids in held_out.input_ids}


# -- batches ---------------------------------------------------------------------------

ROWS = [
    CHAT,
    {"instruction": "Name three animals.", "output": "Dog, cat and bird."},
    {"text": "A long story about a river that runs north through the old city every morning."},
    {"prompt": "Seven times six is", "completion": " forty two."},
    {"instruction": "Say hello.", "output": "Hello!"},
    {"text": "Short text."},
]


def summed_loss(logits, labels):
    """Next-token loss of one example, summed over its trained tokens."""
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")


def alone(model, input_ids, labels):
    """Logits and summed loss of one example run by itself."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0]
    return logits, summed_loss(logits, torch.tensor(labels))


@pytest.fixture(scope="module")
def tiny_model(models_dir, tokenizer):
    """Loaded the way a training run loads it."""
    spec = TrainingSpec(base_model="tiny-llama", method="full")
    model = load_model(
        spec, plan_device(spec), models_dir / "tiny-llama", task=Task.causal_lm, pad_token_id=tokenizer.pad_token_id
    )
    return model.eval()


def test_packed_examples_never_see_each_other(tokenizer, tiny_model):
    examples = Tokenization(tokenizer, max_length=96)(ROWS)
    packed = pack(examples, 96).with_format("numpy")
    rows = [packed[i] for i in range(len(packed))]
    assert any(len(row["seq_lengths"]) >= 2 for row in rows), "the test needs rows holding several examples"
    batch = BatchCollator(pad_token_id=tokenizer.pad_token_id)(rows)
    assert batch.pop(REAL_TOKENS_KEY) == examples.tokens
    assert "attention_mask" not in batch
    with torch.no_grad():
        out = tiny_model(**batch)

    placements = []  # (batch row, first position, example index)
    for r, row in enumerate(rows):
        start = 0
        for length in row["seq_lengths"]:
            ids = list(row["input_ids"][start : start + length])
            placements.append((r, start, examples.input_ids.index(ids)))
            start += length
    assert sorted(i for _, _, i in placements) == list(range(len(examples)))
    total_loss = 0.0
    for r, start, i in placements:
        logits_alone, loss_alone = alone(tiny_model, examples.input_ids[i], examples.labels[i])
        span = slice(start, start + len(examples.input_ids[i]))
        torch.testing.assert_close(out.logits[r, span], logits_alone, atol=1e-4, rtol=1e-4)
        packed_loss = summed_loss(out.logits[r, span], batch["labels"][r, span])
        torch.testing.assert_close(packed_loss, loss_alone, atol=1e-3, rtol=1e-4)
        total_loss += loss_alone
    trained_tokens = sum(int((np.array(labels) != IGNORE_INDEX).sum()) for labels in examples.labels)
    torch.testing.assert_close(out.loss, total_loss / trained_tokens, atol=1e-5, rtol=1e-5)

    # The same batch with the KV cache on (transformers' default) lets examples attend to
    # each other: this is what training must avoid, and what this test would catch.
    with torch.no_grad():
        leaky = tiny_model(**batch, use_cache=True)
    assert (leaky.logits - out.logits).abs().max() > 1e-2


def test_padding_free_batches_are_one_unpadded_row_whose_examples_never_see_each_other(tokenizer, tiny_model):
    # What a variable-length kernel (flash-attention) is fed. On this CPU SDPA derives the same
    # document boundaries from the position ids, so the logits can be checked here.
    examples = Tokenization(tokenizer, max_length=48)(ROWS)
    packed = pack(examples, 48).with_format("numpy")
    rows = [packed[i] for i in range(len(packed))]
    assert len(rows) >= 2, "the test needs several packed rows to flatten"
    batch = BatchCollator(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)
    assert batch.pop(REAL_TOKENS_KEY) == examples.tokens
    assert batch["input_ids"].shape == (1, examples.tokens), "one row, not a single pad token"
    assert "attention_mask" not in batch
    with torch.no_grad():
        out = tiny_model(**batch)
    flat = batch["input_ids"][0].tolist()
    start = 0
    for lengths in (row["seq_lengths"] for row in rows):
        for length in lengths:
            i = examples.input_ids.index(flat[start : start + length])
            logits_alone, loss_alone = alone(tiny_model, examples.input_ids[i], examples.labels[i])
            span = slice(start, start + length)
            torch.testing.assert_close(out.logits[0, span], logits_alone, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(
                summed_loss(out.logits[0, span], batch["labels"][0, span]), loss_alone, atol=1e-3, rtol=1e-4
            )
            start += length
    assert start == examples.tokens


@pytest.mark.parametrize(
    ("packing", "task", "attention", "packed", "padding_free"),
    [
        (Packing.auto, Task.causal_lm, "sdpa", False, False),
        (Packing.auto, Task.causal_lm, "flash_attention_2", True, True),
        (Packing.on, Task.causal_lm, "sdpa", True, False),
        (Packing.on, Task.causal_lm, "flash_attention_2", True, True),
        (Packing.off, Task.causal_lm, "flash_attention_2", False, False),
        (Packing.auto, Task.classification, "flash_attention_2", False, False),
        (Packing.on, Task.classification, "sdpa", False, False),
    ],
)
def test_auto_packs_only_where_the_kernel_keeps_packed_examples_apart_without_a_mask(
    packing, task, attention, packed, padding_free
):
    batching = choose_batching(
        packing, task=task, attention=attention, varlen_attention=attention.startswith("flash_attention")
    )
    assert (batching.packed, batching.padding_free) == (packed, padding_free)
    assert batching.reason in batching.describe()


def test_padded_batches_give_each_example_its_own_loss(tokenizer, tiny_model):
    examples = Tokenization(tokenizer, max_length=96)(ROWS)
    dataset = examples.to_dataset().with_format("numpy")
    batch = BatchCollator(pad_token_id=tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    assert batch.pop(REAL_TOKENS_KEY) == examples.tokens
    assert batch["input_ids"].shape[1] % 8 == 0
    with torch.no_grad():
        out = tiny_model(**batch)
    for r, (ids, labels) in enumerate(zip(examples.input_ids, examples.labels)):
        logits_alone, loss_alone = alone(tiny_model, ids, labels)
        torch.testing.assert_close(out.logits[r, : len(ids)], logits_alone, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(summed_loss(out.logits[r, : len(ids)], batch["labels"][r, : len(ids)]), loss_alone)


# -- text documents: never truncated, laid end to end ----------------------------------------

STORY = {"text": " ".join(f"The river runs north past mill number {i} in the morning." for i in range(12))}


def test_text_rows_are_never_truncated_but_conversations_are(tokenizer):
    long_answer = {"instruction": "Count.", "output": " ".join(["one two three"] * 40)}
    examples = Tokenization(tokenizer, max_length=48)([STORY, long_answer])
    whole_story = tokenizer(STORY["text"])["input_ids"] + [tokenizer.eos_token_id]
    assert examples.input_ids[0] == whole_story and len(whole_story) > 48
    assert examples.truncated == 1 and len(examples.input_ids[1]) == 48
    assert examples.truncated_tokens == len(tokenize_one(tokenizer, long_answer, max_length=1000)[0]) - 48


def test_packing_lays_text_end_to_end_and_cuts_it_into_full_rows_losing_no_token(tokenizer, tiny_model):
    rows = [STORY, {"text": "Short text."}, CHAT, {"text": STORY["text"].upper()}]
    examples = Tokenization(tokenizer, max_length=48)(rows)
    packed = pack(examples, 48).with_format("numpy")
    packed_rows = [packed[i] for i in range(len(packed))]
    assert sum(len(row["input_ids"]) for row in packed_rows) == examples.tokens
    documents = [ids for ids, document in zip(examples.input_ids, examples.documents) if document]
    full = packed_rows[: sum(len(ids) for ids in documents) // 48]
    assert {len(row["input_ids"]) for row in full} == {48}  # the text fills whole rows
    laid = [int(token) for row in full for token in row["input_ids"]]
    assert laid == [token for ids in documents for token in ids][: len(laid)]  # in order, nothing skipped

    # A document that runs over into the next row is a document of its own there: its piece is
    # computed as if run alone, and its first token is not predicted from the row before.
    batch = BatchCollator(pad_token_id=tokenizer.pad_token_id)(packed_rows)
    batch.pop(REAL_TOKENS_KEY)
    with torch.no_grad():
        out = tiny_model(**batch)
    for r, row in enumerate(packed_rows):
        start = 0
        for length in row["seq_lengths"]:
            ids, labels = list(row["input_ids"][start : start + length]), list(row["labels"][start : start + length])
            assert labels[0] == IGNORE_INDEX
            logits_alone, _ = alone(tiny_model, ids, labels)
            torch.testing.assert_close(out.logits[r, start : start + length], logits_alone, atol=1e-4, rtol=1e-4)
            start += length


def test_without_packing_long_text_rows_are_cut_into_pieces(tokenizer):
    examples = Tokenization(tokenizer, max_length=48)([STORY, CHAT])
    pieces = split_documents(examples, 48)
    assert sum(len(ids) for ids in pieces.input_ids) == examples.tokens
    assert max(len(ids) for ids in pieces.input_ids) == 48
    assert [token for ids in pieces.input_ids[:-1] for token in ids] == examples.input_ids[0]
    assert pieces.input_ids[-1] == examples.input_ids[1]  # the conversation stays one example
