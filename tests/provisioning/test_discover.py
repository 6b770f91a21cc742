from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from provisioning import discover
from provisioning.cli import main
from provisioning.inventory import Inventory

NODE_A = "a" * 52
NODE_B = "b" * 52


@pytest.fixture
def announced() -> Iterator[None]:
    """Two boxes announcing _bitchat._tcp on loopback, as the agent's dashboard does."""
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    infos = [
        ServiceInfo(
            discover.SERVICE,
            f"{name}.{discover.SERVICE}",
            addresses=[socket.inet_aton("127.0.0.1")],
            port=port,
            properties={"node_id": node, "version": "0.1.0", "path": "/"},
            server=f"{name}.local.",
        )
        for name, port, node in (("bitchat-aaaaaa", 8081, NODE_A), ("bitchat-bbbbbb", 8082, NODE_B))
    ]
    for info in infos:
        zc.register_service(info)
    try:
        yield
    finally:
        zc.unregister_all_services()
        zc.close()


def test_browse_finds_announced_boxes(announced: None) -> None:
    found = discover.browse(timeout=2.0, interfaces=["127.0.0.1"])
    by_name = {f.name: f for f in found}
    assert set(by_name) >= {"bitchat-aaaaaa", "bitchat-bbbbbb"}
    a = by_name["bitchat-aaaaaa"]
    assert (a.node_id, a.version, a.port, a.problem) == (NODE_A, "0.1.0", 8081, None)
    assert a.url == "http://127.0.0.1:8081/"


def test_cli_lists_only_new_boxes(announced: None, tmp_path: Path) -> None:
    db = tmp_path / "inv.db"
    Inventory(db).upsert("10.0.0.9:22", host="10.0.0.9", port=22, user="pi", node_id=NODE_A)
    args = ["discover", "--timeout", "2", "--interface", "127.0.0.1", "--inventory", str(db)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "bitchat-bbbbbb" in res.output and "bitchat-aaaaaa" not in res.output
    res = CliRunner().invoke(main, [*args, "--all"])
    assert "enrolled" in res.output and "bitchat-aaaaaa" in res.output


txt = st.dictionaries(
    st.sampled_from([b"node_id", b"version", b"path", b"other"]),
    st.one_of(st.none(), st.binary(max_size=300)),
    max_size=4,
)


@given(
    st.text(max_size=80), st.lists(st.text(max_size=40), max_size=3), st.integers(-5, 70000), txt
)
def test_hostile_announcements_are_marked_not_trusted(
    name: str, addrs: list[str], port: int, props: dict[bytes, bytes | None]
) -> None:
    found = discover.parse_announcement(name, addrs, port, props)
    assert found.node_id is None or len(found.node_id) == 52
    assert found.path.startswith("/") and len(found.name) <= 63
    if not 0 < port < 65536:
        assert found.problem and "bad port" in found.problem
