"""The counter series a config makes knowable: served at 0 from the first scrape."""

from __future__ import annotations

from backstop.config_load import parse_config
from backstop.orchestration.series import known_series, served

CONFIG = """
rds: [{name: local}]
data_stores:
  - {name: a, rds: local, path: a}
  - {name: b, rds: local, path: b}
media_pools:
  - {name: daily, data_store: a, retention: 7d, failover_pool: spare}
  - {name: spare, data_store: b, retention: 7d}
tasks: [{name: docs, source: src}]
notify: [{webhook: "http://127.0.0.1:1/hook", when: [failure]}]
events:
  - {name: nightly, task: docs, media_pool: daily, failover_event: rescue}
  - {name: rescue, task: docs, media_pool: spare}
  - {name: pooled, task: docs, media_pool: daily}
  - {name: check, kind: verify}
"""


def test_every_event_and_reason_and_failover_pair_is_known_before_anything_ran() -> None:
    known = known_series(parse_config(CONFIG, "test"))
    assert ("nightly", "out_of_space") in known["backstop_storage_unavailable"]
    assert len(known["backstop_storage_unavailable"]) == 3 * 4  # backup events x reasons
    assert known["backstop_failovers"] == {
        ("nightly", "rescue", "succeeded"), ("nightly", "rescue", "failed"),
        ("pooled", "pooled", "succeeded"), ("pooled", "pooled", "failed")}
    assert known["backstop_drills"] == known["backstop_failovers"]
    assert known["backstop_backup_bytes"] == {("docs", "daily"), ("docs", "spare")}
    assert known["backstop_notifications_failed"] == {("0",)}
    assert ("check", "", "follow_up", "succeeded") in known["backstop_runs"]
    assert ("rescue", "docs", "failover", "storage_unavailable") in known["backstop_runs"]
    assert not any(labels[3] in ("queued", "running") for labels in known["backstop_runs"])


def test_counted_series_keep_their_value_and_removed_ones_go() -> None:
    config = parse_config(CONFIG, "test")
    stored = {"backstop_storage_unavailable": {("nightly", "out_of_space"): 2.0,
                                               ("gone", "out_of_space"): 5.0}}
    found = served(stored, config)["backstop_storage_unavailable"]
    assert found[("nightly", "out_of_space")] == 2.0
    assert found[("nightly", "store_offline")] == 0.0
    assert ("gone", "out_of_space") not in found
