"""Sizes and durations as they are written in the config file.

Sizes take ``B, KiB, MiB, GiB, TiB`` (a bare integer is bytes); durations take ``s, m, h, d``,
also combined (``1h30m``). A duration always needs a unit: ``retention: 14`` is far more
likely a forgotten ``d`` than fourteen seconds, and guessing wrong would purge savesets.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# What the JSON schema says sizes and durations look like.
SIZE_PATTERN = r"^\d+(\.\d+)?\s*(B|KiB|MiB|GiB|TiB)?$"
DURATION_PATTERN = r"^(\d+(\.\d+)?(s|m|h|d))+$"
# Units people write by habit, mapped to the one they most likely mean.
_SIZE_HINTS = {"K": "KiB", "KB": "KiB", "M": "MiB", "MB": "MiB", "G": "GiB", "GB": "GiB",
               "T": "TiB", "TB": "TiB", "k": "KiB", "kb": "KiB", "mb": "MiB", "gb": "GiB"}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")


def parse_size(value: object) -> int:
    """Return a size in bytes; raise ValueError naming the unit problem."""
    if isinstance(value, bool):
        raise ValueError(f"bad size {value!r}: expected e.g. 100MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"bad size {value}: must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"bad size {value!r}: expected e.g. 100MiB")
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"bad size {value!r}: expected a number and one of B, KiB, MiB, GiB, TiB")
    number, unit = match.groups()
    unit = unit or "B"
    if unit not in SIZE_UNITS:
        hint = f" (did you mean {_SIZE_HINTS[unit]}?)" if unit in _SIZE_HINTS else ""
        raise ValueError(f"bad size {value!r}: unknown unit {unit!r}{hint}")
    return int(float(number) * SIZE_UNITS[unit])


def parse_duration(value: object) -> timedelta:
    """Return a duration; raise ValueError when a unit is missing or unknown."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"bad duration {value!r}: expected e.g. 30s, 15m, 1h, 14d")
    text = str(value).strip()
    parts = _DURATION_PART_RE.findall(text)
    if not parts or _DURATION_PART_RE.sub("", text).strip():
        raise ValueError(f"bad duration {value!r}: expected a number with a unit s, m, h or d")
    seconds = 0.0
    for number, unit in parts:
        if unit not in DURATION_UNITS:
            raise ValueError(f"bad duration {value!r}: unknown unit {unit!r} (use s, m, h or d)")
        seconds += float(number) * DURATION_UNITS[unit]
    return timedelta(seconds=seconds)


def format_size(size_bytes: int) -> str:
    """Render bytes with the largest unit that keeps the number at or above one."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if size_bytes >= SIZE_UNITS[unit]:
            return f"{size_bytes / SIZE_UNITS[unit]:.1f}{unit}"
    return f"{size_bytes}B"


def format_duration(duration: timedelta) -> str:
    """Render a duration in the config file's notation, e.g. ``1h30m``."""
    remaining = int(duration.total_seconds())
    if remaining == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, remaining = divmod(remaining, DURATION_UNITS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": SIZE_PATTERN}],
                    "description": "bytes, or a number with B, KiB, MiB, GiB or TiB"}),
]
Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN,
                    "description": "a duration such as 30s, 15m, 1h30m, 14d"}),
]
