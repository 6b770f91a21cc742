"""The dashboard's JSON API, handlers driven through aiohttp's test client on a real context."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from node import __version__
from node.agent import AgentContext
from node.web import app as webapp
from node.web.openapi import spec
from tests.web.conftest import make_ctx, seed_earnings

Client = TestClient[web.Request, web.Application]


async def test_status_has_identity_version_and_update_state(
    client: Client, ctx: AgentContext
) -> None:
    resp = await client.get("/api/status")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["node_id"] == ctx.identity.node_id_text
    assert doc["version"] == __version__
    assert doc["update"]["available"] is False
    assert "bitchat-fleet upgrade" in doc["update"]["reason"]
    assert resp.headers["Content-Security-Policy"] == webapp.CSP


@pytest.mark.parametrize(
    ("section", "service"),
    [("earnings", "storage"), ("storage", "storage"), ("network", "transport"),
     ("hardware", "hwmon")],
)  # fmt: skip
async def test_section_without_its_service_says_why(
    client: Client, section: str, service: str
) -> None:
    resp = await client.get(f"/api/{section}")
    assert resp.status == 200
    doc = await resp.json()
    assert doc == {"available": False, "reason": doc["reason"]}
    assert f"the {service} service is not running" in doc["reason"]


async def test_network_from_the_real_transport_service(ctx: AgentContext) -> None:
    from node.transport.service import TransportService

    svc = TransportService(ctx)
    ctx.services["transport"] = svc
    async with TestClient(TestServer(webapp.make_app(ctx))) as client:
        doc = await (await client.get("/api/network")).json()
    assert doc == {"available": True, **json.loads(json.dumps(svc.network()))}
    assert doc["peers"] == [] and doc["sessions"] == 0


async def test_a_failing_service_is_reported_not_hidden(ctx: AgentContext) -> None:
    from node.transport.service import TransportService

    svc = TransportService(ctx)
    ctx.services["transport"] = svc
    # A real failure inside the service: its endpoint is gone.
    del svc.endpoint
    async with TestClient(TestServer(webapp.make_app(ctx))) as client:
        doc = await (await client.get("/api/network")).json()
        metrics = await (await client.get("/metrics")).text()
    assert doc["available"] is False
    assert doc["reason"].startswith("no network figures: the transport service failed (")
    assert 'bitchat_section_available{section="network"} 0.0' in metrics


async def test_hardware_from_the_real_hwmon_service(ctx: AgentContext) -> None:
    from node.hwmon.service import HwmonService

    svc = HwmonService(ctx)
    ctx.services["hwmon"] = svc
    async with TestClient(TestServer(webapp.make_app(ctx))) as client:
        doc = await (await client.get("/api/hardware")).json()
    assert doc["available"] is True
    assert doc == {"available": True, **json.loads(json.dumps(svc.hardware()))}


async def test_events_warnings_first_with_filters(client: Client, ctx: AgentContext) -> None:
    ctx.events.emit("info", "test", "first info")
    warn = ctx.events.emit("warning", "test", "a warning")
    ctx.events.emit("info", "test", "second info")
    err = ctx.events.emit("error", "test", "an error")
    doc = await (await client.get("/api/events")).json()
    messages = [e["message"] for e in doc["events"]]
    assert messages == ["an error", "a warning", "second info", "first info"]
    doc = await (await client.get("/api/events?level=warning")).json()
    assert [e["id"] for e in doc["events"]] == [err.id, warn.id]
    doc = await (await client.get("/api/events?limit=1")).json()
    assert [e["id"] for e in doc["events"]] == [err.id]
    doc = await (await client.get(f"/api/events?after={warn.id}")).json()
    assert [e["message"] for e in doc["events"]] == ["an error", "second info"]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("limit=0", "'limit': expected an integer from 1 to 500"),
        ("limit=abc", "'limit': expected an integer"),
        ("limit=-1", "'limit'"),
        ("level=debug", "'level': expected one of info, warning, error"),
        ("limit=1&limit=2", "given more than once"),
        ("bogus=1", "unknown query parameter 'bogus'"),
    ],
)
async def test_events_bad_query_is_400(client: Client, query: str, fragment: str) -> None:
    resp = await client.get(f"/api/events?{query}")
    assert resp.status == 400
    doc = await resp.json()
    assert fragment in doc["error"]
    assert doc["status"] == 400


async def test_export_without_storage_is_503_with_reason(client: Client) -> None:
    resp = await client.get("/api/earnings/export?format=json")
    assert resp.status == 503
    assert "storage service is not running" in (await resp.json())["error"]
    resp = await client.get("/api/earnings/export?format=xml")
    assert resp.status == 400


async def test_openapi_describes_exactly_the_dashboard_routes(client: Client) -> None:
    doc = await (await client.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    routes = {
        (r.resource.canonical, r.method.lower())
        for r in client.app.router.routes()
        if r.resource is not None
        and (r.resource.canonical.startswith("/api/") or r.resource.canonical == "/metrics")
        and r.method != "HEAD"
        and r.handler.__module__ == webapp.__name__
    }
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert routes == described
    assert doc == json.loads(json.dumps(spec(__version__)))


async def test_metrics_in_prometheus_format(client: Client, ctx: AgentContext) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    info = families["bitchat_node_info"].samples[0]
    assert info.labels["node_id"] == ctx.identity.node_id_text
    available = {
        s.labels["section"]: s.value for s in families["bitchat_section_available"].samples
    }
    assert available == {"earnings": 0.0, "storage": 0.0, "network": 0.0, "hardware": 0.0}
    assert "process_resident_memory_bytes" in {s.name for f in families.values() for s in f.samples}
    # The process-wide default registry is not used.
    from prometheus_client import REGISTRY

    assert "bitchat_uptime_seconds" not in {s.name for f in REGISTRY.collect() for s in f.samples}


async def test_metrics_follow_the_hwmon_service(ctx: AgentContext) -> None:
    from node.hwmon.service import HwmonService

    ctx.services["hwmon"] = HwmonService(ctx)
    async with TestClient(TestServer(webapp.make_app(ctx))) as client:
        text = await (await client.get("/metrics")).text()
    assert 'bitchat_section_available{section="hardware"} 1.0' in text
    assert "bitchat_throttled" in text


async def test_page_and_static_assets(client: Client) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    page = await resp.text()
    assert "<script" in page and "/static/app.js" in page
    assert "<style" not in page and " style=" not in page and "onclick" not in page
    for name in ("app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css", "favicon.svg"):
        resp = await client.get(f"/static/{name}")
        assert resp.status == 200, name
        etag = resp.headers["ETag"]
        again = await client.get(f"/static/{name}", headers={"If-None-Match": etag})
        assert again.status == 304
    resp = await client.get("/static/app.js", headers={"Accept-Encoding": "gzip"})
    assert resp.headers["Content-Encoding"] == "gzip"


@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e%2fapp.py",
        "/static/.hidden.js",
        "/static/app.py",
        "/static/nothere.js",
        "/static/..\\app.js",
        "/api/../../etc/passwd",
        "/api/nothing",
    ],
)
async def test_path_tricks_are_404_json(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404
    doc = await resp.json()
    assert doc["status"] == 404 and doc["error"]


async def test_wrong_method_is_405_json(client: Client) -> None:
    resp = await client.post("/api/status")
    assert resp.status == 405
    assert "use GET" in (await resp.json())["error"]
    resp = await client.get("/api/actions/pause")
    assert resp.status == 405


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("evil.example", False),
        ("evil.example:80", False),
        ("127.0.0.1.nip.io", False),
        ("localhost", True),
        ("LOCALHOST:8080", True),
        ("127.0.0.1:1", True),
        ("[::1]:7780", True),
        ("[::1", False),
        ("localhost:abc", False),
        ("", False),
    ],
)
async def test_host_header_allow_list(client: Client, host: str, allowed: bool) -> None:
    resp = await client.get("/api/status", headers={"Host": host})
    if allowed:
        assert resp.status == 200
    else:
        assert resp.status == 403
        assert "allowed_hosts" in (await resp.json())["error"]


async def test_hostname_dot_local_and_configured_names(tmp_path: Path) -> None:
    import socket

    ctx = make_ctx(tmp_path / "box", allowed_hosts=("box.example.lan",))
    async with TestClient(TestServer(webapp.make_app(ctx))) as client:
        short = socket.gethostname().split(".")[0]
        for host in (
            f"{short}.local",
            f"{short}.local.:7780",
            "box.example.lan",
            "BOX.example.lan.",
        ):
            assert (await client.get("/api/status", headers={"Host": host})).status == 200, host
    ctx.db.conn.close()


async def test_access_local_refuses_lan_clients(tmp_path: Path) -> None:
    from node.web.security import peer_allowed

    ctx = make_ctx(tmp_path / "box", access="local")
    async with TestClient(TestServer(webapp.make_app(ctx))) as client:
        assert (await client.get("/api/status")).status == 200  # the test client is loopback
    ctx.db.conn.close()
    assert peer_allowed("local", "127.0.0.1")
    assert peer_allowed("local", "::ffff:127.0.0.1")
    assert not peer_allowed("local", "192.168.1.20")
    assert peer_allowed("lan", "192.168.1.20")
    assert peer_allowed("lan", "fe80::1%eth0")
    assert peer_allowed("lan", "100.100.1.1")
    assert not peer_allowed("lan", "8.8.8.8")
    assert not peer_allowed("lan", "2001:db8::1")
    assert not peer_allowed("lan", None)
    assert not peer_allowed("lan", "not-an-ip")
    assert peer_allowed("any", "8.8.8.8")


# -- actions --------------------------------------------------------------------------


async def test_action_without_token_is_refused(client: Client, ctx: AgentContext) -> None:
    resp = await client.post("/api/actions/shutdown")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "admin token" in (await resp.json())["error"]
    resp = await client.post("/api/actions/shutdown", headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    assert (await resp.json())["error"] == "wrong admin token"
    resp = await client.post("/api/actions/shutdown", headers={"Authorization": "Basic abc"})
    assert resp.status == 401
    assert not ctx.stop.is_set()
    assert any("refused action shutdown" in e.message for e in ctx.events.recent())


async def test_shutdown_with_token_stops_the_agent(
    client: Client, ctx: AgentContext, token: str
) -> None:
    resp = await client.post("/api/actions/shutdown", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 202
    assert (await resp.json())["ok"] is True
    await asyncio.wait_for(ctx.stop.wait(), 10)


async def test_rotate_token(client: Client, ctx: AgentContext, token: str) -> None:
    resp = await client.post(
        "/api/actions/rotate-token", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status == 200
    new = (await resp.json())["token"]
    assert new != token
    path = ctx.data_dir / "admin.token"
    assert path.read_text().strip() == new
    assert path.stat().st_mode & 0o777 == 0o600
    old = await client.post("/api/actions/shutdown", headers={"Authorization": f"Bearer {token}"})
    assert old.status == 401
    assert not ctx.stop.is_set()


async def test_storage_actions_without_storage_are_503(client: Client, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    resp = await client.post("/api/actions/pause", json={"paused": True}, headers=auth)
    assert resp.status == 503
    assert "storage service is not running" in (await resp.json())["error"]
    resp = await client.post("/api/actions/allocation", json={"bytes": 10**9}, headers=auth)
    assert resp.status == 503


async def test_identify_blinks_through_hwmon(ctx: AgentContext, token: str) -> None:
    from node.hwmon.service import HwmonService

    svc = HwmonService(ctx)
    ctx.services["hwmon"] = svc
    async with TestClient(TestServer(webapp.make_app(ctx))) as client:
        resp = await client.post(
            "/api/actions/identify",
            json={"seconds": 3},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["seconds"] == 3
    assert svc.hardware()["leds"]["identify_s_left"] > 2
    assert any(e.source == "web" and "blink for 3 s" in e.message for e in ctx.events.recent())


@pytest.mark.parametrize(
    ("path", "body", "ctype", "status", "fragment"),
    [
        ("pause", b"{", "application/json", 400, "not valid JSON"),
        ("pause", b"[]", "application/json", 400, "must be a JSON object"),
        ("pause", b'{"paused": "yes"}', "application/json", 400, "expected true or false"),
        ("pause", b"{}", "application/json", 400, "'paused' is required"),
        ("pause", b'{"paused": true, "x": 1}', "application/json", 400, "unknown field 'x'"),
        ("pause", b'{"paused": true}', "text/plain", 415, "application/json"),
        ("allocation", b'{"bytes": -1}', "application/json", 400, "expected an integer"),
        ("allocation", b'{"bytes": 1.5}', "application/json", 400, "expected an integer"),
        ("allocation", b'{"bytes": true}', "application/json", 400, "expected an integer"),
        ("identify", b'{"seconds": 0}', "application/json", 400, "from 1 to 600"),
        ("identify", b'{"seconds": 1e999}', "application/json", 400, "from 1 to 600"),
        ("identify", b'{"seconds": NaN}', "application/json", 400, "from 1 to 600"),
        ("identify", b"\xff\xfe", "application/json", 400, "not UTF-8"),
        ("identify", b"[" * 100000, "application/json", 413, "too large"),
        ("shutdown", b'{"now": true}', "application/json", 400, "unknown field 'now'"),
        ("identify", b"[" * 4000 + b"]" * 4000 + b"", "application/json", 413, "too large"),
        ("identify", b"[" * 2000 + b"]" * 2000, "application/json", 400, ""),
    ],
)
async def test_bad_action_bodies_are_4xx(
    client: Client, token: str, path: str, body: bytes, ctype: str, status: int, fragment: str
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": ctype}
    resp = await client.post(f"/api/actions/{path}", data=body, headers=headers)
    assert resp.status == status, await resp.text()
    doc = await resp.json()
    assert fragment in doc["error"]


async def test_live_stream_sends_sections_then_new_events(
    client: Client, ctx: AgentContext
) -> None:
    async with client.get("/api/events/stream") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        seen: dict[str, dict[str, object]] = {}
        while len(seen) < 5:
            kind, data = await _next_sse(resp)
            seen[kind] = data
        assert set(seen) == {"status", "earnings", "storage", "network", "hardware"}
        assert seen["status"]["node_id"] == ctx.identity.node_id_text
        ctx.events.emit("warning", "test", "disk is hot")
        kind, data = await _next_sse(resp)
        assert kind == "event"
        assert data["message"] == "disk is hot"


async def test_live_stream_replays_after_last_event_id(client: Client, ctx: AgentContext) -> None:
    first = ctx.events.emit("info", "test", "one")
    ctx.events.emit("info", "test", "two")
    headers = {"Last-Event-ID": str(first.id)}
    async with client.get("/api/events/stream", headers=headers) as resp:
        kind, data = await _next_sse(resp)
        assert (kind, data["message"]) == ("event", "two")
    resp = await client.get("/api/events/stream", headers={"Last-Event-ID": "x1"})
    assert resp.status == 400
    assert "Last-Event-ID" in (await resp.json())["error"]


async def _next_sse(resp: object) -> tuple[str, dict[str, object]]:
    """The next ``event:``/``data:`` pair of a server-sent event stream."""
    content = resp.content  # type: ignore[attr-defined]
    kind = ""
    while True:
        line = (await asyncio.wait_for(content.readline(), 30)).decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind:
            return kind, json.loads(line[6:])


def test_docs_describe_every_endpoint_and_setting() -> None:
    import dataclasses

    from node.config import WebSection

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    for path in spec(__version__)["paths"]:
        assert f"`GET {path}" in text or f"`POST {path}" in text, path
    for f in dataclasses.fields(WebSection):
        assert f"| `{f.name}` |" in text, f.name


async def test_storage_figures_actions_and_export_with_the_real_service(
    tmp_path: Path,
) -> None:
    from node.storage_agent.service import StorageService

    box = tmp_path / "box"
    ctx = make_ctx(box)
    ctx.db.conn.close()
    seed_earnings(box, days=5)
    ctx = make_ctx(box)
    svc = StorageService(ctx)
    ctx.services["storage"] = svc
    token = (box / "admin.token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    async with TestClient(TestServer(webapp.make_app(ctx))) as client:
        earnings = await (await client.get("/api/earnings")).json()
        assert earnings == {"available": True, **json.loads(json.dumps(svc.earnings()))}
        assert len(earnings["by_day"]) == 5 and earnings["all_time"] > 0
        assert earnings["today"] == pytest.approx(
            sum(earnings["by_day"][-1][k] for k in ("storage", "egress", "relay"))
        )

        resp = await client.post("/api/actions/allocation", json={"bytes": 10**9}, headers=auth)
        assert resp.status == 200, await resp.text()
        storage = await (await client.get("/api/storage")).json()
        assert storage["allocated_bytes"] == min(10**9, svc.provider.allocated_bytes())
        assert storage["scores"]["thresholds"]["audit"] > 0

        resp = await client.post("/api/actions/pause", json={"paused": True}, headers=auth)
        assert resp.status == 200
        status = await (await client.get("/api/status")).json()
        assert status["limits"]["refuse_uploads"] is True
        resp = await client.post("/api/actions/pause", json={"paused": False}, headers=auth)
        assert (await (await client.get("/api/status")).json())["limits"]["refuse_uploads"] is False

        resp = await client.get("/api/earnings/export?format=json")
        assert resp.status == 200
        assert resp.headers["Content-Disposition"].endswith('.json"')
        exported = json.loads(await resp.read())
        assert len(exported["vouchers"]) == 1
        resp = await client.get("/api/earnings/export")
        assert resp.headers["Content-Type"].startswith("text/csv")
        lines = (await resp.text()).strip().splitlines()
        assert lines[0].startswith("channel,") and len(lines) == 2

        metrics = await (await client.get("/metrics")).text()
        assert (
            f'bitchat_earnings{{currency="BCT",period="all_time"}} {earnings["all_time"]}'
            in metrics
        )

        trimmed = await (await client.get("/api/storage?contracts=0")).json()
        assert trimmed["contracts"] == [] and trimmed["contracts_total"] == 0
        assert trimmed["contracts_by_state"] == {}
        assert (await client.get("/api/storage?contracts=-1")).status == 400
    ctx.db.conn.close()


@pytest.mark.parametrize(
    "path", ["/", "/static/app.js", "/api/status", "/nothing", "/api/events/stream", "/metrics"]
)
async def test_every_answer_has_the_security_headers(client: Client, path: str) -> None:
    async with client.get(path) as resp:
        assert resp.headers["Content-Security-Policy"] == webapp.CSP
        assert "'unsafe-inline'" not in webapp.CSP and "'unsafe-eval'" not in webapp.CSP
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["X-Frame-Options"] == "DENY"
        if path.startswith("/api/") or path == "/metrics":
            assert resp.headers["Cache-Control"] == "no-store"


def test_trim_contracts_lists_the_newest_and_counts_all() -> None:
    from node.web.providers import trim_contracts

    contracts = [
        {"id": str(i), "start": float(i), "state": "active" if i % 3 else "expired"}
        for i in range(50)
    ]
    doc = trim_contracts({"available": True, "contracts": contracts, "chunks": 7}, 5)
    assert [c["id"] for c in doc["contracts"]] == ["49", "48", "47", "46", "45"]
    assert doc["contracts_total"] == 50
    assert doc["contracts_by_state"] == {"active": 33, "expired": 17}
    assert doc["chunks"] == 7
    unavailable = {"available": False, "reason": "no storage figures"}
    assert trim_contracts(unavailable, 5) == unavailable
