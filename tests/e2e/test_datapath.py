"""SPEC section 9 under real faults: client workers, RDS data services on loopback addresses
of their own, and the network path between them broken for real (an nftables blackhole, a
stopped or killed data service, a full file system, a certificate nobody trusts). Every
test ends with the shared audit."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backstop.constants import CONTROL_QUEUE
from backstop.orchestration.broker import free_port
from backstop.settings import load_settings
from backstop.workers.remote import probe_interfaces
from tests.e2e.conftest import Fleet, bulk_source
from tests.fleet import run_records, running_run
from tests.fs import tmpfs
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-data-token-0123456789abcdef"

DATAPATH = """
state_dir: .backstop
rds:
  - name: near
    interfaces: [{{name: near-a, address: 127.0.0.2, port: {a}}},
                 {{name: near-b, address: 127.0.0.4, port: {b}}}]
  - name: far
    interfaces: [{{name: far-a, address: 127.0.0.3, port: {f}}}]
clients: [{{name: web1}}]
data_stores:
  - {{name: near-store, rds: near, path: {near}, create: true}}
  - {{name: far-store, rds: far, path: stores/far, create: true}}
media_pools:
  - {{name: near-pool, data_store: near-store, retention: 14d}}
  - {{name: far-pool, data_store: far-store, retention: 14d}}
tasks: [{{name: www, client: web1, source: bulk}}]
data_path: {{connect_timeout: 2s, io_timeout: 3s{tls}}}
events:
  - {{name: via-a, task: www, level: FULL, media_pool: near-pool, interface: near-a,
     failover_event: via-b}}
  - {{name: via-b, task: www, level: FULL, media_pool: near-pool, interface: near-b}}
  - {{name: to-near, task: www, level: FULL, media_pool: near-pool, interface: near-a,
     failover_event: to-far}}
  - {{name: to-far, task: www, level: FULL, media_pool: far-pool}}
"""


def datapath_config(near: str = "stores/near", tls: str = "") -> str:
    ports = {"a": free_port("127.0.0.2"), "b": free_port("127.0.0.4"),
             "f": free_port("127.0.0.3")}
    return DATAPATH.format(near=near, tls=tls, **ports)


def start_fleet(fleet: Fleet, clients: tuple[str, ...] = ("web1-a",)) -> Fleet:
    """A control worker, data services for near and far, client workers and a beat."""
    fleet.env["BACKSTOP_DATA_TOKEN"] = TOKEN
    fleet.start("control", "worker", "--control", "--concurrency", "2")
    for rds in ("near", "far"):
        fleet.start(f"serve-{rds}", "serve", "--rds", rds)
    for name in clients:
        fleet.start(name, "worker", "--client", "web1", "--concurrency", "1")
    fleet.start("beat", "beat")
    fleet.serving(set(), control=True)
    settings = load_settings(str(fleet.config), fleet.env)
    wait_for(lambda: all(probe_interfaces(settings, TOKEN).values()),
             "every data service to answer", limit_s=60, every_s=0.5)
    wait_for(lambda: any("web1" in w.clients for w in fleet.live()), "the client worker")
    return fleet


def occur(fleet: Fleet, event: str, occurrence: str) -> str:
    fleet.send("backstop.dispatch", [occurrence, event, "adhoc"], CONTROL_QUEUE)
    return occurrence


def staged_bytes(store: Path) -> int:
    """Bytes of stagings in a store (what a client has sent of a saveset so far).

    A staging may be dropped while it is counted: what vanishes counts as nothing.
    """
    total = 0
    for top, _dirs, files in os.walk(store):
        for name in files:
            if ".partial-" not in top and ".partial-" not in name:
                continue
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(top, name)).st_size
    return total


def mid_stream(fleet: Fleet, occurrence: str, store: Path) -> None:
    """Wait until the run of ``occurrence`` is running and its data is arriving."""
    running_run(fleet.ledger, occurrence)
    wait_for(lambda: staged_bytes(store) > 0, "data to arrive in the store", limit_s=30,
             every_s=0.01)


@pytest.fixture
def datapath(make_fleet: Callable[[str], Fleet]) -> Fleet:
    fleet = make_fleet(datapath_config())
    bulk_source(fleet.root / "bulk")
    return fleet


@pytest.fixture
def blackhole() -> Iterator[Callable[[str, int], None]]:
    """Drop every packet to one address:port, for real (nftables); removed afterwards."""
    if shutil.which("nft") is None:
        pytest.skip("nft is not installed")
    table = f"backstop_test_{os.getpid()}"
    made = subprocess.run(["nft", "add", "table", "inet", table], capture_output=True,
                          text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"nftables cannot be used here: {made.stderr.strip()}")

    def drop(address: str, port: int) -> None:
        subprocess.run(["nft", "add", "chain", "inet", table, "out",
                        "{ type filter hook output priority 0 ; }"], check=True)
        subprocess.run(["nft", "add", "rule", "inet", table, "out", "ip", "daddr", address,
                        "tcp", "dport", str(port), "drop"], check=True)

    yield drop
    subprocess.run(["nft", "delete", "table", "inet", table], check=True)


def port_of(fleet: Fleet, interface: str) -> int:
    settings = load_settings(str(fleet.config), fleet.env)
    return next(settings.config.port_of(i) for r in settings.config.rds
                for i in r.interfaces if i.name == interface)


def test_a_blackholed_interface_fails_over_to_the_other_interface_of_the_rds(
        datapath: Fleet, blackhole: Callable[[str, int], None]) -> None:
    fleet = start_fleet(datapath)
    blackhole("127.0.0.2", port_of(fleet, "near-a"))
    fleet.settled([occur(fleet, "via-a", "dark")], limit_s=90)
    original, failover = run_records(fleet.ledger, "dark")
    assert (original["state"], original["error"]["reason"], original["interface"]) == (
        "storage_unavailable", "rds_unreachable", "near-a")
    assert "connect_timeout" in original["error"]["message"]
    assert (failover["state"], failover["event"], failover["interface"]) == (
        "succeeded", "via-b", "near-b")
    assert failover["data_store"] == "near-store"  # the same RDS, through its other path
    found = fleet.audit(["dark"])
    assert (found.savesets, found.failovers) == (1, {"rds_unreachable": 1})


def test_a_data_service_stalled_mid_stream_fails_over_and_drops_what_was_staged(
        datapath: Fleet) -> None:
    fleet = start_fleet(datapath)
    occur(fleet, "to-near", "stalled")
    mid_stream(fleet, "stalled", fleet.root / "stores" / "near")
    fleet.signal("serve-near", signal.SIGSTOP)
    stalled_at = datetime.now(UTC)
    try:
        fleet.settled(["stalled"], limit_s=90)
    finally:
        fleet.signal("serve-near", signal.SIGCONT)
    original, failover = run_records(fleet.ledger, "stalled")
    assert (original["state"], original["error"]["reason"]) == (
        "storage_unavailable", "rds_unreachable")
    assert "io_timeout" in original["error"]["message"]
    # within connect_timeout + 2 x io_timeout (2 s + 2 x 3 s) of the stall, with a margin
    # for a loaded machine
    ended = datetime.fromisoformat(original["finished_at"]) - stalled_at
    assert ended < timedelta(seconds=8 + 6), ended
    assert (failover["state"], failover["data_store"]) == ("succeeded", "far-store")
    # once it runs again, the service drops the staging its client abandoned
    wait_for(lambda: staged_bytes(fleet.root / "stores" / "near") == 0,
             "the abandoned staging to be dropped", limit_s=30, every_s=0.2)
    found = fleet.audit(["stalled"])
    assert found.failovers == {"rds_unreachable": 1}


def test_a_data_service_killed_mid_stream_fails_over_and_leaves_nothing_once_back(
        datapath: Fleet) -> None:
    fleet = start_fleet(datapath)
    occur(fleet, "to-near", "killed")
    mid_stream(fleet, "killed", fleet.root / "stores" / "near")
    fleet.kill("serve-near")
    fleet.settled(["killed"], limit_s=90)
    original, failover = run_records(fleet.ledger, "killed")
    assert (original["state"], original["error"]["reason"]) == (
        "storage_unavailable", "rds_unreachable")
    assert (failover["state"], failover["data_store"]) == ("succeeded", "far-store")
    assert staged_bytes(fleet.root / "stores" / "near") > 0  # what the dead service left
    fleet.start("serve-near")  # a data service that starts drops it
    wait_for(lambda: staged_bytes(fleet.root / "stores" / "near") == 0,
             "the leftovers to be dropped", limit_s=30, every_s=0.2)
    found = fleet.audit(["killed"])
    assert found.failovers == {"rds_unreachable": 1}


def test_a_client_worker_killed_mid_run_is_replaced_by_another_one_saveset(
        datapath: Fleet) -> None:
    fleet = start_fleet(datapath, clients=("web1-a", "web1-b"))
    occur(fleet, "to-near", "twice")
    first = running_run(fleet.ledger, "twice")
    killed = fleet.owner_of(int(first["worker"].split(":")[1]))
    fleet.kill(killed)  # the client is still served by the other worker
    fleet.settled(["twice"], limit_s=120)
    [run] = run_records(fleet.ledger, "twice")  # no failover: not a storage problem
    assert (run["state"], run["data_store"], run["interface"]) == (
        "succeeded", "near-store", "near-a")
    assert run["attempts"] >= 2
    assert fleet.owner_of(int(run["worker"].split(":")[1])) in {"web1-a", "web1-b"} - {killed}
    found = fleet.audit(["twice"])
    assert (found.savesets, found.failovers) == (1, {})


def test_a_store_filling_up_mid_stream_fails_over_with_out_of_space(
        make_fleet: Callable[[str], Fleet], tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", 400 << 20) as mount:
        fleet = make_fleet(datapath_config(near=str(mount / "near")))
        bulk_source(fleet.root / "bulk")
        start_fleet(fleet)
        occur(fleet, "to-near", "crowded")
        mid_stream(fleet, "crowded", mount / "near")
        with open(mount / "filler", "wb") as filler:  # someone else takes the space
            try:
                while True:
                    filler.write(os.urandom(1 << 20))
            except OSError:
                pass
        fleet.settled(["crowded"], limit_s=90)
        original, failover = run_records(fleet.ledger, "crowded")
        (mount / "filler").unlink()
        assert (original["state"], original["error"]["reason"]) == (
            "storage_unavailable", "out_of_space")
        assert (failover["state"], failover["data_store"]) == ("succeeded", "far-store")
        found = fleet.audit(["crowded"])
        assert found.failovers == {"out_of_space": 1}
        fleet.stop()


def make_ca(root: Path, name: str) -> tuple[Path, Path]:
    """A test CA (key, certificate) made by openssl."""
    key, cert = root / f"{name}.key", root / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return key, cert


def make_server_cert(root: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for the loopback addresses of the data services, signed by ``ca``."""
    key, csr, cert = root / "server.key", root / "server.csr", root / "server.pem"
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=rds",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.2,IP:127.0.0.3,IP:127.0.0.4\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey",
                    str(ca[0]), "-CAcreateserial", "-days", "2", "-extfile",
                    str(root / "san.ext"), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = make_ca(pki, "ca")
    _, stranger = make_ca(pki, "stranger")
    key, cert = make_server_cert(pki, ca)
    return {"key": key, "cert": cert, "ca": ca[1], "stranger": stranger}


def test_tls_backs_up_over_https_and_a_client_that_does_not_trust_the_rds_fails_over(
        make_fleet: Callable[[str], Fleet], certificates: dict[str, Path]) -> None:
    tls = (f", tls: {{cert: {certificates['cert']}, key: {certificates['key']}, "
           f"ca: {certificates['ca']}}}")
    text = datapath_config(tls=tls)
    fleet = make_fleet(text)
    bulk_source(fleet.root / "bulk", files=4, size=1 << 20)
    start_fleet(fleet)
    fleet.settled([occur(fleet, "via-a", "trusted")], limit_s=60)
    [trusted] = run_records(fleet.ledger, "trusted")
    assert (trusted["state"], trusted["interface"]) == ("succeeded", "near-a")
    # the client now checks the RDS against a CA that did not sign its certificate (the
    # data services keep the config they started with)
    fleet.config.write_text(text.replace(str(certificates["ca"]),
                                         str(certificates["stranger"])))
    fleet.kill("web1-a")
    fleet.start("web1-a")
    wait_for(lambda: any("web1" in w.clients for w in fleet.live()), "the client worker")
    fleet.settled([occur(fleet, "via-a", "distrusted")], limit_s=60)
    original, failover = run_records(fleet.ledger, "distrusted")
    assert (original["state"], original["error"]["reason"]) == (
        "storage_unavailable", "rds_unreachable")
    assert "certificate" in original["error"]["message"].lower()
    assert failover["state"] == "storage_unavailable"  # the same CA checks the other path
    fleet.config.write_text(text)  # the audit reads as the operator does
    found = fleet.audit(["trusted", "distrusted"])
    assert found.savesets == 1
