"""A leader lease in Redis: one holder at a time, lost unless renewed.

The holder renews the lease on every beat tick; if it dies, the lease runs out after
``ttl_s`` and the next standby that asks becomes the leader. Renewal and release only touch
the lease when it still names the caller, so a holder that was paused past its lease can
never take it back from its successor.
"""

from __future__ import annotations

import redis

# Renew: extend the lease only if we still hold it. Release: delete it only if we hold it.
# (The run ledger renews run leases with the same script.)
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaderLease:
    def __init__(self, client: redis.Redis, key: str, holder: str, ttl_s: float) -> None:
        self.client = client
        self.key = key
        self.holder = holder
        self.ttl_ms = int(ttl_s * 1000)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        """Renew the lease if held, else try to take it; True when we are the leader now."""
        if self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]):
            return True
        return bool(self.client.set(self.key, self.holder, nx=True, px=self.ttl_ms))

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.holder])


def current_leader(client: redis.Redis, key: str) -> str | None:
    value = client.get(key)
    return value.decode() if isinstance(value, bytes) else value
