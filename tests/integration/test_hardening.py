"""Bad messages on the queues: refused or failed, nothing written, the worker carries on."""

from __future__ import annotations

import uuid

import pytest

from backstop.constants import CONTROL_QUEUE, OCCURRENCE_KEY, rds_queue
from tests.integration.test_orchestration import Fleet, fleet  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("fleet")


def untouched(fleet: Fleet, occurrence: str) -> bool:  # noqa: F811
    return not fleet.ledger.client.exists(OCCURRENCE_KEY.format(occ=occurrence))


def still_working(fleet: Fleet) -> None:  # noqa: F811
    [run] = fleet.settled(fleet.occur("plain"))
    assert run["state"] == "succeeded"


def test_a_pickle_message_is_refused_before_it_is_decoded(fleet: Fleet) -> None:  # noqa: F811
    occurrence = f"pickled-{uuid.uuid4().hex[:6]}"
    fleet.app.send_task("backstop.dispatch", args=[occurrence, "plain", "adhoc"],
                        queue=CONTROL_QUEUE, serializer="pickle", ignore_result=True)
    still_working(fleet)  # handled after the pickled message, which came first
    assert untouched(fleet, occurrence)


@pytest.mark.parametrize(("name", "args"), [
    ("backstop.dispatch", ["OCC", "no-such-event", "adhoc"]),
    ("backstop.dispatch", ["OCC", "check", "bogus-trigger"]),
    ("backstop.dispatch", ["OCC"]),
    ("backstop.dispatch", [["not", "a", "string"], {"no": 1}, 7]),
    ("backstop.backup", ["no-such-run"]),
    ("backstop.failover", ["no-such-run"]),
    ("backstop.verify", ["no-such-run"]),
    ("backstop.migrate", [None]),
])
def test_a_malformed_message_touches_nothing(fleet: Fleet, name: str,  # noqa: F811
                                             args: list[object]) -> None:
    occurrence = f"bad-{uuid.uuid4().hex[:6]}"
    args = [occurrence if a == "OCC" else a for a in args]
    queue = rds_queue("local") if name == "backstop.backup" else CONTROL_QUEUE
    before = set(fleet.ledger.client.keys("backstop:run:*"))
    fleet.app.send(name, args, queue, "malformed")
    still_working(fleet)
    assert untouched(fleet, occurrence)
    after = set(fleet.ledger.client.keys("backstop:run:*"))
    assert len(after - before) <= 2  # the run of still_working (and its lease, gone) only
