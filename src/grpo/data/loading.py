"""Load a prompt dataset from JSONL, JSON, Parquet, CSV, or a `datasets.save_to_disk` directory.

Every format becomes a list of row dicts in which the configured prompt column is renamed to
"prompt" and the answer column (if any) to "answer"; all other columns are kept, so reward functions
receive them as keyword arguments. A prompt is a string or a chat (a list of {"role", "content"}
messages).

Mistakes in the file are `UserError`s that say where: "data.jsonl:7: invalid JSON (...)", a missing
column lists the columns that exist, bytes that are not UTF-8 give the line and byte offset. JSON is
parsed with the standard library and CSV with `csv`; pyarrow and `datasets` load only for their
formats.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from grpo.errors import UserError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(
    source: str | Path,
    *,
    split: str | None = None,
    prompt_column: str = "prompt",
    answer_column: str | None = "answer",
    file_format: str | None = None,
) -> list[dict]:
    """Read `source` into rows with "prompt" (and "answer") columns; raise `UserError` on bad input.

    source: a .jsonl/.json/.parquet/.csv file (or any name with `file_format` set to one of
    jsonl, json, parquet, csv), or a directory written by `datasets` `save_to_disk`. `split` picks
    a split of a saved DatasetDict, or the list under that key of a JSON object file.

    >>> rows = load_rows("tests/fixtures/gsm8k_style.jsonl", prompt_column="question")  # doctest: +SKIP
    >>> sorted(rows[0])                                                                 # doctest: +SKIP
    ['answer', 'prompt']
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(
            f"dataset not found: {source} (expected a .jsonl, .json, .parquet or .csv file, or a directory "
            "saved with datasets' save_to_disk)"
        )
    if path.is_dir():
        rows, where = _read_saved_dataset(path, split), _row_location(path)
    else:
        fmt = _file_format(path, file_format)
        if split is not None and fmt != "json":
            raise UserError(f"{path}: split={split!r} only applies to saved datasets and JSON object files")
        if fmt == "parquet":
            rows, where = _read_parquet(path), _row_location(path)
        else:
            text = _read_utf8(path)
            if fmt == "jsonl":
                rows, lines = _parse_jsonl(path, text)
            elif fmt == "json":
                rows, lines = _parse_json(path, text, split)
            else:
                rows, lines = _parse_csv(path, text)
            where = _row_location(path, lines)
    if not rows:
        raise UserError(f"{path}: the dataset is empty (no rows)")
    return _map_columns(rows, where, str(path), prompt_column, answer_column)


def _file_format(path: Path, file_format: str | None) -> str:
    if file_format is not None:
        if file_format not in set(FORMATS.values()):
            raise UserError(f"file_format must be one of jsonl, json, parquet, csv; got {file_format!r}")
        return file_format
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; use .jsonl, .json, "
            ".parquet or .csv, or set file_format"
        )
    return fmt


def _row_location(path: Path, lines: list[int] | None = None):
    """Return f(row_index) -> "path:LINE" (text formats) or "path: row N" (others)."""
    if lines is None:
        return lambda i: f"{path}: row {i}"
    return lambda i: f"{path}:{lines[i]}"


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at byte offset {exc.start}); "
            "re-save the file as UTF-8"
        ) from None


def _parse_jsonl(path: Path, text: str) -> tuple[list[dict], list[int]]:
    rows, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise UserError(
                f'{path}:{lineno}: expected a JSON object ({{"column": value, ...}}) per line, got '
                f"{_json_type(row)}"
            )
        rows.append(row)
        lines.append(lineno)
    return rows, lines


def _parse_json(path: Path, text: str, split: str | None) -> tuple[list[dict], list[int] | None]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        if exc.lineno > 1 and _is_json_object(first):
            return _parse_jsonl(path, text)  # JSON Lines saved with a .json name
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict):
        lists = sorted(k for k, v in data.items() if isinstance(v, list))
        if split is None and len(lists) == 1:
            split = lists[0]
        if split not in lists:
            raise UserError(
                f"{path}: top-level JSON object; set split to the key holding the rows "
                f"(keys with lists: {', '.join(_cut(k) for k in lists[:20]) or 'none'})"
            )
        data = data[split]
    elif split is not None:
        raise UserError(f"{path}: split={split!r} given but the file holds a list, not an object of splits")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of objects, got {_json_type(data)}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise UserError(f"{path}: item {i} of the JSON list is {_json_type(row)}, expected an object")
    return data, None


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _parse_csv(path: Path, text: str) -> tuple[list[dict], list[int]]:
    # strict: an unclosed quote or text after a closing quote is an error, not a silently merged row
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    rows, lines = [], []
    try:
        for row in reader:
            if None in row:
                raise UserError(f"{path}:{reader.line_num}: more fields than the header has columns")
            missing = [k for k, v in row.items() if v is None]
            if missing:
                raise UserError(f"{path}:{reader.line_num}: fewer fields than the header has columns "
                                f"(no {', '.join(map(repr, missing))})")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:  # line_num counts the lines of the rows read before the one that failed
        raise UserError(f"{path}:{reader.line_num + 1}: invalid CSV ({exc})") from None
    return rows, lines


def _read_parquet(path: Path) -> list[dict]:
    try:
        # optional dependency: imported only where it is used (grpo[data])
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UserError(f"{path}: reading Parquet needs pyarrow (pip install 'grpo[data]')") from exc
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({exc})") from None


def _read_saved_dataset(path: Path, split: str | None) -> list[dict]:
    if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        raise UserError(
            f"{path}: is a directory but not a dataset saved with datasets' save_to_disk "
            "(no dataset_info.json or dataset_dict.json)"
        )
    try:
        # optional dependency: imported only where it is used (grpo[data])
        import datasets
    except ImportError as exc:
        raise UserError(
            f"{path}: loading a saved dataset needs `datasets` (pip install 'grpo[data]')"
        ) from exc
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise UserError(f"{path}: cannot load the saved dataset ({exc})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in loaded:
            what = "has several splits; set split" if split is None else f"has no split {split!r}"
            raise UserError(f"{path}: {what} (splits: {', '.join(splits)})")
        loaded = loaded[split]
    elif split is not None:
        raise UserError(
            f"{path}: split={split!r} given but the directory holds a single Dataset with no splits"
        )
    return loaded.to_list()


def _map_columns(
    rows: list[dict], where, name: str, prompt_column: str, answer_column: str | None
) -> list[dict]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    wanted = [("prompt_column", prompt_column, "prompt")]
    if answer_column is not None:
        wanted.append(("answer_column", answer_column, "answer"))
    for field, column, target in wanted:
        if column not in columns:
            shown = [_cut(str(c) if str(c).isprintable() else repr(c)) for c in columns[:20]]  # one line
            raise UserError(
                f"{name}: no column {column!r} ({field}); the columns are: "
                f"{', '.join(shown)}{', ...' if len(columns) > 20 else ''}"
            )
        if column != target and target in columns:
            raise UserError(
                f"{name}: {field}={column!r} would be renamed to {target!r}, but a column {target!r} already "
                "exists; rename one of them"
            )
    mapped = []
    for i, row in enumerate(rows):
        for field, column, _ in wanted:
            if column not in row:
                raise UserError(f"{where(i)}: the row has no {column!r} column ({field})")
        row = dict(row)
        for _, column, target in wanted:
            row[target] = row.pop(column)
        _check_prompt(row["prompt"], f"{where(i)}: field {prompt_column!r}")
        mapped.append(row)
    return mapped


def _check_prompt(prompt: Any, where: str) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        for j, message in enumerate(prompt):
            ok = (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            )
            if not ok:
                raise UserError(
                    f"{where}: message {j} must be an object with string 'role' and 'content'; got "
                    f"{_shorten(message)}"
                )
        return
    raise UserError(
        f"{where}: a prompt must be a string or a non-empty list of {{role, content}} messages; got "
        f"{_json_type(prompt)} {_shorten(prompt)}"
    )


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _shorten(value: Any, limit: int = 80) -> str:
    return _cut(repr(value), limit)


def _cut(text: str, limit: int = 80) -> str:
    """A name or value for an error message, cut short: a 5 MB column name must not become the message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
