from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    (0, 0),
    (4096, 4096),
    ("512", 512),
    ("512B", 512),
    ("1KiB", 1024),
    ("100MiB", 100 * 1024**2),
    ("1 GiB", 1024**3),
    ("1.5GiB", 3 * 1024**3 // 2),
    ("2TiB", 2 * 1024**4),
])
def test_sizes_parse_to_bytes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("1GB", "did you mean GiB?"),
    ("10 MB", "did you mean MiB?"),
    ("1 parsec", "unknown unit 'parsec'"),
    ("-1", "expected a number"),
    (-5, "must not be negative"),
    ("lots", "expected a number"),
    (True, "bad size"),
    ([1], "bad size"),
])
def test_bad_sizes_say_what_is_wrong(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("30s", timedelta(seconds=30)),
    ("15m", timedelta(minutes=15)),
    ("1h", timedelta(hours=1)),
    ("14d", timedelta(days=14)),
    ("1h30m", timedelta(hours=1, minutes=30)),
    ("1.5h", timedelta(minutes=90)),
])
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    (14, "with a unit"),
    ("14", "with a unit"),
    ("2w", "unknown unit 'w'"),
    ("h", "with a unit"),
    ("1h junk", "with a unit"),
    (None, "bad duration"),
])
def test_a_duration_without_a_known_unit_is_refused(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_formatted_durations_parse_back(seconds: int) -> None:
    duration = timedelta(seconds=seconds)
    assert parse_duration(format_duration(duration)) == duration
