"""References between config entities: every name must exist and be of the right kind.

Works on the raw mappings of the file, not on validated models, so that an entity with a bad
value of its own still has its references checked: every problem is reported in one pass.
Returns problems as ``path: message`` strings.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

from backstop.config import DEFAULT_DATA_PORT

# Section -> how an entity of that section is called in messages.
ENTITY = {
    "rds": "RDS",
    "data_stores": "data store",
    "media_pools": "media pool",
    "drives": "drive",
    "clients": "client",
    "tasks": "task",
    "schedules": "schedule",
    "migration_tasks": "migration task",
    "events": "event",
}

Raw = dict[str, Any]


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def text(entity: Raw, key: str) -> str | None:
    value = entity.get(key)
    return value if isinstance(value, str) else None


def mappings(value: Any) -> Iterator[tuple[int, Raw]]:
    for index, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, dict):
            yield index, item


class RefChecker:
    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.sections = {s: list(mappings(raw.get(s))) for s in ENTITY}
        self.named = {s: {n: e for _, e in items if (n := text(e, "name")) is not None}
                      for s, items in self.sections.items()}
        self.problems: list[str] = []

    def report(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def entries(self, section: str) -> Iterator[tuple[str, Raw]]:
        for index, entity in self.sections[section]:
            yield f"{section}[{index}]", entity

    def exists(self, path: str, section: str, name: str | None) -> bool:
        """Report an unknown name; True when the name is defined in ``section``."""
        if name is None:
            return False
        known = self.named[section]
        if name in known:
            return True
        self.report(path, f"unknown {ENTITY[section]} {name!r}{did_you_mean(name, known)}")
        return False

    def store_of_pool(self, pool: str | None) -> str | None:
        return text(self.named["media_pools"].get(pool or "", {}), "data_store")


def check_duplicates(c: RefChecker) -> None:
    for section, what in ENTITY.items():
        _check_unique(c, [(f"{section}[{i}]", e) for i, e in c.sections[section]], what)
    for path, rds in c.entries("rds"):
        interfaces = [(f"{path}.interfaces[{i}]", e) for i, e in mappings(rds.get("interfaces"))]
        _check_unique(c, interfaces, "interface")
    for path, task in c.entries("tasks"):
        streams = [(f"{path}.streams[{i}]", e) for i, e in mappings(task.get("streams"))]
        _check_unique(c, streams, "stream")


def _check_unique(c: RefChecker, entities: list[tuple[str, Raw]], what: str) -> None:
    first: dict[str, str] = {}
    for path, entity in entities:
        name = text(entity, "name")
        if name is None:
            continue
        if name in first:
            c.report(f"{path}.name", f"duplicate {what} name {name!r} (first at {first[name]})")
        else:
            first[name] = path


def check_addresses(c: RefChecker) -> None:
    """Two interfaces (of any RDS) on one address and port would be one listening socket."""
    data_path = c.raw.get("data_path")
    default = data_path.get("port") if isinstance(data_path, dict) else None
    first: dict[tuple[str, Any], str] = {}
    for path, rds in c.entries("rds"):
        for i, interface in mappings(rds.get("interfaces")):
            where = f"{path}.interfaces[{i}]"
            address = text(interface, "address")
            port = interface.get("port") or default or DEFAULT_DATA_PORT
            if address is None:
                continue
            if (address, port) in first:
                c.report(where, f"address {address}:{port} is taken by "
                                f"{first[(address, port)]} already")
            else:
                first[(address, port)] = where


def check_clients(c: RefChecker) -> None:
    for path, task in c.entries("tasks"):
        c.exists(f"{path}.client", "clients", text(task, "client"))


def check_storage(c: RefChecker) -> None:
    for path, store in c.entries("data_stores"):
        c.exists(f"{path}.rds", "rds", text(store, "rds"))
    for path, drive in c.entries("drives"):
        c.exists(f"{path}.data_store", "data_stores", text(drive, "data_store"))
    for path, pool in c.entries("media_pools"):
        c.exists(f"{path}.data_store", "data_stores", text(pool, "data_store"))
        failover = text(pool, "failover_pool")
        if failover is not None and failover == text(pool, "name"):
            c.report(f"{path}.failover_pool", "a media pool cannot be its own failover pool")
        else:
            c.exists(f"{path}.failover_pool", "media_pools", failover)
    for path, migration in c.entries("migration_tasks"):
        target = text(migration, "target_pool")
        if c.exists(f"{path}.target_pool", "media_pools", target):
            check_drive_of_pool(c, f"{path}.drive", text(migration, "drive"), target)


def check_drive_of_pool(c: RefChecker, path: str, drive: str | None, pool: str | None) -> None:
    """A drive must be a write channel of the data store the pool lives in."""
    if not c.exists(path, "drives", drive):
        return
    drive_store = text(c.named["drives"][drive or ""], "data_store")
    pool_store = c.store_of_pool(pool)
    if drive_store and pool_store and drive_store != pool_store:
        c.report(path, f"drive {drive!r} belongs to data store {drive_store!r}, "
                       f"not to {pool_store!r} of media pool {pool!r}")


def check_interface(c: RefChecker, path: str, interface: str | None, pool: str | None) -> None:
    store = c.named["data_stores"].get(c.store_of_pool(pool) or "", {})
    rds_name = text(store, "rds")
    rds = c.named["rds"].get(rds_name or "")
    if interface is None or rds is None:
        return
    names = {n for _, i in mappings(rds.get("interfaces")) if (n := text(i, "name"))}
    if interface not in names:
        c.report(path, f"unknown interface {interface!r} of RDS {rds_name!r}"
                       f"{did_you_mean(interface, names)}")


def event_kind(event: Raw) -> Any:
    return event.get("kind", "backup")


def check_backup_event(c: RefChecker, path: str, event: Raw) -> None:
    c.exists(f"{path}.task", "tasks", text(event, "task"))
    pool = text(event, "media_pool")
    if c.exists(f"{path}.media_pool", "media_pools", pool):
        check_drive_of_pool(c, f"{path}.drive", text(event, "drive"), pool)
        check_interface(c, f"{path}.interface", text(event, "interface"), pool)
    c.exists(f"{path}.migration_task", "migration_tasks", text(event, "migration_task"))
    failover = text(event, "failover_event")
    if failover is not None and failover == text(event, "name"):
        c.report(f"{path}.failover_event", "an event cannot be its own failover event")
    elif c.exists(f"{path}.failover_event", "events", failover):
        kind = event_kind(c.named["events"][failover or ""])
        if kind != "backup":
            c.report(f"{path}.failover_event", f"event {failover!r} is a {kind} event; "
                                               "a failover event must be a backup event")


def check_events(c: RefChecker) -> None:
    for path, event in c.entries("events"):
        c.exists(f"{path}.schedule", "schedules", text(event, "schedule"))
        for j, follow_up in mappings(event.get("follow_ups")):
            c.exists(f"{path}.follow_ups[{j}].event", "events", text(follow_up, "event"))
        if event_kind(event) == "backup":
            check_backup_event(c, path, event)
        elif event_kind(event) == "verify":
            c.exists(f"{path}.task", "tasks", text(event, "task"))
    check_follow_up_cycles(c)


def follow_up_targets(event: Raw) -> list[str]:
    return [t for _, f in mappings(event.get("follow_ups")) if (t := text(f, "event"))]


def check_follow_up_cycles(c: RefChecker) -> None:
    """A follow-up chain that comes back to its start would trigger occurrences forever."""
    reported: set[frozenset[str]] = set()
    for path, event in c.entries("events"):
        start = text(event, "name")
        cycle = _find_cycle(start, c.named["events"]) if start else None
        if cycle and frozenset(cycle) not in reported:
            reported.add(frozenset(cycle))
            c.report(f"{path}.follow_ups", "follow-up cycle " + " -> ".join([*cycle, cycle[0]]))


def _find_cycle(start: str, events: dict[str, Raw]) -> list[str] | None:
    stack: list[list[str]] = [[start]]
    seen: set[str] = set()
    while stack:
        trail = stack.pop()
        for target in follow_up_targets(events.get(trail[-1], {})):
            if target == start:
                return trail
            if target not in seen:
                seen.add(target)
                stack.append([*trail, target])
    return None


def check_references(raw: Raw) -> list[str]:
    """Every reference problem of the file, duplicates first."""
    checker = RefChecker(raw)
    check_duplicates(checker)
    check_addresses(checker)
    check_clients(checker)
    check_storage(checker)
    check_events(checker)
    return checker.problems
