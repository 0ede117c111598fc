"""`backstop up` checks every port it will listen on before it starts anything, and the data
service names the address it cannot listen on."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from click.testing import CliRunner

from backstop.orchestration.cli import main


def taken_port(stack: ExitStack, address: str = "127.0.0.1") -> int:
    sock = stack.enter_context(socket.socket())
    sock.bind((address, 0))
    sock.listen()
    return int(sock.getsockname()[1])


def config_with_interface(tmp_path: Path, port: int) -> Path:
    """An RDS whose one interface listens on 127.0.0.2:``port``."""
    config = tmp_path / "backstop.yaml"
    config.write_text(f"""
rds: [{{name: local, interfaces: [{{name: lan, address: 127.0.0.2, port: {port}}}]}}]
data_stores: [{{name: a, rds: local, path: stores/a, create: true}}]
""")
    return config


@pytest.fixture
def ports() -> Iterator[tuple[int, int, int]]:
    with ExitStack() as stack:
        yield taken_port(stack), taken_port(stack), taken_port(stack, "127.0.0.2")


def test_up_names_every_taken_port_and_starts_nothing(tmp_path: Path,
                                                      ports: tuple[int, int, int]) -> None:
    flower, metrics, data = ports
    config = config_with_interface(tmp_path, data)
    done = CliRunner().invoke(main, ["up", "-c", str(config), "--flower-port", str(flower),
                                     "--metrics-port", str(metrics)])
    assert done.exit_code == 2, done.output
    assert f"127.0.0.1:{flower} (Flower) is in use" in done.output
    assert f"127.0.0.1:{metrics} (metrics) is in use" in done.output
    assert f"127.0.0.2:{data} (data service of RDS local, interface lan) is in use" in (
        done.output)
    assert not (tmp_path / ".backstop" / "broker").exists()
    assert not (tmp_path / "stores").exists()


def test_serve_on_a_taken_port_names_the_address_and_port(tmp_path: Path,
                                                          ports: tuple[int, int, int]) -> None:
    _, _, data = ports
    config = config_with_interface(tmp_path, data)
    done = CliRunner().invoke(main, ["serve", "--rds", "local", "-c", str(config)],
                              env={"BACKSTOP_DATA_TOKEN": "secret-token-for-the-test"})
    assert done.exit_code == 2, done.output
    assert f"127.0.0.2:{data} (interface lan)" in done.output
    assert "in use" in done.output
