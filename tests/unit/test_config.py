"""The config file: valid files load, every problem is reported at once with its path."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backstop.config import BackupEvent, CommandEvent, Level, VerifyEvent
from backstop.config_load import load_config, parse_config
from backstop.errors import ConfigError
from backstop.settings import load_settings
from backstop.workers.age import Identity
from tests.conftest import MINIMAL_CONFIG

REPO = Path(__file__).resolve().parents[2]


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.problems


def test_the_spec_example_loads_with_every_entity() -> None:
    config = parse_config(MINIMAL_CONFIG)

    event = config.event_named("docs-nightly")
    assert isinstance(event, BackupEvent)
    assert event.level is Level.INC
    assert event.enforce_full is True
    assert event.full_interval == timedelta(days=7)
    assert event.failover_event == "docs-spare"
    assert config.data_stores[0].capacity == 1024**3
    assert config.data_stores[0].reserve == 16 * 1024**2
    assert config.media_pools[0].media is not None
    assert config.media_pools[0].media.size == 100 * 1024**2
    assert config.schedules[1].every == timedelta(seconds=30)
    assert isinstance(config.event_named("docs-verify"), VerifyEvent)


@pytest.mark.parametrize("example", sorted((REPO / "deploy" / "examples").rglob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_example_config_is_valid(example: Path) -> None:
    config = load_config(example)
    assert any(getattr(e, "failover_event", None) for e in config.events)


def test_several_mistakes_are_all_reported_with_their_paths() -> None:
    # Given a config with one mistake of each kind the operator is likely to make
    text = """
    rds: [{name: local}]
    data_stores: [{name: store-a, rds: local, path: a}, {name: store-a, rds: local, path: b}]
    media_pools: [{name: daily, data_store: store-a, retention: 14d}]
    drives: [{name: drive-a, data_store: store-a, channels: -2}]
    tasks: [{name: docs, source: data}]
    schedules: [{name: nightly, cron: "0 22 * *"}]
    events:
      - {name: ev-a, task: docs, media_pool: daily, failover_event: docs-spar}
      - {name: ev-b, task: dogs, media_pool: daily, schedule: nightly}
      - {name: ev-c, task: docs, media_pool: daily, failover_event: ev-c}
      - {name: ev-d, task: docs, media_pool: daily, level: WEEKLY}
    """
    # When it is checked
    problems = problems_of(text)
    # Then every mistake is listed, each with its YAML path
    expected = [
        "data_stores[1].name: duplicate data store name 'store-a'",
        "drives[0].channels: bad value -2",
        "schedules[0].cron: bad cron expression '0 22 * *'",
        "events[0].failover_event: unknown event 'docs-spar'",
        "events[1].task: unknown task 'dogs' (did you mean 'docs'?)",
        "events[2].failover_event: an event cannot be its own failover event",
        "events[3].level: bad value 'WEEKLY'",
    ]
    for fragment in expected:
        assert any(p.startswith(fragment) for p in problems), (fragment, problems)
    assert len(problems) == len(expected)


def test_unknown_failover_event_suggests_the_near_name_like_the_spec_says() -> None:
    text = MINIMAL_CONFIG.replace("failover_event: docs-spare", "failover_event: docs-spar")
    [problem] = problems_of(text)
    assert problem.startswith("events[0].failover_event: unknown event 'docs-spar' "
                              "(did you mean 'docs-spare'?)")
    assert problem.endswith(f"(line {text.splitlines().index('    failover_event: docs-spar')+1})")


@pytest.mark.parametrize(("change", "expected"), [
    ({"drive": "drive-b"}, "events[0].drive: drive 'drive-b' belongs to data store 'store-b'"),
    ({"interface": "eth9"}, "events[0].interface: unknown interface 'eth9' of RDS 'local'"),
    ({"failover_event": "docs-verify"}, "events[0].failover_event: event 'docs-verify' is a "
                                        "verify event; a failover event must be a backup event"),
    ({"schedule": "nighty"}, "events[0].schedule: unknown schedule 'nighty' (did you mean"),
    ({"migration_task": "offsite"}, "events[0].migration_task: unknown migration task"),
    ({"media_pool": "weekly"}, "events[0].media_pool: unknown media pool 'weekly'"),
    ({"enfore_full": True}, "events[0].enfore_full: unknown key 'enfore_full' "
                            "(did you mean 'enforce_full'?)"),
    ({"kind": "snapshot"}, "events[0].kind: bad value 'snapshot': input should be 'backup'"),
    ({"follow_ups": [{"event": "docs-nightly"}]}, "events[0].follow_ups: follow-up cycle "
                                                  "docs-nightly -> docs-nightly"),
    ({"follow_ups": [{"event": "docs-verify", "when": "sometimes"}]},
     "events[0].follow_ups[0].when: bad value 'sometimes'"),
])
def test_each_bad_event_setting_is_named(change: dict[str, object], expected: str) -> None:
    raw = yaml.safe_load(MINIMAL_CONFIG)
    raw["events"][0].update(change)
    problems = problems_of(yaml.safe_dump(raw))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(("section", "change", "expected"), [
    ("data_stores", {"rds": "remote"}, "data_stores[0].rds: unknown RDS 'remote'"),
    ("data_stores", {"capacity": "1GB"}, "data_stores[0].capacity: bad size '1GB'"),
    ("data_stores", {"reserve": "2GiB"}, "data_stores[0]: reserve must be smaller than capacity"),
    ("media_pools", {"failover_pool": "daily"}, "media_pools[0].failover_pool: a media pool "
                                                "cannot be its own failover pool"),
    ("media_pools", {"retention": 14}, "media_pools[0].retention: bad duration 14"),
    ("media_pools", {"media": {}}, "media_pools[0].media: media needs a count, a size or both"),
    ("drives", {"channels": 0}, "drives[0].channels: bad value 0"),
    ("schedules", {"timezone": "Mars/Olympus"}, "schedules[0].timezone: unknown time zone"),
    ("schedules", {"every": "5m"}, "schedules[0]: a schedule needs exactly one of cron or every"),
    ("tasks", {"name": "my docs"}, "tasks[0].name: bad name 'my docs'"),
    ("rds", {"interfaces": [{"name": "lo", "address": "a"}, {"name": "lo", "address": "b"}]},
     "rds[0].interfaces[1].name: duplicate interface name 'lo'"),
    ("rds", {"interfaces": [{"name": "a", "address": "127.0.0.2"},
                            {"name": "b", "address": "127.0.0.2", "port": 7390}]},
     "rds[0].interfaces[1]: address 127.0.0.2:7390 is taken by rds[0].interfaces[0] already"),
    ("rds", {"interfaces": [{"name": "a", "address": "127.0.0.2", "port": 70000}]},
     "rds[0].interfaces[0].port: bad value 70000"),
    ("tasks", {"client": "web2"}, "tasks[0].client: unknown client 'web2'"),
])
def test_each_bad_entity_is_named(section: str, change: dict[str, object], expected: str) -> None:
    raw = yaml.safe_load(MINIMAL_CONFIG)
    raw[section][0].update(change)
    problems = problems_of(yaml.safe_dump(raw))
    assert any(p.startswith(expected) for p in problems), problems


def test_clients_and_the_data_path_are_read_with_their_defaults() -> None:
    raw = yaml.safe_load(MINIMAL_CONFIG)
    raw["clients"] = [{"name": "web1", "token_file": "tokens/web1"}]
    raw["tasks"][0]["client"] = "web1"
    raw["data_path"] = {"tls": {"cert": "c.pem", "key": "k.pem", "ca": "ca.pem"}}
    config = parse_config(yaml.safe_dump(raw))
    assert (config.clients[0].name, config.tasks[0].client) == ("web1", "web1")
    assert config.data_path.port == 7390
    assert (config.data_path.connect_timeout, config.data_path.io_timeout) == (
        timedelta(seconds=10), timedelta(seconds=60))
    assert config.port_of(config.rds[0].interfaces[0]) == 7390


def test_a_migration_drive_must_belong_to_the_target_pool_store() -> None:
    raw = yaml.safe_load(MINIMAL_CONFIG)
    raw["migration_tasks"] = [{"name": "offsite", "target_pool": "spare", "drive": "drive-a"}]
    [problem] = problems_of(yaml.safe_dump(raw))
    assert problem.startswith("migration_tasks[0].drive: drive 'drive-a' belongs to data store "
                              "'store-a', not to 'store-b' of media pool 'spare'")


def test_broken_yaml_is_one_line_with_line_and_column() -> None:
    [problem] = problems_of("rds:\n  - name: local\n   interfaces: []\n")
    assert "\n" not in problem
    assert problem.startswith("<config>:3:")
    assert "invalid YAML" in problem


def test_a_key_written_twice_is_reported() -> None:
    problems = problems_of("timezone: UTC\ntimezone: Europe/Berlin\n")
    assert problems == ["timezone: key written twice in one mapping (line 2)"]


@pytest.mark.parametrize(("text", "expected"), [
    ("- a\n- b\n", "(top level): expected a mapping"),
    ("rds: local\n", "rds: expected a list, got str"),
    ("rds: [local]\n", "rds[0]: bad value 'local': input should be a valid dictionary"),
    ("colour: blue\n", "colour: unknown key 'colour'"),
    ("timezone: Moon/Base\n", "timezone: unknown time zone 'Moon/Base'"),
    ("backup_jobs: 0\n", "backup_jobs: bad value 0"),
])
def test_wrong_shapes_are_named(text: str, expected: str) -> None:
    problems = problems_of(text)
    assert any(p.startswith(expected) for p in problems), problems


def test_command_events_take_an_argv_and_never_a_shell_string() -> None:
    raw = yaml.safe_load(MINIMAL_CONFIG)
    raw["events"].append({"name": "notify", "kind": "command", "argv": ["echo", "done"]})
    config = parse_config(yaml.safe_dump(raw))
    assert isinstance(config.event_named("notify"), CommandEvent)
    raw["events"][-1]["argv"] = "echo done"
    assert any(p.startswith("events[3].argv: bad value 'echo done'")
               for p in problems_of(yaml.safe_dump(raw)))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_an_empty_file_is_an_empty_config(write_config: Callable[[str], Path]) -> None:
    assert load_config(write_config("")).events == []


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12)
    | st.sampled_from(["local", "store-a", "daily", "docs", "FULL", "1GiB", "14d", "backup",
                       "verify", "command", "0 22 * * 1-5", "*/5 * * * *"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["name", "rds", "path", "task", "media_pool", "level",
                                       "kind", "failover_event", "events", "schedule", "every",
                                       "cron", "channels", "data_store", "follow_ups", "event",
                                       "retention", "media", "count", "size", "argv"])
                      | st.text(max_size=6), children, max_size=5),
    max_leaves=20,
)
config_like = st.dictionaries(
    st.sampled_from(["rds", "data_stores", "media_pools", "drives", "tasks", "schedules",
                     "migration_tasks", "events", "timezone", "state_dir", "broker_url"]),
    yaml_values, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_like)
def test_no_config_whatsoever_yields_anything_but_a_config_error(raw: dict[str, object]) -> None:
    try:
        parse_config(yaml.safe_dump(raw))
    except ConfigError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and ": " in p for p in exc.problems)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_yields_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as exc:
        assert exc.problems


def test_a_key_of_another_entity_is_not_suggested_as_itself() -> None:
    problems = problems_of("schedules: [{name: s, every: 5s, media_pool: x, evry: 3}]")
    assert "schedules[0].media_pool: unknown key 'media_pool' (line 1)" in problems
    assert "schedules[0].evry: unknown key 'evry' (did you mean 'every'?) (line 1)" in problems


@pytest.mark.parametrize(("encryption", "problem"), [
    ("{recipients: [age1bad]}", "tasks[0].encryption.recipients: age1bad… is not an age "
                                "recipient"),
    ("nothing", "tasks[0].encryption: bad value 'nothing'"),
    ("{recipients: []}", "tasks[0].encryption.recipients: bad value []"),
])
def test_a_bad_encryption_of_a_task_is_named_with_its_path(encryption: str,
                                                            problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"tasks: [{{name: a, source: s, encryption: {encryption}}}]")
    assert problem in str(caught.value)


def test_a_task_says_none_or_takes_the_default_encryption_or_its_own(tmp_path: Path) -> None:
    own, default = Identity.generate().recipient, Identity.generate().recipient
    path = tmp_path / "backstop.yaml"
    path.write_text(f"""
encryption: {{recipients: [{default}], identity_file: keys/ops.key}}
tasks:
  - {{name: plain, source: s, encryption: none}}
  - {{name: usual, source: s}}
  - {{name: hr, source: s, encryption: {{recipients: [{own}]}}}}
""")
    settings = load_settings(str(path), {})
    assert settings.encryption_of("plain") is None
    assert settings.encryption_of("usual").recipients == [str(default)]  # type: ignore[union-attr]
    assert settings.encryption_of("hr").recipients == [str(own)]  # type: ignore[union-attr]
    assert settings.identity_file_of("hr") == tmp_path / "keys" / "ops.key"
    env = load_settings(str(path), {"BACKSTOP_IDENTITY_FILE": "/k/elsewhere.key"})
    assert env.identity_file_of("usual") == Path("/k/elsewhere.key")


@pytest.mark.parametrize(("hooks", "problem"), [
    ("before: [[]]", "tasks[0].before[0]: bad value []"),
    ('after: [[""]]', "tasks[0].after[0][0]: bad value ''"),
    ("hook_timeout: soon", "tasks[0].hook_timeout"),
])
def test_bad_hooks_are_named_with_their_path(hooks: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"tasks: [{{name: a, source: s, {hooks}}}]")
    assert problem in str(caught.value)
