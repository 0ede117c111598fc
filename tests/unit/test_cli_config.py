"""``backstop config check`` / ``config schema`` and where settings come from."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backstop.orchestration.cli import main
from backstop.settings import config_path, load_settings
from tests.conftest import MINIMAL_CONFIG

BROKEN = MINIMAL_CONFIG.replace("failover_event: docs-spare", "failover_event: docs-spar") \
                       .replace("task: docs\n    level: INC", "task: dogs\n    level: INCR") \
                       .replace("channels: 2", "channels: -1")


def test_check_of_a_good_config_exits_0_with_a_summary(
        write_config: Callable[[str], Path]) -> None:
    path = write_config(MINIMAL_CONFIG)
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    assert "3 events" in result.output


def test_check_of_a_bad_config_exits_2_listing_every_problem(
        write_config: Callable[[str], Path]) -> None:
    path = write_config(BROKEN)
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    for fragment in ("events[0].failover_event: unknown event 'docs-spar' "
                     "(did you mean 'docs-spare'?)",
                     "events[0].task: unknown task 'dogs'",
                     "events[0].level: bad value 'INCR'",
                     "drives[0].channels: bad value -1"):
        assert fragment in result.output
    assert "Traceback" not in result.output


WARNINGS = """
rds: [{name: r1, interfaces: [{name: a, address: 127.0.0.2}, {name: b, address: 127.0.0.3}]},
      {name: r2}]
clients: [{name: web1}]
data_stores:
  - {name: s1, rds: r1, path: s1}
  - {name: s2, rds: r1, path: s2}
  - {name: s3, rds: r2, path: s3}
media_pools:
  - {name: p1, data_store: s1, retention: 7d}
  - {name: p1b, data_store: s1, retention: 7d}
  - {name: p2, data_store: s2, retention: 7d}
  - {name: p3, data_store: s3, retention: 7d}
tasks: [{name: www, client: web1, source: www}]
events:
  - {name: same-store, task: www, media_pool: p1, failover_event: other-pool-same-store}
  - {name: other-pool-same-store, task: www, media_pool: p1b}
  - {name: same-path, task: www, media_pool: p1, interface: a, failover_event: via-a}
  - {name: via-a, task: www, media_pool: p2}
  - {name: helps, task: www, media_pool: p1, interface: a, failover_event: via-b}
  - {name: via-b, task: www, media_pool: p2, interface: b}
  - {name: elsewhere, task: www, media_pool: p1, failover_event: far}
  - {name: far, task: www, media_pool: p3}
"""


def test_check_warns_of_failovers_that_cannot_help_and_strict_refuses_them(
        write_config: Callable[[str], Path]) -> None:
    path = write_config(WARNINGS)
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: events[0].failover_event: failover event 'other-pool-same-store' writes to "
        "data store 's1' too: no help when it is out of space or offline",
        "warning: events[2].failover_event: failover event 'via-a' goes through RDS 'r1' and "
        "interface 'a' too: no help when it is unreachable",
    ]
    strict = CliRunner().invoke(main, ["config", "check", "--strict", "-c", str(path)])
    assert strict.exit_code == 2
    as_json = CliRunner().invoke(main, ["config", "check", "--json", "-c", str(path)])
    assert len(json.loads(as_json.stdout)["warnings"]) == 2
    clean = CliRunner().invoke(main, ["config", "check", "--strict", "-c",
                                      str(write_config(WARNINGS.replace(
                                          "failover_event: other-pool-same-store", "")
                                          .replace("failover_event: via-a", "")))])
    assert clean.exit_code == 0, clean.output


def test_a_name_that_yaml_made_a_boolean_gets_a_hint_to_quote_it(
        write_config: Callable[[str], Path]) -> None:
    path = write_config(MINIMAL_CONFIG.replace("name: nightly", "name: off")
                        .replace("schedule: nightly", "schedule: 'off'"))
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert "schedules[0].name: bad value False" in result.output
    assert "quote it, e.g. 'off'" in result.output


def test_check_json_lists_problems(write_config: Callable[[str], Path]) -> None:
    path = write_config(BROKEN)
    result = CliRunner().invoke(main, ["config", "check", "--json", "-c", str(path)])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert len(report["problems"]) == 4


def test_other_commands_also_exit_2_on_a_bad_config(write_config: Callable[[str], Path]) -> None:
    path = write_config(BROKEN)
    result = CliRunner().invoke(main, ["status", "-c", str(path)])
    assert result.exit_code == 2
    assert "events[0].task: unknown task 'dogs'" in result.stderr


def test_the_config_option_also_works_before_the_command(
        write_config: Callable[[str], Path]) -> None:
    path = write_config(MINIMAL_CONFIG)
    result = CliRunner().invoke(main, ["-c", str(path), "config", "check"])
    assert result.exit_code == 0, result.output


def test_schema_is_a_json_schema_naming_every_section() -> None:
    result = CliRunner().invoke(main, ["config", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) >= {"rds", "data_stores", "media_pools", "drives", "tasks",
                                         "schedules", "migration_tasks", "events", "state_dir"}
    assert schema["additionalProperties"] is False


def test_worker_refuses_to_guess_what_it_serves(write_config: Callable[[str], Path]) -> None:
    path = write_config(MINIMAL_CONFIG)
    result = CliRunner().invoke(main, ["worker", "-c", str(path)])
    assert result.exit_code == 2
    assert "--rds NAME" in result.output


def test_an_unknown_rds_is_a_usage_error(write_config: Callable[[str], Path]) -> None:
    path = write_config(MINIMAL_CONFIG)
    result = CliRunner().invoke(main, ["up", "--rds", "locl", "-c", str(path)])
    assert result.exit_code == 2
    assert "unknown RDS 'locl' (did you mean 'local'?)" in result.output


def test_flower_refuses_a_public_address_without_auth(write_config: Callable[[str], Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)
    monkeypatch.delenv("FLOWER_AUTH", raising=False)
    path = write_config(MINIMAL_CONFIG)
    result = CliRunner().invoke(main, ["flower", "--address", "0.0.0.0", "-c", str(path)])
    assert result.exit_code == 2
    assert "without authentication" in result.output


@pytest.mark.parametrize(("option", "environ", "expected"), [
    ("given.yaml", {"BACKSTOP_CONFIG": "env.yaml"}, "given.yaml"),
    (None, {"BACKSTOP_CONFIG": "env.yaml"}, "env.yaml"),
    (None, {}, "backstop.yaml"),
])
def test_the_config_file_is_the_option_else_the_environment_else_the_default(
        option: str | None, environ: dict[str, str], expected: str) -> None:
    assert config_path(option, environ).name == expected


def test_paths_are_relative_to_the_config_file_and_the_broker_env_wins(
        write_config: Callable[[str], Path]) -> None:
    path = write_config(MINIMAL_CONFIG + "\nbroker_url: redis://config:6379/0\n")
    settings = load_settings(str(path), {"BACKSTOP_BROKER_URL": "redis://env:6379/0"})
    assert settings.broker_url == "redis://env:6379/0"
    assert settings.state_dir == path.parent / ".backstop"
    assert settings.resolve(settings.config.tasks[0].source) == path.parent / "data" / "docs"
    assert load_settings(str(path), {}).broker_url == "redis://config:6379/0"


mutations = st.lists(st.tuples(st.sampled_from(["delete-line", "duplicate-line", "insert",
                                                "replace-char", "truncate"]),
                               st.integers(min_value=0, max_value=10_000),
                               st.text(max_size=8)), min_size=1, max_size=4)


def mutate(text: str, steps: list[tuple[str, int, str]]) -> str:
    for kind, at, token in steps:
        lines = text.splitlines(keepends=True)
        if kind == "delete-line" and lines:
            del lines[at % len(lines)]
            text = "".join(lines)
        elif kind == "duplicate-line" and lines:
            line = lines[at % len(lines)]
            lines.insert(at % len(lines), line)
            text = "".join(lines)
        elif kind == "insert":
            text = text[:at % (len(text) + 1)] + token + text[at % (len(text) + 1):]
        elif kind == "replace-char" and text:
            i = at % len(text)
            text = text[:i] + (token[:1] or ":") + text[i + 1:]
        elif kind == "truncate":
            text = text[:at % (len(text) + 1)]
    return text


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations)
def test_config_check_of_a_mangled_config_never_shows_a_traceback(
        write_config: Callable[[str], Path], steps: list[tuple[str, int, str]]) -> None:
    path = write_config(mutate(MINIMAL_CONFIG, steps))
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception,
                                                                      SystemExit)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert str(path) in result.output or "line" in result.output, result.output


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_config_check_of_any_bytes_never_shows_a_traceback(tmp_path: Path,
                                                           raw: bytes) -> None:
    path = tmp_path / "backstop.yaml"
    path.write_bytes(raw)
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(("task", "problem"), [
    ("{name: docs}", "tasks[0]: a task needs a source, streams, or both"),
    ("{name: docs, streams: [{name: a.dump, argv: [pg_dump]}, {name: a.dump, argv: [true]}]}",
     "tasks[0].streams[1].name: duplicate stream name 'a.dump' (first at tasks[0].streams[0])"),
    ("{name: docs, streams: [{name: a.dump, argv: []}]}", "tasks[0].streams[0].argv: bad value []"),
    ("{name: docs, streams: [{name: ../etc/x, argv: [true]}]}",
     "tasks[0].streams[0].name: '../etc/x' is not a file name"),
])
def test_check_refuses_a_task_without_anything_to_read_or_with_bad_streams(
        write_config: Callable[[str], Path], task: str, problem: str) -> None:
    path = write_config(MINIMAL_CONFIG.replace(
        '{name: docs, source: data/docs, exclude: ["*.tmp", "cache/"]}', task))
    result = CliRunner().invoke(main, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2, result.output
    assert problem in result.output
