"""Property-based tests (hypothesis) of what reads untrusted input: the data loaders, the config parser
and the tool-call parser. Whatever the input, the answer is a result or one clear error line
(`UserError`, one line), never a traceback, and nothing is written."""

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo.config import DataConfig, SFTConfig, TrainConfig, load_config
from grpo.data import load_task
from grpo.errors import UserError
from grpo.models.tiny import build_tokenizer
from grpo.tools.parser import ToolCall, parse_json_tags

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOKENIZER = build_tokenizer()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
rows = st.dictionaries(st.sampled_from(["prompt", "answer", "question", "x", ""]) | st.text(max_size=6),
                       json_values,
                       max_size=4)


def one_line(e: UserError) -> str:
    text = str(e)
    assert text and "\n" not in text.strip() and "Traceback" not in text, text
    return text


def load(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        task = load_task(DataConfig(source=str(path), max_prompt_length=10_000), TOKENIZER)
        assert task.train and all(isinstance(r["prompt"], str) for r in task.train)
    except UserError as e:
        assert str(path.name) in one_line(e) or "data.source" in str(e)  # the error names the file
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written beside it


@FUZZ
@given(st.lists(rows | json_values, max_size=5))
def test_any_jsonl_rows_load_or_stop_with_one_line_naming_the_file(tmp_path, items):
    load(tmp_path, "d.jsonl", "".join(json.dumps(x) + "\n" for x in items).encode())


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_jsonl_json_or_csv_load_or_stop_with_one_line(tmp_path, content):
    for name in ("d.jsonl", "d.json", "d.csv"):
        load(tmp_path, name, content)


keys = st.sampled_from(["grpo.G", "grpo.beta", "train.steps", "train.micro_batch_size",
                        "sampling.temperature",
                        "model.lora", "rewards.functions", "data.source", "optim.betas", "algorithm", "grpo",
                        "train.nope", "", "a.b.c", "sft.max_steps"])
values = st.text(string.printable,
                 max_size=20) | st.sampled_from(["[1, 2", "{a: }", "-1", "0", "1e999", "null",
                                                                    "[{fn: nope}]", "true", "'x'", "{r: 4}"])


@FUZZ
@given(st.lists(st.tuples(keys, values).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=15),
                max_size=4))
def test_any_overrides_give_a_config_or_one_line(tmp_path, overrides):
    for cls in (TrainConfig, SFTConfig):
        try:
            load_config(cls, None,
                        [*overrides, f"train.output_dir={tmp_path / 'never'}"] if cls is TrainConfig
                        else overrides)
        except UserError as e:
            one_line(e)
    assert not (tmp_path / "never").exists()


@FUZZ
@given(st.text(string.printable, max_size=120))
def test_any_yaml_file_gives_a_config_or_one_line_naming_it(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    try:
        load_config(TrainConfig, path)
    except UserError as e:
        assert "c.yaml" in one_line(e)


fragments = st.sampled_from(['<tool_call>', '</tool_call>', '{"name": "calculator"', ', "arguments": ',
                             '{"x": 1}',
                             '"expression"', '}', '{', '"', '[1]', 'null', '\\u00', ' ', 'text'])


@FUZZ
@given(st.lists(fragments | st.text(max_size=8), max_size=12).map("".join))
def test_any_policy_text_parses_into_calls_or_error_calls_never_an_exception(text):
    calls = parse_json_tags(text)
    if "<tool_call>" not in text:
        assert calls == []
    for call in calls:
        assert isinstance(call, ToolCall) and isinstance(call.name, str) and isinstance(call.arguments, dict)
        if call.error is not None:  # an unreadable call becomes an error observation, never an exception
            assert call.error.startswith("malformed tool call: ") and "\n" not in call.error
            assert call.arguments == {}


@pytest.mark.parametrize("text, errors", [
    ('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call> then <tool_call>{"name"',
     [None, "no closing"]),
    ('<tool_call>[1]</tool_call><tool_call>{"name": "f", "arguments": 3}</tool_call>',
     ["expected", "must be"]),
    ("no call", []),
])
def test_the_parser_on_worked_examples(text, errors):
    calls = parse_json_tags(text)
    assert len(calls) == len(errors)
    for call, error in zip(calls, errors):
        assert (call.error is None) if error is None else (error in call.error)
