"""Dataset loading (every format, column mapping, every bad-input message) and prompt templates."""

import csv
import json
import re
from pathlib import Path

import pytest

from grpo.data.loading import load_rows
from grpo.data.templates import R1_TEMPLATE, check_prompt_lengths, check_template, render_prompt
from grpo.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures"
GSM8K = FIXTURES / "gsm8k_style.jsonl"
MATH = FIXTURES / "math_style.jsonl"
BAD = FIXTURES / "bad"

ROWS = [
    {"question": "What is 2 + 3?", "answer": "#### 5", "level": 1},
    {"question": "What is 10 - 4?", "answer": "#### 6", "level": 2},
]


def expected_rows():
    return [{"prompt": r["question"], "answer": r["answer"], "level": r["level"]} for r in ROWS]


# ---- formats ------------------------------------------------------------------------------------


def test_gsm8k_fixture():
    rows = load_rows(GSM8K, prompt_column="question")
    assert len(rows) == 16 and all(set(r) == {"prompt", "answer"} for r in rows)
    assert rows[3]["answer"].endswith("#### 1,248")


def test_math_fixture_with_answer_column_solution():
    rows = load_rows(MATH, prompt_column="problem", answer_column="solution")
    assert len(rows) == 16 and set(rows[0]) == {"prompt", "answer", "type"}
    assert "\\boxed{\\frac{3}{4}}" in rows[0]["answer"]


def test_jsonl_json_csv_parquet_give_the_same_rows(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n")  # blank line ok
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    (tmp_path / "splits.json").write_text(json.dumps({"train": ROWS, "test": ROWS[:1]}))
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["question", "answer", "level"])
        writer.writeheader()
        writer.writerows(ROWS)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")

    for name in ["d.jsonl", "d.json", "d.parquet"]:
        assert load_rows(tmp_path / name, prompt_column="question") == expected_rows(), name
    assert load_rows(tmp_path / "splits.json", split="test", prompt_column="question") == expected_rows()[:1]
    # CSV cells are strings.
    csv_rows = load_rows(tmp_path / "d.csv", prompt_column="question")
    assert csv_rows == [dict(r, level=str(r["level"])) for r in expected_rows()]


def test_file_format_override_and_jsonl_named_json(tmp_path):
    (tmp_path / "data.txt").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_rows(tmp_path / "data.txt", prompt_column="question", file_format="jsonl") == expected_rows()
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert load_rows(tmp_path / "lines.json", prompt_column="question") == expected_rows()


def test_saved_datasets_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = datasets.Dataset.from_list(ROWS)
    single.save_to_disk(str(tmp_path / "single"))
    assert load_rows(tmp_path / "single", prompt_column="question") == expected_rows()

    both = datasets.DatasetDict({"train": single, "test": datasets.Dataset.from_list(ROWS[1:])})
    both.save_to_disk(str(tmp_path / "dict"))
    assert load_rows(tmp_path / "dict", split="test", prompt_column="question") == expected_rows()[1:]
    with pytest.raises(UserError, match=r"dict: has several splits; set split \(splits: train, test\)"):
        load_rows(tmp_path / "dict", prompt_column="question")
    with pytest.raises(UserError, match=r"dict: has no split 'valid' \(splits: train, test\)"):
        load_rows(tmp_path / "dict", split="valid", prompt_column="question")
    with pytest.raises(UserError, match="single Dataset with no splits"):
        load_rows(tmp_path / "single", split="train", prompt_column="question")


def test_no_answer_column_and_chat_prompts(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": chat}) + "\n")
    rows = load_rows(tmp_path / "chat.jsonl", prompt_column="messages", answer_column=None)
    assert rows == [{"prompt": chat}]


# ---- bad input ----------------------------------------------------------------------------------


def test_file_not_found():
    with pytest.raises(UserError, match=r"dataset not found: no/such/file.jsonl \(expected a .jsonl"):
        load_rows("no/such/file.jsonl")


def test_malformed_json_names_file_and_line():
    with pytest.raises(UserError, match=r"bad/broken_json\.jsonl:3: invalid JSON \(Expecting ',' delimiter"):
        load_rows(BAD / "broken_json.jsonl")


def test_malformed_json_document(tmp_path):
    (tmp_path / "d.json").write_text('[\n  {"prompt": "a"},\n  {"prompt": "b",}\n]')
    with pytest.raises(UserError, match=r"d\.json:3: invalid JSON \(Expecting property name"):
        load_rows(tmp_path / "d.json")


def test_jsonl_line_that_is_not_an_object():
    with pytest.raises(UserError, match=r"not_an_object\.jsonl:2: expected a JSON object .* got a list"):
        load_rows(BAD / "not_an_object.jsonl")


def test_missing_column_lists_the_columns():
    with pytest.raises(
        UserError, match=r"no column 'prompt' \(prompt_column\); the columns are: question, solution"
    ):
        load_rows(BAD / "missing_column.jsonl")
    with pytest.raises(
        UserError, match=r"no column 'answer' \(answer_column\); the columns are: question, solution"
    ):
        load_rows(BAD / "missing_column.jsonl", prompt_column="question")


def test_column_missing_from_one_row(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b"}\n')
    with pytest.raises(UserError, match=r"d\.jsonl:2: the row has no 'answer' column \(answer_column\)"):
        load_rows(tmp_path / "d.jsonl")


def test_empty_dataset(tmp_path):
    with pytest.raises(UserError, match=r"empty\.jsonl: the dataset is empty \(no rows\)"):
        load_rows(BAD / "empty.jsonl")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(UserError, match="the dataset is empty"):
        load_rows(tmp_path / "empty.json")
    (tmp_path / "header_only.csv").write_text("prompt,answer\n")
    with pytest.raises(UserError, match="the dataset is empty"):
        load_rows(tmp_path / "header_only.csv")


def test_non_utf8_names_line_and_byte_offset():
    offset = (BAD / "not_utf8.jsonl").read_bytes().index(b"\xfb")
    expected = (
        f"not_utf8.jsonl:2: not valid UTF-8 (byte 0xfb at byte offset {offset}); re-save the file as UTF-8"
    )
    with pytest.raises(UserError, match=re.escape(expected)):
        load_rows(BAD / "not_utf8.jsonl")


def test_wrong_prompt_type_names_line_and_field():
    with pytest.raises(
        UserError,
        match=r"wrong_prompt_type\.jsonl:2: field 'prompt': a prompt must be a string or a "
        r"non-empty list of \{role, content\} messages; got a number 17",
    ):
        load_rows(BAD / "wrong_prompt_type.jsonl")
    with pytest.raises(
        UserError,
        match=r"bad_message\.jsonl:1: field 'prompt': message 0 must be an object with "
        r"string 'role' and 'content'",
    ):
        load_rows(BAD / "bad_message.jsonl")


def test_wrong_prompt_type_in_parquet_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"q": "fine", "answer": "1"}, {"q": None, "answer": "2"}]),
        tmp_path / "d.parquet",
    )
    with pytest.raises(UserError, match=r"d\.parquet: row 1: field 'q': a prompt must be .* got null"):
        load_rows(tmp_path / "d.parquet", prompt_column="q")


def test_other_bad_inputs(tmp_path):
    (tmp_path / "d.tsv").write_text("a\tb\n")
    with pytest.raises(
        UserError, match=r"extension '\.tsv'; use \.jsonl, \.json, \.parquet or \.csv, or set file_format"
    ):
        load_rows(tmp_path / "d.tsv")
    (tmp_path / "d.parquet").write_text("not parquet at all")
    with pytest.raises(UserError, match=r"d\.parquet: not a readable Parquet file"):
        load_rows(tmp_path / "d.parquet")
    (tmp_path / "d.csv").write_text("prompt,answer\nhello,1,extra\n")
    with pytest.raises(UserError, match=r"d\.csv:2: more fields than the header has columns"):
        load_rows(tmp_path / "d.csv")
    (tmp_path / "both.jsonl").write_text('{"question": "q", "prompt": "p", "answer": "1"}\n')
    with pytest.raises(
        UserError, match="prompt_column='question' would be renamed to 'prompt', but a column 'prompt'"
    ):
        load_rows(tmp_path / "both.jsonl", prompt_column="question")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(UserError, match="not a dataset saved with datasets' save_to_disk"):
        load_rows(tmp_path / "plain_dir")
    with pytest.raises(UserError, match="split='train' only applies to saved datasets and JSON object files"):
        load_rows(GSM8K, split="train", prompt_column="question")


# ---- templates and prompt lengths ---------------------------------------------------------------


class ChatTokenizer:
    """Stands in for a HF tokenizer: records the apply_chat_template call."""

    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_render_plain_prompts():
    assert render_prompt("What is 2+3?") == "What is 2+3?"
    text = render_prompt("What is $\\frac{1}{2}$ of 4?", template=R1_TEMPLATE)
    assert text.endswith("User: What is $\\frac{1}{2}$ of 4?\nAssistant:")
    assert "<think> </think>" in text and "<answer> </answer>" in text


def test_render_chat_prompts_through_the_chat_template():
    chat = [{"role": "user", "content": "2+2?"}]
    assert render_prompt(chat, ChatTokenizer(), template=R1_TEMPLATE) == "<user>2+2?<assistant>"


def test_render_chat_prompt_with_a_real_tokenizer():
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models

    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, "[UNK]"))
    )
    with pytest.raises(UserError, match="the tokenizer has no chat template"):
        render_prompt([{"role": "user", "content": "hi"}], tok)
    tok.chat_template = ChatTokenizer.chat_template + "{% if add_generation_prompt %}<assistant>{% endif %}"
    assert render_prompt([{"role": "user", "content": "hi"}], tok) == "<user>hi<assistant>"


def test_template_errors():
    with pytest.raises(UserError, match=r"placeholder\(s\) \{question\}; only \{prompt\} is filled in"):
        render_prompt("x", template="Q: {question}")
    with pytest.raises(UserError, match=r"no \{prompt\} placeholder"):
        check_template("Answer the question.")
    with pytest.raises(UserError, match=r"literal braces as \{\{ and \}\}"):
        check_template("\\boxed{} {prompt}")
    check_template("Put it in \\boxed{{}}: {prompt}")  # doubled braces are fine


def test_check_prompt_lengths():
    lengths = [[1] * 5, [1] * 9, [1] * 8, 12]
    assert check_prompt_lengths(lengths, 8, policy="drop") == ([0, 2], 2)
    with pytest.raises(
        UserError,
        match=r"gsm8k\.jsonl: row 1 \(counting from 0\) has a prompt of 9 tokens, "
        r"longer than max_prompt_length=8",
    ):
        check_prompt_lengths(lengths, 8, policy="error", source_name="gsm8k.jsonl")
    with pytest.raises(UserError, match="all 2 prompts are longer than max_prompt_length=3"):
        check_prompt_lengths([[1] * 4, [1] * 5], 3, policy="drop")
    with pytest.raises(UserError, match="policy must be 'error' or 'drop'; got 'truncate'"):
        check_prompt_lengths(lengths, 8, policy="truncate")


def test_fixtures_are_valid_utf8_except_the_bad_one():
    for path in list(FIXTURES.glob("*.jsonl")) + list(BAD.glob("*.jsonl")):
        if path.name != "not_utf8.jsonl":
            path.read_text(encoding="utf-8")


def test_docstring_examples_of_the_templates_module():
    import doctest

    import grpo.data.templates

    failed, attempted = doctest.testmod(grpo.data.templates)
    assert attempted > 0 and failed == 0
