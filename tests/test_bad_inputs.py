"""Nothing let in: every malformed config and dataset stops `grpo` with one clear line, and writes nothing.

Each case runs the real CLI in-process, `main(["train", "-q", ...])`, and checks the guarantee of
`docs/reliability.md` ("Bad input"):

    exit status 2;  stderr is exactly one line, `grpo: error: ...`, naming the problem (the file, and
    where it applies the line and the field);  no "Traceback" anywhere;  the output directory was not
    created (a run is either started whole or not at all).

The corpus: `fixtures/bad_configs/*.yaml` (each file's `# expect:` comments hold the fragments its
error line must contain), `fixtures/bad/*` and `fixtures/bad_configs/data/*` (expected fragments in
BAD_DATA below; a new file without an entry fails `test_every_bad_dataset_has_an_expectation`),
and inputs too big to commit (5 MB lines, a corrupt saved dataset) built in tmp_path by GENERATED.
To be sure nothing can train for minutes if a case stops failing, reaching the step that creates the
run directory raises at once (`_no_run_directory`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from grpo.commands.cli import main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BAD_CONFIGS = sorted((FIXTURES / "bad_configs").glob("*.yaml"))
BAD_DATA_DIRS = [FIXTURES / "bad", FIXTURES / "bad_configs" / "data"]
MAX_LINE = 1000  # characters: a 5 MB input must not become a 5 MB message

# file (relative to tests/fixtures) -> fragments its error line must contain
BAD_DATA = {
    "bad/bad_message.jsonl": ["bad_message.jsonl:1:", "field 'prompt'", "message 0", "'role' and 'content'"],
    "bad/broken_json.jsonl": ["broken_json.jsonl:3:", "invalid JSON"],
    "bad/content_not_string.jsonl": ["content_not_string.jsonl:1:", "message 0", "'content'"],
    "bad/empty.jsonl": ["empty.jsonl:", "the dataset is empty"],
    "bad/garbage.parquet": ["garbage.parquet:", "not a readable Parquet file"],
    "bad/missing_answer.jsonl": ["missing_answer.jsonl:2:", "no 'answer' column (answer_column)"],
    "bad/missing_column.jsonl": ["missing_column.jsonl:", "no column 'prompt' (prompt_column)",
                                 "question, solution"],
    "bad/missing_field.csv": ["missing_field.csv:3:", "fewer fields than the header", "'answer'"],
    "bad/not_an_object.jsonl": ["not_an_object.jsonl:2:", "expected a JSON object", "got a list"],
    "bad/not_utf8.jsonl": ["not_utf8.jsonl:2:", "not valid UTF-8", "byte 0xfb"],
    "bad/number.json": ["number.json:", "expected a JSON list of objects, got a number"],
    "bad/prompt_is_object.jsonl": ["prompt_is_object.jsonl:1:", "field 'prompt'", "got an object"],
    "bad/text_after_quote.csv": ["text_after_quote.csv:3:", "invalid CSV"],
    "bad/unclosed_quote.csv": ["unclosed_quote.csv:2:", "invalid CSV", "unexpected end of data"],
    "bad/wrong_prompt_type.jsonl": ["wrong_prompt_type.jsonl:2:", "field 'prompt'", "got a number 17"],
    "bad/zero_bytes.csv": ["zero_bytes.csv:", "the dataset is empty"],
    "bad/zero_bytes.parquet": ["zero_bytes.parquet:", "not a readable Parquet file", "0 bytes"],
    "bad_configs/data/empty_messages.jsonl": ["empty_messages.jsonl:1:", "field 'prompt'", "non-empty list"],
    "bad_configs/data/extra_csv_field.csv": ["extra_csv_field.csv:3:", "more fields than the header"],
    "bad_configs/data/header_only.csv": ["header_only.csv:", "the dataset is empty"],
    "bad_configs/data/list_with_a_string.json": ["list_with_a_string.json:", "item 1", "is a string"],
    "bad_configs/data/not_utf8.csv": ["not_utf8.csv:3:", "not valid UTF-8"],
    "bad_configs/data/null_prompt.jsonl": ["null_prompt.jsonl:2:", "field 'prompt'", "got null"],
    "bad_configs/data/object_without_rows.json": ["object_without_rows.json:", "set split",
                                                  "keys with lists: none"],
    "bad_configs/data/reserved_column.jsonl": ["reserved_column.jsonl", "column 'completions' clashes"],
    "bad_configs/data/truncated_last_line.jsonl": ["truncated_last_line.jsonl:2:", "invalid JSON"],
    "bad_configs/data/truncated_utf8_tail.jsonl": ["truncated_utf8_tail.jsonl:3:", "not valid UTF-8"],
    "bad_configs/data/wrong_extension.txt": ["wrong_extension.txt:", "cannot tell the format", "'.txt'"],
    "bad_configs/data/zero_bytes.json": ["zero_bytes.json:1:", "invalid JSON"],
}


def _huge_broken_line(tmp: Path) -> Path:  # a 5 MB line whose string never closes
    p = tmp / "huge_line.jsonl"
    p.write_text('{"prompt": "What is 1 + 1?", "answer": "2"}\n{"prompt": "' + "x" * 5_000_000 + "\n")
    return p


def _huge_column_name(tmp: Path) -> Path:  # the message lists the columns: a 5 MB name must be cut
    p = tmp / "huge_column.jsonl"
    p.write_text(json.dumps({"q" * 5_000_000: "What is 1 + 1?", "answer": "2"}) + "\n")
    return p


def _huge_prompt(tmp: Path) -> Path:  # 200 KB: tokenising 5 MB takes ~20 s on 2 cores
    p = tmp / "huge_prompt.jsonl"
    p.write_text(json.dumps({"prompt": "What is 1 + 1? " * 13_000, "answer": "2"}) + "\n")
    return p


def _directory_without_data(tmp: Path) -> Path:
    (tmp / "no_data" / "notes").mkdir(parents=True)
    (tmp / "no_data" / "readme.txt").write_text("rows go here\n")
    return tmp / "no_data"


def _corrupt_saved_dataset(tmp: Path) -> Path:  # a save_to_disk directory whose Arrow file was overwritten
    p = tmp / "saved"
    p.mkdir()
    (p / "dataset_info.json").write_text("{}")
    (p / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')
    (p / "data-00000-of-00001.arrow").write_bytes(b"garbage")
    return p


def _missing_file(tmp: Path) -> Path:
    return tmp / "nowhere.jsonl"


GENERATED = {  # name -> (builder, fragments)
    "huge_broken_line": (_huge_broken_line, ["huge_line.jsonl:2:", "invalid JSON", "Unterminated string"]),
    "huge_column_name": (_huge_column_name, ["huge_column.jsonl:", "no column 'prompt'", "qqq...", "answer"]),
    "huge_prompt": (_huge_prompt, ["huge_prompt.jsonl:", "row 0", "longer than max_prompt_length=256"]),
    "directory_without_data": (_directory_without_data, ["no_data:", "is a directory but not a dataset"]),
    "corrupt_saved_dataset": (_corrupt_saved_dataset, ["saved:", "cannot load the saved dataset"]),
    "missing_file": (_missing_file, ["dataset not found:", "nowhere.jsonl"]),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A saved 1-layer tiny model: loads in ~0.1 s, and with model.path=DIR the CLI prints no 'tiny' note."""
    from grpo.models.tiny import TinyConfig, build_tiny

    return str(build_tiny(tmp_path_factory.mktemp("tiny"), TinyConfig(hidden_size=32, num_layers=1)))


@pytest.fixture(autouse=True)
def _no_run_directory(monkeypatch):
    """Fail fast, writing nothing, if a bad input gets as far as creating the run directory."""
    import grpo.train.run
    import grpo.train.sft

    def refuse(path, cfg, overwrite=False):
        raise AssertionError(f"bad input got as far as creating the run directory {path}")

    monkeypatch.setattr(grpo.train.run, "prepare_output_dir", refuse)
    monkeypatch.setattr(grpo.train.sft, "prepare_output_dir", refuse)
    monkeypatch.chdir(ROOT)  # the configs name their data files relative to the repository


def run_cli(argv: list[str], capfd) -> str:
    """Run `grpo ARGV` in-process; check the one-line-error contract; return that line."""
    rc = main(argv)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert rc == 2, f"exit status {rc}, stderr: {err[-2000:]}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err[:2000]}"
    assert lines[0].startswith("grpo: error: ")
    assert len(lines[0]) <= MAX_LINE, f"error line of {len(lines[0])} characters: {lines[0][:300]}..."
    return lines[0]


def assert_names(line: str, fragments: list[str]) -> None:
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"


def expectations(config: Path) -> list[str]:
    lines = config.read_bytes().decode("utf-8", errors="replace").splitlines()
    fragments = [ln.split("# expect:", 1)[1].strip() for ln in lines if ln.startswith("# expect:")]
    assert fragments, f"{config.name}: no '# expect: FRAGMENT' comment"
    return fragments


def speed_overrides(config: Path, tiny: str) -> list[str]:
    """The saved tiny model and a small built-in task, unless the fixture itself sets those sections."""
    try:
        given = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        given = None
    given = given if isinstance(given, dict) else {}
    extra = [] if "model" in given else [f"model.path={tiny}"]
    return extra + ([] if "data" in given else ["data.num_train=64", "data.num_heldout=8"])


# ---------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("config", BAD_CONFIGS, ids=lambda p: p.stem)
def test_bad_config_is_one_error_line(config, tiny, tmp_path, capfd):
    line = run_cli(["train", "-q", "--config", str(config.relative_to(ROOT)),
                    f"train.output_dir={tmp_path}/run",
                    *speed_overrides(config, tiny)], capfd)
    assert_names(line, expectations(config))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, fragments", [
    (["grpo.G=eight"], ["grpo.G: expected an integer, got 'eight'"]),
    (["train.stpes=3"], ["unknown config key train.stpes"]),
    (["grpo.beta"], ["override 'grpo.beta' is not of the form key=value"]),
    (["train.steps.max=3"], ["train.steps: expected an integer, got {'max': 3}"]),
    (["train.prompts_per_step=-1"], ["train.prompts_per_step must be a positive integer, got -1"]),
    (["optim.lr=[1, 2]"], ["optim.lr: expected a number, got [1, 2]"]),
    (["sampling.min_new_tokens=40"],
     ["sampling.min_new_tokens (40) must be at most sampling.max_new_tokens (32)"]),
    (["rollout.dtype=float16"],
     ["rollout.dtype: expected one of 'auto', 'float32', 'bfloat16', got 'float16'"]),
], ids=["wrong_type", "unknown_key", "no_equals", "key_under_a_value", "negative", "list_for_number",
        "min_over_max", "sampler_dtype"])
def test_bad_override_is_one_error_line(overrides, fragments, tmp_path, capfd):
    line = run_cli(["train", "-q", f"train.output_dir={tmp_path}/run", *overrides], capfd)
    assert_names(line, fragments)
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path, capfd):
    line = run_cli(["train", "-q", "--config", str(tmp_path / "nope.yaml"),
                    f"train.output_dir={tmp_path}/run"], capfd)
    assert_names(line, ["config file not found:", "nope.yaml"])
    assert not (tmp_path / "run").exists()


def test_huge_config_line(tmp_path, capfd):
    """A 1 MB YAML value (5 MB takes PyYAML's pure-Python parser ~3 s; the message is cut the same way)."""
    config = tmp_path / "huge.yaml"
    config.write_text("grpo:\n  G: " + "9" * 1_000_000 + "x\n")
    line = run_cli(["train", "-q", "--config", str(config), f"train.output_dir={tmp_path}/run"], capfd)
    assert_names(line, ["huge.yaml:2: grpo.G: expected an integer", "(1000003 characters)"])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------
# Datasets


def train_on(source: Path | str, tiny: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "-q", f"data.source={source}", f"model.path={tiny}", f"train.output_dir={tmp_path}/run",
            "train.steps=1", "train.prompts_per_step=2", "train.micro_batch_size=16", *extra]


def test_every_bad_dataset_has_an_expectation():
    files = {str(p.relative_to(FIXTURES)) for d in BAD_DATA_DIRS for p in d.iterdir()}
    assert files == set(BAD_DATA)


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_dataset_is_one_error_line(name, tiny, tmp_path, capfd):
    line = run_cli(train_on(FIXTURES / name, tiny, tmp_path), capfd)
    assert_names(line, BAD_DATA[name])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_bad_dataset_is_one_error_line(name, tiny, tmp_path, capfd):
    build, fragments = GENERATED[name]
    line = run_cli(train_on(build(tmp_path), tiny, tmp_path), capfd)
    assert_names(line, fragments)
    assert not (tmp_path / "run").exists()


def test_bad_heldout_set_is_named(tiny, tmp_path, capfd):
    line = run_cli(train_on(FIXTURES / "gsm8k_style.jsonl", tiny, tmp_path, "data.prompt_column=question",
                            f"data.heldout_source={FIXTURES / 'bad' / 'broken_json.jsonl'}"), capfd)
    assert_names(line, ["broken_json.jsonl:3:", "invalid JSON"])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------
# The same contract through `grpo sft` and `grpo eval`


@pytest.mark.parametrize("name", ["bad/broken_json.jsonl", "bad/missing_answer.jsonl", "bad/not_utf8.jsonl"])
def test_sft_bad_dataset_writes_nothing(name, tiny, tmp_path, capfd):
    line = run_cli(["sft", "-q", f"data.source={FIXTURES / name}", f"model.path={tiny}",
                    f"sft.output_dir={tmp_path}/run"], capfd)
    assert_names(line, BAD_DATA[name])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,expected", [
    ("sft.batch_size=0", "sft.batch_size must be a positive integer, got 0"),
    ("sft.micro_batch_size=0", "sft.micro_batch_size must be a positive integer (or null), got 0"),
    ("sft.micro_batch_tokens=-8", "sft.micro_batch_tokens must be a positive integer (or null), got -8"),
])
def test_sft_bad_config(override, expected, tmp_path, capfd):
    line = run_cli(["sft", "-q", f"sft.output_dir={tmp_path}/run", override], capfd)
    assert_names(line, [expected])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["bad/broken_json.jsonl", "bad/wrong_prompt_type.jsonl",
                                  "bad_configs/data/zero_bytes.json"])
def test_eval_bad_dataset_writes_nothing(name, tiny, tmp_path, capfd):
    out = tmp_path / "out" / "eval.json"
    line = run_cli(["eval", "--model", tiny, "--data", str(FIXTURES / name), "--out", str(out)], capfd)
    assert_names(line, BAD_DATA[name])
    assert not out.parent.exists()
