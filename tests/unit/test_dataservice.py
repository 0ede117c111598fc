"""The RDS data service on its own (a real service on loopback, no broker): tokens, what a
client's token may reach, and ids from requests that must never become paths."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backstop.errors import StorageUnavailable
from backstop.model import SavesetKey
from backstop.orchestration.broker import free_port
from backstop.orchestration.cli import main
from backstop.settings import load_settings
from backstop.workers.remote import Endpoint, RemoteStore
from backstop.workers.serve import Listening, service_for

FLEET = "fleet-token-of-the-unit-tests-0123"
WEB1 = "token-of-client-web1-0123456789ab"

CONFIG = """
rds: [{{name: r1, interfaces: [{{name: lo, address: 127.0.0.1, port: {port}}}]}}]
clients: [{{name: web1, token_file: web1.token}}, {{name: web2}}]
data_stores: [{{name: a, rds: r1, path: store}}]
tasks: [{{name: www, client: web1, source: www}}, {{name: db, client: web2, source: db}}]
data_path: {{io_timeout: 2s}}
"""


@dataclass
class Service:
    url: str
    root: Path
    store_root: Path
    opened: list[RemoteStore] = field(default_factory=list)

    def store(self, token: str) -> RemoteStore:
        """Store ``a`` as a holder of ``token`` reaches it (closed after the test)."""
        self.opened.append(RemoteStore("a", Endpoint(self.url, "lo", token, 2.0, 2.0)))
        return self.opened[-1]

    def close(self) -> None:
        while self.opened:
            self.opened.pop().close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    port = free_port()
    (root / "backstop.yaml").write_text(CONFIG.format(port=port))
    (root / "web1.token").write_text(WEB1 + "\n")
    settings_ = load_settings(str(root / "backstop.yaml"), {"BACKSTOP_DATA_TOKEN": FLEET})
    listening = Listening(settings_, "r1", service_for(settings_, "r1"))
    for store in listening.service.stores.values():
        store.init()
    listening.start()
    yield Service(f"http://127.0.0.1:{port}", root, root / "store")
    listening.stop()


@pytest.fixture(autouse=True)
def closed_after(service: Service) -> Iterator[None]:
    yield
    service.close()


def write(store: RemoteStore, task: str, saveset_id: str) -> SavesetKey:
    key = SavesetKey("daily", "DAILY00001", saveset_id)
    staging = store.stage(key, 4096)
    with staging.open("archive.tar.zst") as out:
        out.write(b"data of " + saveset_id.encode())
    with staging.open("saveset.json") as out:
        out.write(json.dumps({"id": saveset_id, "task": task}).encode())
    staging.commit()
    return key


def test_a_request_without_the_right_token_gets_401_and_the_token_is_not_logged(
        service: Service, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                        {"Authorization": FLEET}):
            answer = httpx.get(f"{service.url}/v1/stores/a/space", headers=headers)
            assert answer.status_code == 401
    assert "token refused" in caplog.text
    assert "wrong-token" not in caplog.text and FLEET not in caplog.text


def test_a_refused_token_is_store_offline_for_the_remote_store(service: Service) -> None:
    with pytest.raises(StorageUnavailable) as caught:
        service.store("not-the-token-0123456789").space()
    assert caught.value.reason == "store_offline"
    assert "refused the token" in caught.value.message


def test_a_client_token_reaches_its_own_savesets_only_and_never_deletes(
        service: Service) -> None:
    fleet, web1 = service.store(FLEET), service.store(WEB1)
    own = write(web1, "www", "www-own1")
    theirs = write(fleet, "db", "db-theirs1")
    with web1.read(own, "archive.tar.zst") as data:
        assert data.read() == b"data of www-own1"
    assert web1.list() == [own]  # the other client's saveset is not even listed
    for attempt in (lambda: web1.read(theirs, "archive.tar.zst"),
                    lambda: web1.find(theirs.saveset_id), lambda: web1.delete(own)):
        with pytest.raises(StorageUnavailable) as caught:
            attempt()
        assert "may not" in caught.value.message
    assert sorted(fleet.list()) == sorted([own, theirs])  # nothing was deleted


def test_a_client_cannot_commit_a_saveset_of_another_clients_task(service: Service) -> None:
    web1 = service.store(WEB1)
    with pytest.raises(StorageUnavailable):
        write(web1, "db", "db-forged1")
    assert service.store(FLEET).find("db-forged1") is None


IDS = st.one_of(
    st.sampled_from(["..", ".", "../..", "../../etc/passwd", "a/../../b", "/etc", "a\x00b",
                     "a" * 300, "%2e%2e", "..%2f..%2f", "~root", "é", "a b", "CON", "-x"]),
    st.text(min_size=1, max_size=40),
)


def _tree(root: Path) -> list[str]:
    """Every path under root; os.walk passes over a staging the service removes meanwhile."""
    return sorted(os.path.join(top, name) for top, dirs, files in os.walk(root)
                  for name in dirs + files)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(bad=IDS)
def test_ids_from_requests_never_become_paths(service: Service, bad: str) -> None:
    before = _tree(service.root)
    headers = {"Authorization": f"Bearer {FLEET}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=5) as http:
        quoted = quote(bad, safe="")
        answers = [
            http.get(f"/v1/stores/{quoted}/space"),
            http.get(f"/v1/stores/a/savesets/{quoted}"),
            http.get(f"/v1/stores/a/savesets/{quoted}/{quoted}/{quoted}/saveset.json"),
            http.delete(f"/v1/stores/a/savesets/daily/{quoted}/{quoted}"),
            http.post("/v1/stores/a/stagings", json={"pool": bad, "medium": bad,
                                                     "saveset_id": bad}),
            http.put(f"/v1/stagings/{quoted}/{quoted}", content=b"x"),
        ]
    assert all(a.status_code < 500 for a in answers), [(a.status_code, a.text) for a in answers]
    after = _tree(service.root)
    created = [p for p in after if p not in before]
    # a valid id may open a staging (inside the store); nothing else appears anywhere
    assert all(p.startswith(str(service.store_root / "pools")) for p in created), created


def test_serve_refuses_a_non_loopback_address_without_a_token(tmp_path: Path) -> None:
    (tmp_path / "backstop.yaml").write_text(
        "rds: [{name: r1, interfaces: [{name: all, address: 0.0.0.0}]}]\n"
        "data_stores: [{name: a, rds: r1, path: store}]\n")
    done = CliRunner().invoke(main, ["serve", "--rds", "r1", "-c",
                                     str(tmp_path / "backstop.yaml")], env={})
    assert done.exit_code == 2
    assert "refusing to serve RDS r1 on 0.0.0.0 without a data token" in done.output
    assert not (tmp_path / ".backstop" / "data-token").exists()


def test_a_saveset_staged_again_replaces_the_staging_its_dead_writer_left(
        service: Service) -> None:
    # Given a staging left open by a client that died between two segments
    fleet = service.store(FLEET)
    key = SavesetKey("daily", "DAILY00001", "www-rerun1")
    abandoned = fleet.stage(key, 4096)
    with abandoned.open("archive.tar.zst") as out:
        out.write(b"first attempt")
    # When the run is done again (another worker, the same saveset id)
    write(fleet, "www", "www-rerun1")
    # Then the saveset is there once, with what the second attempt wrote
    assert fleet.list().count(key) == 1
    with fleet.read(key, "archive.tar.zst") as data:
        assert data.read() == b"data of www-rerun1"
    assert not list((service.store_root / "pools").rglob(".partial-www-rerun1"))
