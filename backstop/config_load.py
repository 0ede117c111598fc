"""Read a config file and report every problem in it at once, each with its YAML path and line.

Entities are validated one by one so that a broken entity does not hide the problems of the
others; references are then checked among the entities that passed. Nothing here raises
anything but :class:`ConfigError` for bad input, whatever the file holds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from backstop.config import ENCRYPTION_TAGS, EVENT_KINDS, SECTIONS, Config, Model
from backstop.config_refs import check_references, did_you_mean
from backstop.errors import ConfigError

# libyaml's parser where PyYAML was built with it (its wheels are): far faster on big files.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SECTION_NAMES = {*SECTIONS, "events"}
_ALL_MODELS: list[type[BaseModel]] = [Config, *SECTIONS.values(), *EVENT_KINDS.values()]


def load_config(path: Path) -> Config:
    """Parse and fully validate ``path``; raise ConfigError listing every problem."""
    return read_config(path)[0]


def read_config(path: Path) -> tuple[Config, str]:
    """The config of ``path`` and its hash (SPEC section 13: sha256 of the file's bytes,
    first 12 hex digits), of the same bytes."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [
            "config file not found; give one with -c FILE or $BACKSTOP_CONFIG (else "
            "./backstop.yaml is read), e.g. -c deploy/examples/quickstart.yaml"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"cannot read config file: {exc}"]) from None
    return parse_config(text, str(path)), hashlib.sha256(data).hexdigest()[:12]


def parse_config(text: str, source: str = "<config>") -> Config:
    raw, lines, problems = _read_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections, e.g. 'rds:'"])
    # A section written with nothing under it ("migration_tasks:") is an empty section.
    raw = {k: v for k, v in raw.items() if v is not None or k not in _SECTION_NAMES}
    problems += _validate(raw)
    if problems:
        located = sorted((_line_of(p, lines), p) for p in problems)
        raise ConfigError(source, [f"{p} (line {line})" if line else p for line, p in located])
    return Config.model_validate(raw)


def _read_yaml(text: str, source: str) -> tuple[Any, dict[str, int], list[str]]:
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(source, [f"{where}: invalid YAML: {what}"]) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(source, [f"invalid YAML: {exc}"]) from None
    lines: dict[str, int] = {}
    problems: list[str] = []
    if node is not None:
        _index_lines(node, "", lines, problems, depth=0)
    return raw, lines, problems


def _index_lines(node: yaml.Node, path: str, lines: dict[str, int], problems: list[str],
                 depth: int) -> None:
    """Map every YAML path to its line, and report keys written twice in one mapping."""
    if depth > 50:
        return
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            child = f"{path}.{key}" if path else key
            if key in seen:
                problems.append(f"{child}: key written twice in one mapping")
            seen.add(key)
            _index_lines(value_node, child, lines, problems, depth + 1)
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, f"{path}[{index}]", lines, problems, depth + 1)
    lines.setdefault(path, node.start_mark.line + 1)


def _line_of(problem: str, lines: dict[str, int]) -> int:
    """The line of the problem's path, or of its nearest enclosing entry; 0 when unknown."""
    path = problem.split(": ", 1)[0]
    while path and path not in lines:
        path = path[: max(path.rfind("."), path.rfind("["), 0)]
    return lines.get(path, 0)


def _validate(raw: dict[Any, Any]) -> list[str]:
    problems = _validate_model(Config, {k: v for k, v in raw.items()
                                        if k not in SECTIONS and k != "events"}, "")
    for section in [*SECTIONS, "events"]:
        items = raw.get(section)
        if items is None:
            continue
        if not isinstance(items, list):
            problems.append(f"{section}: expected a list, got {type(items).__name__}")
            continue
        for index, item in enumerate(items):
            problems += _validate_model(_entity_class(section, item), item,
                                        f"{section}[{index}]")
    return problems + check_references(raw)


def _entity_class(section: str, item: Any) -> type[Model]:
    if section != "events":
        return SECTIONS[section]
    kind = item.get("kind", "backup") if isinstance(item, dict) else "backup"
    return EVENT_KINDS.get(kind, _UnknownKind) if isinstance(kind, str) else _UnknownKind


class _UnknownKind(Model):
    """Stands in for an event whose kind is none of the known ones, to report just that."""

    kind: Literal["backup", "verify", "command"]
    model_config = ConfigDict(extra="allow")


def _validate_model(cls: type[BaseModel], data: Any, path: str) -> list[str]:
    try:
        cls.model_validate(data)
    except ValidationError as exc:
        return [_describe(error, path, cls) for error in exc.errors()]
    return []


def format_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("backup", "verify", "command", "function-before[parse_size()]",
                      *ENCRYPTION_TAGS):
            continue  # pydantic's own names for union tags, not part of the file
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "(top level)"


def _describe(error: ErrorDetails, prefix: str, cls: type[BaseModel]) -> str:
    path = format_path(prefix, tuple(error["loc"]))
    kind, value = error["type"], error.get("input")
    message = error["msg"]
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        # keys of the entity itself; for nested mappings, keys of any entity
        known = cls.model_fields if len(error["loc"]) == 1 else {
            f for model in _ALL_MODELS for f in model.model_fields}
        message = f"unknown key {key!r}{did_you_mean(key, set(known) - {key})}"
    elif kind == "missing":
        message = "missing required key"
    elif isinstance(value, bool) and kind == "invalid_key":
        path = format_path(prefix, tuple(error["loc"])[:-1])
        message = (f"a key {value!r}: YAML 1.1 reads an unquoted on, off, yes or no as a "
                   "boolean; a notify target's key is `when`, other keys can be quoted")
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "string_pattern_mismatch":
        message = (f"bad name {value!r}: use letters, digits, '.', '_' and '-', "
                   "starting with a letter or digit, at most 64 characters")
    else:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        message = f"bad value {shown}: {message[0].lower()}{message[1:]}"
        if isinstance(value, bool) and kind == "string_type":
            message += (" (YAML reads an unquoted yes, no, on, off, true or false as a "
                        "boolean: quote it, e.g. 'off')")
    return f"{path}: {message}"
