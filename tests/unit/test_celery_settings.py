"""The Celery settings that Backstop's guarantees rest on."""

from __future__ import annotations

from backstop.config_load import parse_config
from backstop.orchestration.celery_app import celery_config
from tests.conftest import MINIMAL_CONFIG


def test_json_only_late_acks_and_one_message_at_a_time() -> None:
    conf = celery_config(parse_config(MINIMAL_CONFIG), "redis://127.0.0.1:1/0")
    assert conf["accept_content"] == ["json"]
    assert conf["result_accept_content"] == ["json"]
    assert {conf["task_serializer"], conf["result_serializer"], conf["event_serializer"]} == {
        "json"}
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert conf["result_extended"]


def test_a_message_is_never_redelivered_while_its_backup_may_still_run() -> None:
    config = parse_config(MINIMAL_CONFIG + "\nbackup_time_limit: 2h\n")
    conf = celery_config(config, "redis://127.0.0.1:1/0")
    assert conf["broker_transport_options"]["visibility_timeout"] > 2 * 3600


def test_queues_are_the_control_and_notify_queues_and_one_per_rds() -> None:
    conf = celery_config(parse_config(MINIMAL_CONFIG), "redis://127.0.0.1:1/0")
    assert [q.name for q in conf["task_queues"]] == [
        "backstop.control", "backstop.notify", "backstop.rds.local"]


def test_a_send_rides_out_a_promotion_of_some_seconds() -> None:
    policy = celery_config(parse_config(MINIMAL_CONFIG),
                           "redis://127.0.0.1:1/0")["task_publish_retry_policy"]
    waits = [min(policy["interval_start"] + i * policy["interval_step"], policy["interval_max"])
             for i in range(policy["max_retries"])]
    assert 15 <= sum(waits) <= 40
