"""Reading and writing configs: YAML files and `section.key=value` overrides onto the dataclass tree of
`grpo.config`, with errors that name the field.

Nothing here knows a particular config: `load_config(cls, path, overrides)` builds any dataclass whose
fields are typed (nested dataclasses, lists, Literals, Optionals) and calls its `validate()`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml

from grpo.errors import UserError


def _shown(value: Any, limit: int = 80, quote: bool = True) -> str:
    """A value for an error message, cut short: a 5 MB line in a config must not become a 5 MB message."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else f"{text[:limit - 25]}... ({len(text)} characters)"


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: got {_shown(value)}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: expected one of {', '.join(map(repr, args))}, got {_shown(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping of {tp.__name__} fields, got {_shown(value)}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {_shown(value)}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {_shown(value)}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {_shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected an integer, got {_shown(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.match(value.strip()):  # YAML 1.1 reads 2e-3 (no dot) as a string
            return float(value)
        raise UserError(f"{where}: expected a number, got {_shown(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{where}: expected a string, got {_shown(value)}")
    return value


def _build(cls, data: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(f"unknown config key {prefix}{_shown(unknown[0], quote=False)} (known keys of "
                        f"{where or 'the config'}: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    obj = cls()
    for k, v in kwargs.items():
        if dataclasses.is_dataclass(v) and dataclasses.is_dataclass(getattr(obj, k)):
            v = _merge(getattr(obj, k), v, data[k])
        setattr(obj, k, v)
    return obj


def _merge(base, new, given: dict):
    """Fields of `new` that were given explicitly, over `base` (so YAML sections are partial)."""
    for k in given:
        setattr(base, k, getattr(new, k))
    return base


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not of the form key=value (section.key=value; every key: "
                            "grpo config)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        why = " ".join(str(getattr(e, "problem", None) or e).split())  # a reader error spans lines
        raise UserError(f"{p}{line}: invalid YAML ({why})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text (byte {e.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line of every key of a YAML mapping, dotted as errors name them (`grpo.G`,
    `rewards.functions[1].weight`); {} for text that is not YAML."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node, where: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    key = f"{where}.{k.value}" if where else str(k.value)
                    lines.setdefault(key, k.start_mark.line + 1)
                    walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault(f"{where}[{i}]", item.start_mark.line + 1)
                walk(item, f"{where}[{i}]")

    walk(root, "")
    return lines


def locate(message: str, path: str | Path, lines: dict[str, int], overridden: set[str]) -> str:
    """`path:line: message` where the message names a key the file sets (the first one it names);
    `path: message` if it names no key of the overrides either; else the message as it is (the
    overrides on the command line caused it)."""
    named = []
    for key, line in lines.items():
        m = re.search(rf"(?<![\w.\[]){re.escape(key)}(?![\w.\[])", message)
        if m:
            named.append((m.start(), -len(key), key, line))
    mentioned_override = any(re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", message) for k in overridden)
    for _, _, key, line in sorted(named):
        if not any(key == k or key.startswith(f"{k}.") or key.startswith(f"{k}[") for k in overridden):
            return f"{path}:{line}: {message}"
    return message if mentioned_override else f"{path}: {message}"


def _dotted(tree: dict, where: str = "") -> set[str]:
    """The dotted keys of the values an override tree sets (`{"train": {"steps": 3}}` -> {"train.steps"})."""
    out = set()
    for k, v in tree.items():
        key = f"{where}.{k}" if where else str(k)
        out |= _dotted(v, key) if isinstance(v, dict) and v else {key}
    return out


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Defaults <- YAML file <- `key=value` overrides, validated. An error in a value the file set
    names the file and the line of its key."""
    data = read_yaml(path) if path else {}
    given = parse_overrides(overrides or [])
    data = _deep_update(data, given)
    try:
        cfg = _build(cls, data)
        cfg.validate()
    except UserError as e:
        if not path:
            raise
        lines = key_lines(Path(path).read_text(encoding="utf-8"))
        raise UserError(locate(str(e), path, lines, _dotted(given))) from None
    return cfg


def add_config_arguments(parser, config_help: str = "YAML config file",
                         overrides_help: str | None = None) -> None:
    """Every command's `--config FILE.yaml` and positional `section.key=value` overrides."""
    parser.add_argument("--config", "-c", default=None, help=config_help)
    parser.add_argument("overrides", nargs="*",
                        help=overrides_help or "section.key=value overrides, e.g. grpo.beta=0.0 "
                        "(every key: grpo config train)")


def field_docs(cls) -> dict[str, str]:
    """The docstring under each field of dataclass `cls` (the string literal that follows the field's
    annotated assignment in its source), keyed by field name; fields without one are left out."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


class ConfigKey(NamedTuple):
    """One settable key of a config, as `grpo config` lists it."""

    key: str
    """Dotted as overrides name it: `grpo.beta`; `rewards.functions[].fn` for the fields of list items."""
    type: str
    """The annotation, e.g. `int`, `float | None`, `'error' | 'drop'`."""
    default: str
    """The default as YAML (`0.04`, `null`, `[q_proj, k_proj]`)."""
    doc: str
    """The field's docstring on one line."""


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _yaml_value(value) -> str:
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return yaml.safe_dump(value, default_flow_style=True, width=10**9,
                          sort_keys=False).strip().removesuffix("...").strip()


def config_keys(cls, prefix: str = "", default=None) -> list[ConfigKey]:
    """Every key of config class `cls` with its type, default and docstring, sections expanded in field
    order. An optional section (`model.lora`) and a list of entries (`rewards.functions`) are keys
    themselves, and their items' fields follow them (`model.lora.r`, `rewards.functions[].fn`).
    default: the instance whose values are the defaults (a section's own, e.g.
    SFT's `optim`; None: `cls()`)."""
    hints, docs, default = typing.get_type_hints(cls), field_docs(cls), cls() if default is None else default
    out = []
    for f in dataclasses.fields(cls):
        tp, value, key = hints[f.name], getattr(default, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):  # a section: its keys, with the defaults its parent gives it
            out += config_keys(tp, f"{key}.", value)
            continue
        out.append(ConfigKey(key, _type_name(tp), _yaml_value(value), docs.get(f.name, "")))
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if inner:  # `X | None` or `list[X]`: the fields of X, when given
            item = "[]" if typing.get_origin(tp) is list else ""
            out += config_keys(inner[0], f"{key}{item}.")
    return out


_NOT_AN_END = ("e.g.", "i.e.", "Dr.", "vs.", "al.")


def first_sentence(doc: str) -> str:
    """`doc` up to its first full stop outside parentheses that a space and a capital, quote or bracket
    follow ("e.g. 'x'", "Dr. GRPO" and "(... . ...)" do not end it).

    >>> first_sentence("Upper clip (None: same. DAPO: 0.28). Dr. GRPO sets it. More.")
    'Upper clip (None: same. DAPO: 0.28). Dr. GRPO sets it.'
    """
    depth = 0
    for m in re.finditer(r"[()]|\.(?=\s+[A-Z`'(])", doc):
        if m.group() in "()":
            depth += 1 if m.group() == "(" else -1
        elif depth <= 0 and not doc[:m.end()].endswith(_NOT_AN_END):
            return doc[:m.end()]
    return doc


def format_config_keys(keys: list[ConfigKey], full: bool = False) -> str:
    """`key: type = default` then the doc's first sentence (full: all of it), one line per key, in
    aligned columns."""
    heads = [f"{k.key}: {k.type} = {k.default}" for k in keys]
    width = min(64, max(map(len, heads), default=0))
    return "\n".join(f"{h:<{width}}  {k.doc if full else first_sentence(k.doc)}".rstrip()
                     for h, k in zip(heads, keys))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
