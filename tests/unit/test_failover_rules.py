"""SPEC section 4, rule by rule, on the pure event resolution and failover functions."""

from __future__ import annotations

import pytest
import yaml

from backstop.config import Level
from backstop.config_load import parse_config
from backstop.orchestration.events import Unresolvable, failover_spec, resolve
from backstop.runs import Run, RunSpec, Trigger

CONFIG = """
rds: [{name: rds-a, interfaces: [{name: lan-a, address: 10.0.0.1}]},
      {name: rds-b, interfaces: [{name: lan-b, address: 10.0.0.2}]}]
data_stores:
  - {name: store-a, rds: rds-a, path: a}
  - {name: store-b, rds: rds-b, path: b}
  - {name: store-c, rds: rds-a, path: c}
media_pools:
  - {name: daily, data_store: store-a, retention: 14d, failover_pool: overflow}
  - {name: spare, data_store: store-b, retention: 14d, failover_pool: overflow}
  - {name: overflow, data_store: store-c, retention: 14d}
drives:
  - {name: drive-a, data_store: store-a, channels: 2}
  - {name: drive-b, data_store: store-b}
  - {name: drive-c, data_store: store-c}
clients: [{name: web1}]
tasks: [{name: docs, source: docs, client: web1}, {name: other, source: other}]
migration_tasks:
  - {name: offsite-a, target_pool: overflow}
  - {name: offsite-b, target_pool: overflow}
schedules: [{name: nightly, cron: "0 22 * * *"}]
events:
  - name: docs-nightly
    schedule: nightly
    task: docs
    level: INC
    enforce_full: true
    full_interval: 7d
    media_pool: daily
    drive: drive-a
    interface: lan-a
    follow_ups: [{event: verify-a, when: success}]
    migration_task: offsite-a
    failover_event: docs-spare
  - name: docs-spare
    schedule: nightly
    task: other
    level: FULL
    enforce_full: false
    media_pool: spare
    drive: drive-b
    interface: lan-b
    follow_ups: [{event: verify-b, when: always}]
    migration_task: offsite-b
    failover_event: docs-third
  - {name: docs-third, task: docs, media_pool: overflow}
  - {name: no-failover, task: docs, media_pool: daily}
  - {name: verify-a, kind: verify}
  - {name: verify-b, kind: verify}
"""


@pytest.fixture(scope="module")
def config():  # type: ignore[no-untyped-def]
    return parse_config(CONFIG)


def original(config, event: str = "docs-nightly") -> RunSpec:  # type: ignore[no-untyped-def]
    return resolve(config, event, Trigger.SCHEDULE)


def test_an_occurrence_resolves_to_the_events_settings(config) -> None:  # type: ignore[no-untyped-def]
    spec = original(config)
    assert (spec.task, spec.level, spec.enforce_full, spec.media_pool, spec.data_store,
            spec.rds, spec.drive, spec.interface, spec.migration_task) == (
        "docs", Level.INC, True, "daily", "store-a", "rds-a", "drive-a", "lan-a", "offsite-a")
    assert (spec.event, spec.origin_event, spec.failover_of) == ("docs-nightly",) * 2 + (None,)


def test_ad_hoc_overrides_of_level_and_enforce_full(config) -> None:  # type: ignore[no-untyped-def]
    spec = resolve(config, "docs-nightly", Trigger.ADHOC, Level.DIFF, enforce_full=False)
    assert (spec.level, spec.enforce_full, spec.trigger) == (Level.DIFF, False, Trigger.ADHOC)


@pytest.mark.parametrize(("name", "message"), [
    ("nope", "unknown event 'nope'"),
    ("verify-a", "is a verify event"),
])
def test_only_backup_events_resolve(config, name: str, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Unresolvable, match=message):
        resolve(config, name, Trigger.ADHOC)


# (field, kept from the original run, or taken from the failover event)
CARRIED = [
    ("task", "docs"), ("level", Level.INC), ("enforce_full", True),
    ("origin_event", "docs-nightly"),
]
REPLACED = [
    ("event", "docs-spare"), ("media_pool", "spare"), ("data_store", "store-b"),
    ("rds", "rds-b"), ("drive", "drive-b"), ("interface", "lan-b"),
    ("migration_task", "offsite-b"), ("trigger", Trigger.FAILOVER),
]


@pytest.mark.parametrize(("field", "expected"), CARRIED + REPLACED)
def test_the_failover_run_keeps_what_and_how_and_takes_where(config, field: str,  # type: ignore[no-untyped-def]
                                                             expected: object) -> None:
    decision = failover_spec(config, original(config), "run-1")
    assert decision.spec is not None
    assert getattr(decision.spec, field) == expected


def test_the_failover_run_keeps_full_interval_and_takes_follow_ups(config) -> None:  # type: ignore[no-untyped-def]
    spec = failover_spec(config, original(config), "run-1").spec
    assert spec is not None
    assert spec.full_interval == original(config).full_interval
    assert [(f.event, f.when.value) for f in spec.follow_ups] == [("verify-b", "always")]
    assert spec.failover_of == "run-1"


def test_a_failover_never_fails_over_again(config) -> None:  # type: ignore[no-untyped-def]
    first = failover_spec(config, original(config), "run-1").spec
    assert first is not None  # docs-spare has a failover event of its own ...
    second = failover_spec(config, first, "run-2")
    assert second.spec is None  # ... which is never used for a failover run
    assert "never fails over again" in second.why


def test_pool_level_failover_when_the_event_has_none(config) -> None:  # type: ignore[no-untyped-def]
    spec = failover_spec(config, original(config, "no-failover"), "run-1").spec
    assert spec is not None
    assert (spec.event, spec.media_pool, spec.data_store, spec.drive) == (
        "no-failover", "overflow", "store-c", "drive-c")
    assert spec.pool_redirect and spec.failover_of == "run-1"
    # follow-ups and migration stay the event's
    base = original(config, "no-failover")
    assert (spec.follow_ups, spec.migration_task) == (base.follow_ups, base.migration_task)


def test_a_pool_redirect_is_the_one_redirection_of_its_occurrence(config) -> None:  # type: ignore[no-untyped-def]
    redirected = failover_spec(config, original(config, "no-failover"), "run-1").spec
    assert redirected is not None
    assert failover_spec(config, redirected, "run-2").spec is None


def test_no_failover_where_neither_event_nor_pool_has_one() -> None:
    raw = yaml.safe_load(CONFIG)
    for pool in raw["media_pools"]:
        pool.pop("failover_pool", None)
    config = parse_config(yaml.safe_dump(raw))
    decision = failover_spec(config, resolve(config, "no-failover", Trigger.SCHEDULE), "r")
    assert decision.spec is None
    assert "no failover event" in decision.why


def test_run_specs_survive_json(config) -> None:  # type: ignore[no-untyped-def]
    spec = failover_spec(config, original(config), "run-1").spec
    assert spec is not None
    stored = Run.for_backup("run-2", "occurrence", spec).encoded()
    assert Run.decode(stored, "run-2").spec == spec
