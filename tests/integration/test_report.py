"""SPEC section 10 `backstop report`, days_until_full and drills, on a real fleet."""

from __future__ import annotations

import time
from datetime import timedelta

import redis
from click.testing import CliRunner

from backstop.constants import POOL_USED_KEY
from backstop.orchestration.cli import main
from backstop.orchestration.growth import days_until_full, sample_pools
from backstop.runs import utc_now
from tests.integration.test_orchestration import Fleet, fleet  # noqa: F401 - the fixture
from tests.invariants import cli_json


def test_report_counts_each_task_s_occurrences_and_each_pool(
        fleet: Fleet) -> None:  # noqa: F811 - the imported fixture
    # Given a backup that fails over, a plain one, and one whose source is gone
    fleet.settled(fleet.occur("to-tiny"))
    fleet.settled(fleet.occur("plain"))
    fleet.settled(fleet.occur("broken-source"))
    config = fleet.root / "backstop.yaml"
    env = {"BACKSTOP_BROKER_URL": fleet.app.conf.broker_url}
    # When the operator asks what happened in the last day
    found = cli_json(config, "report", "--since", "24h", env=env)
    # Then each task has its line, and succeeded + failed add up to its occurrences
    tasks = {t["task"]: t for t in found["tasks"]}
    assert set(found) >= {"since", "until", "tasks", "pools"}
    docs = tasks["docs"]
    assert (docs["occurrences"], docs["succeeded"], docs["failed"], docs["failed_over"]) == (
        2, 2, 0, 1)
    assert docs["bytes"] == 600_000 and docs["last_success"] is not None
    gone = tasks["gone"]
    assert (gone["occurrences"], gone["succeeded"], gone["failed"], gone["failed_over"],
            gone["last_success"], gone["bytes"]) == (1, 0, 1, 0, None, 0)
    pools = {p["name"]: p for p in found["pools"]}
    assert set(pools["spare"]) == {"name", "used_bytes", "free_bytes", "days_until_full"}
    assert pools["spare"]["used_bytes"] > 0 and pools["spare"]["days_until_full"] is None
    # And a period after all of it counts nothing, but still knows the last success
    time.sleep(1.1)
    later = {t["task"]: t for t in cli_json(config, "report", "--since", "1s", env=env)["tasks"]}
    assert later["docs"]["occurrences"] == 0
    assert later["docs"]["last_success"] == docs["last_success"]
    # And pools --json carries days_until_full too
    assert all("days_until_full" in p for p in cli_json(config, "pools", env=env))


def test_days_until_full_follow_the_pool_s_growth(redis_client: redis.Redis) -> None:
    now = utc_now()
    pool = {"name": "daily", "used_bytes": 3_000, "free_bytes": 10_000}
    # Given a sample of 2 hours ago, when the pool held 1,000 bytes less
    two_hours_ago = (now - timedelta(hours=2)).timestamp()
    redis_client.zadd(POOL_USED_KEY.format(pool="daily"),
                      {f"{two_hours_ago:.0f}:2000": two_hours_ago})
    # Then it fills in 10,000 / (1,000 per 2 h) = 20 h
    assert days_until_full(redis_client, pool, now - timedelta(hours=24), now) == 0.8
    # And a period that holds no sample, or a pool that did not grow, says nothing
    assert days_until_full(redis_client, pool, now - timedelta(hours=1), now) is None
    assert days_until_full(redis_client, {**pool, "used_bytes": 1_500},
                           now - timedelta(hours=24), now) is None
    # And sampling again right away adds nothing, later it does
    sample_pools(redis_client, [pool], now)
    sample_pools(redis_client, [pool], now + timedelta(minutes=1))
    assert redis_client.zcard(POOL_USED_KEY.format(pool="daily")) == 2
    sample_pools(redis_client, [pool], now + timedelta(minutes=11))
    assert redis_client.zcard(POOL_USED_KEY.format(pool="daily")) == 3


def test_a_drill_runs_the_real_failover_path_and_its_runs_say_drill(
        fleet: Fleet) -> None:  # noqa: F811 - the imported fixture
    config = fleet.root / "backstop.yaml"
    env = {"BACKSTOP_BROKER_URL": fleet.app.conf.broker_url}
    # When the operator drills the event whose pool has one medium, as if it had no free one
    done = cli_json(config, "drill", "to-one-medium", "--reason", "no_free_media", "--wait",
                    env=env)
    # Then its first run ended no_free_media before writing, and the failover event ran
    assert done["succeeded"] is True
    original, rescue = done["runs"]
    assert (original["state"], original["error"]["reason"], original["saveset"]) == (
        "storage_unavailable", "no_free_media", None)
    assert original["error"]["message"].startswith("drill:")
    assert (rescue["event"], rescue["trigger"], rescue["state"]) == (
        "to-spare", "failover", "succeeded")
    assert original["drill"] is True and rescue["drill"] is True
    assert original["failover_run"] == rescue["run_id"]
    # And nothing was written to the drilled pool
    assert [s for s in cli_json(config, "savesets", env=env) if s["pool"] == "one-medium"] == []
    # And an ordinary run is no drill
    plain = cli_json(config, "run", "plain", "--wait", env=env)
    assert plain["runs"][0]["drill"] is False


def test_a_drill_of_what_cannot_fail_over_is_refused(
        fleet: Fleet) -> None:  # noqa: F811 - the imported fixture
    config = str(fleet.root / "backstop.yaml")
    env = {"BACKSTOP_BROKER_URL": fleet.app.conf.broker_url}
    runner = CliRunner()
    done = runner.invoke(main, ["drill", "note", "--reason", "out_of_space", "-c", config],
                         env=env)
    assert done.exit_code == 2 and "is a command event" in done.output
    done = runner.invoke(main, ["drill", "plain", "--reason", "gone", "-c", config], env=env)
    assert done.exit_code == 2 and "'gone' is not one of" in done.output
