"""The configuration reference (docs/configuration.md), made from the config models.

Every key, its type, its default and its description come from the pydantic models
(field docstrings and the JSON schema), so the reference cannot drift from what the loader
accepts; a test compares the file in the repository with what this module makes, and
``backstop config reference > docs/configuration.md`` writes it anew.
"""

from __future__ import annotations

import json
import re
from typing import Any

from backstop.config import NAME_PATTERN, Config
from backstop.units import DURATION_PATTERN, SIZE_PATTERN

INTRO = """# Configuration reference

<!-- Made by `backstop config reference`; a test checks that this file matches it. -->

A Backstop config is one YAML file: `-c FILE`, else `$BACKSTOP_CONFIG`, else
`./backstop.yaml`. Relative paths are relative to the config file. Sizes are bytes or a
number with `B`, `KiB`, `MiB`, `GiB`, `TiB` (`100MiB`); durations a number with `s`, `m`,
`h`, `d` (`30s`, `14d`). Names (`name:` of anything) are 1-64 letters, digits, `_`, `.`,
`-`, starting with a letter or digit. Unknown keys are errors. `backstop config check`
reports every problem at once, each with its YAML path, and `backstop config schema`
prints the same models as a JSON Schema for editors.

Environment variables that win over the file: `BACKSTOP_CONFIG` (which file),
`BACKSTOP_BROKER_URL` (`broker_url`), `BACKSTOP_SENTINEL_PASSWORD`
(`broker_sentinel_password`), `BACKSTOP_DATA_TOKEN` (the fleet's data token, instead of
`data_path.token_file`).
"""

SIZE_HINT = "bytes, or a number with B, KiB, MiB, GiB or TiB"
DURATION_HINT = "a duration such as 30s, 15m, 1h30m, 14d"


def reference() -> str:
    schema = Config.model_json_schema(mode="validation")
    defs: dict[str, Any] = schema["$defs"]
    parts = [INTRO, section("Top level", schema, defs)]
    parts += [section(name, defs[name], defs) for name in sorted(defs)
              if defs[name].get("type") == "object"]
    enums = [name for name in sorted(defs) if "enum" in defs[name]]
    parts.append("## Values\n\n" + "\n".join(
        f"- <a id=\"{name.lower()}\"></a>`{name}`: "
        + ", ".join(f"`{v}`" for v in defs[name]["enum"]) for name in enums) + "\n")
    return "\n".join(parts)


def section(title: str, model: dict[str, Any], defs: dict[str, Any]) -> str:
    anchor = "top-level" if title == "Top level" else title.lower()
    lines = [f"## <a id=\"{anchor}\"></a>{title}", ""]
    if title != "Top level" and model.get("description"):
        lines += [" ".join(model["description"].split()), ""]
    required = set(model.get("required", []))
    lines += ["| key | type | default | what it is |", "|---|---|---|---|"]
    for key, field in model["properties"].items():
        default = "*required*" if key in required else f"`{show(field.get('default'))}`"
        if default == "`see below`":
            default = "see its table"
        about = " ".join(field.get("description", "").split())
        if about in (SIZE_HINT, DURATION_HINT):
            about = ""
        lines.append(f"| `{key}` | {type_of(field)} | {default} | {about} |")
    return "\n".join(lines) + "\n"


def show(value: Any) -> str:
    """A default as it would be written in the file."""
    if isinstance(value, dict):
        return "see below"
    if isinstance(value, str) and (iso := ISO_DURATION.fullmatch(value)):
        return "".join(f"{amount}{unit}" for amount, unit in zip(
            iso.groups(), "dhms", strict=True) if amount) or "0s"
    return json.dumps(value)


def type_of(field: dict[str, Any]) -> str:
    options = field.get("anyOf") or field.get("oneOf")
    if not options:
        return named_type(field)
    names = [type_of(option) for option in options]
    if "size" in names:  # a size is bytes or a number with a unit
        names = [name for name in names if name != "integer"]
    return " or ".join(dict.fromkeys(names))


def named_type(field: dict[str, Any]) -> str:
    if "$ref" in field:
        name = field["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "enum" in field or "const" in field:
        return " \\| ".join(f"`{v}`" for v in field.get("enum", [field.get("const")]))
    kind = field.get("type")
    if kind == "array":
        return f"list of {type_of(field.get('items', {}))}"
    if kind == "string":
        return "path" if field.get("format") == "path" else STRINGS.get(
            field.get("pattern", ""), "string")
    return str(kind or "any")


ISO_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")
STRINGS = {SIZE_PATTERN: "size", DURATION_PATTERN: "duration", NAME_PATTERN: "name"}
