"""The reachability check: NatService.reach over loopback and POST /api/network/reach."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from node.agent import AgentContext
from node.identity import encode_id
from node.transport.nat.errors import NatError
from node.transport.nat.http import _node_id
from node.transport.nat.service import REACH_MAX
from node.web.app import make_app
from tests.nat.inproc import nat_of, start_nat
from tests.web.conftest import make_ctx

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(JSON)
def test_node_id_field_takes_only_a_base32_id(value: Any) -> None:
    try:
        raw = _node_id(value)
    except ValueError:
        return
    assert isinstance(value, str) and len(raw) == 32


async def _node(tmp: Path, name: str) -> AgentContext:
    return await start_nat(make_ctx(tmp / name))


async def test_reach_echoes_over_the_session_and_reports_the_path(tmp_path: Path) -> None:
    a, b = await _node(tmp_path, "a"), await _node(tmp_path, "b")
    endpoint = a.services["transport"].endpoint  # type: ignore[attr-defined]
    try:
        host, port = b.urls["listen"].rsplit(":", 1)
        await endpoint.connect((host, int(port)), timeout=5)
        result = await nat_of(a).reach(b.identity.node_id, size=REACH_MAX)
        assert result["path"] == "direct" and result["node_id"] == encode_id(b.identity.node_id)
        assert result["bytes"] == REACH_MAX and result["echo_s"] > 0
        with pytest.raises(NatError, match="use 1 to"):
            await nat_of(a).reach(b.identity.node_id, size=REACH_MAX + 1)
        # not connected and no overlay to look the node up in
        with pytest.raises(NatError, match="needs the overlay service"):
            await nat_of(a).reach(bytes(32))
        token = (a.data_dir / "admin.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        async with TestClient(TestServer(make_app(a))) as client:
            url = "/api/network/reach"
            body = {"node_id": encode_id(b.identity.node_id), "bytes": 64}
            assert (await client.post(url, json=body)).status == 401
            resp = await client.post(url, json=body, headers=auth)
            assert resp.status == 200 and (await resp.json())["path"] == "direct"
            for bad in ({}, {"node_id": "x"}, {"node_id": body["node_id"], "bytes": 0},
                        {"node_id": body["node_id"], "port": 1}):  # fmt: skip
                resp = await client.post(url, json=bad, headers=auth)
                assert resp.status == 400, (bad, await resp.text())
            resp = await client.post(url, json={"node_id": encode_id(bytes(32))}, headers=auth)
            assert resp.status == 502
            assert "overlay" in (await resp.json())["error"]
    finally:
        for ctx in (a, b):
            await ctx.services["transport"].endpoint.close()  # type: ignore[attr-defined]
            ctx.db.conn.close()
