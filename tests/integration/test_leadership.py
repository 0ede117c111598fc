"""Beat leadership: one lease holder at a time, takeover after the holder goes away."""

from __future__ import annotations

import time

import redis

from backstop.constants import BEAT_LEADER_KEY, BEAT_STANDBY_POLL_S
from backstop.orchestration.app import create_app
from backstop.orchestration.beat import LeaderScheduler
from backstop.orchestration.leader import LeaderLease, current_leader
from backstop.settings import Settings


def test_only_one_holder_at_a_time_and_a_standby_takes_over_after_expiry(
        redis_client: redis.Redis) -> None:
    first = LeaderLease(redis_client, "lease", "first", ttl_s=0.3)
    second = LeaderLease(redis_client, "lease", "second", ttl_s=0.3)
    assert first.hold()
    assert not second.hold()
    assert first.hold()  # renewal
    time.sleep(0.5)  # the first holder stops renewing, as if it had died
    assert second.hold()
    assert not first.hold()
    assert current_leader(redis_client, "lease") == "second"


def test_release_only_frees_a_lease_the_caller_holds(redis_client: redis.Redis) -> None:
    holder = LeaderLease(redis_client, "lease", "holder", ttl_s=30)
    other = LeaderLease(redis_client, "lease", "other", ttl_s=30)
    assert holder.hold()
    other.release()
    assert current_leader(redis_client, "lease") == "holder"
    holder.release()
    assert current_leader(redis_client, "lease") is None


def test_two_beat_schedulers_one_leads_and_the_other_takes_over_when_it_closes(
        settings: Settings, broker_url: str, redis_client: redis.Redis) -> None:
    app = create_app(settings, broker_url)
    first = LeaderScheduler(app, lazy=True)
    second = LeaderScheduler(app, lazy=True)
    second.lease.holder += ".second"  # both live in this process; give them distinct names

    first.tick()
    assert second.tick() == BEAT_STANDBY_POLL_S
    assert (first.leading, second.leading) == (True, False)
    assert current_leader(redis_client, BEAT_LEADER_KEY) == first.lease.holder

    first.close()
    second.tick()
    assert second.leading
    assert current_leader(redis_client, BEAT_LEADER_KEY) == second.lease.holder
    second.close()
