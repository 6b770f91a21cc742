"""Hostile input to every dashboard endpoint: always a 2xx or a 4xx with a JSON reason.

Requests go over a real TCP connection to the app (see the ``server`` fixture) so that odd
headers, bodies and paths reach aiohttp exactly as a client would send them.
"""

from __future__ import annotations

import http.client
import json
import string
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.web.security import HostPolicy, split_host
from tests.web.conftest import ThreadedServer

FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
GETS = [
    "/", "/api/status", "/api/earnings", "/api/storage", "/api/network", "/api/hardware",
    "/api/events", "/api/earnings/export", "/api/openapi.json", "/metrics",
]  # fmt: skip
ACTIONS = ["identify", "allocation", "pause", "shutdown", "rotate-token"]
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module", autouse=True)
def services(server: ThreadedServer) -> None:
    """The real services the actions drive (constructed, not started)."""
    from node.hwmon.service import HwmonService

    server.ctx.services["hwmon"] = HwmonService(server.ctx)
    try:
        from node.storage_agent.service import StorageService
    except ImportError:
        return
    server.ctx.services["storage"] = StorageService(server.ctx)


def request(
    server: ThreadedServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(
            method, path, skip_host="Host" in (headers or {}), skip_accept_encoding=True
        )
        for key, value in (headers or {}).items():
            conn.putheader(key, value.encode("latin-1"))
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        streaming = resp.getheader("Content-Type", "").startswith("text/event-stream")
        data = b"" if streaming else resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def token(server: ThreadedServer) -> str:
    return (server.ctx.data_dir / "admin.token").read_text().strip()


def assert_error(status: int, headers: dict[str, str], data: bytes) -> dict[str, Any]:
    assert 400 <= status < 500 or status == 503, (status, data[:300])
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(data)
    assert isinstance(doc["error"], str) and doc["error"]
    assert doc["status"] == status
    assert "\n" not in doc["error"]
    return doc


@FUZZ
@given(host=HEADER_TEXT)
def test_any_host_header_is_served_or_refused(server: ThreadedServer, host: str) -> None:
    status, headers, data = request(server, "GET", "/api/status", headers={"Host": host})
    if status == 200:
        assert HostPolicy().allows(host)
    elif status == 403:
        assert "allowed_hosts" in assert_error(status, headers, data)["error"]
    else:
        # aiohttp itself rejects a few malformed headers before the app sees them.
        assert status == 400, (host, status)


@FUZZ
@given(
    path=st.sampled_from(GETS),
    query=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=4),
)
def test_any_query_string(server: ThreadedServer, path: str, query: list[tuple[str, str]]) -> None:
    qs = urllib.parse.urlencode(query)
    status, headers, data = request(server, "GET", f"{path}?{qs}" if qs else path)
    if status >= 400:
        assert_error(status, headers, data)
    else:
        assert status == 200


@FUZZ
@given(
    name=st.text(alphabet=string.printable + "é€\x00", max_size=60),
)
def test_any_static_name(server: ThreadedServer, name: str) -> None:
    status, headers, data = request(server, "GET", "/static/" + urllib.parse.quote(name, safe=""))
    if status == 200:
        assert name in {"app.js", "app.css", "uPlot.iife.min.js", "uPlot.min.css",
                        "favicon.svg", "uPlot.LICENSE.txt"}  # fmt: skip
    else:
        assert status == 404
        assert_error(status, headers, data)


@FUZZ
@given(
    action=st.sampled_from(ACTIONS),
    body=st.binary(max_size=5000) | JSON.map(lambda v: json.dumps(v).encode()),
    ctype=st.sampled_from(
        ["application/json", "text/plain", "", "application/json; charset=utf-8"]
    ),
    authorized=st.booleans(),
)
def test_any_action_body(
    server: ThreadedServer, action: str, body: bytes, ctype: str, authorized: bool
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    if authorized:
        headers["Authorization"] = f"Bearer {token(server)}"
    status, resp_headers, data = request(server, "POST", f"/api/actions/{action}", body, headers)
    if status < 300:
        assert authorized
        assert json.loads(data)["ok"] is True
    else:
        doc = assert_error(status, resp_headers, data)
        if not authorized:
            assert status == 401, doc


@FUZZ
@given(
    fields=st.dictionaries(
        st.sampled_from(["seconds", "bytes", "paused", "other"]), JSON, max_size=3
    ),
    action=st.sampled_from(["identify", "allocation", "pause"]),
)
def test_any_action_fields(server: ThreadedServer, fields: dict[str, Any], action: str) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token(server)}"}
    body = json.dumps(fields).encode()
    status, resp_headers, data = request(server, "POST", f"/api/actions/{action}", body, headers)
    if status >= 300:
        assert_error(status, resp_headers, data)


@FUZZ
@given(value=HEADER_TEXT)
def test_any_last_event_id(server: ThreadedServer, value: str) -> None:
    status, headers, data = request(
        server, "GET", "/api/events/stream", headers={"Last-Event-ID": value}
    )
    if status == 200:
        assert headers["content-type"] == "text/event-stream"
        assert value.strip() == "" or value.strip().isdigit()
    else:
        assert_error(status, headers, data)


@FUZZ
@given(value=HEADER_TEXT)
def test_any_authorization_header(server: ThreadedServer, value: str) -> None:
    status, headers, data = request(
        server, "POST", "/api/actions/shutdown", b"", headers={"Authorization": value}
    )
    assert status in (401, 400), status
    assert_error(status, headers, data)


def test_oversized_bodies_are_413(server: ThreadedServer) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token(server)}"}
    for size in (4097, 70_000, 2_000_000):
        body = b'{"paused": true, "x": "' + b"a" * size + b'"}'
        status, resp_headers, data = request(server, "POST", "/api/actions/pause", body, headers)
        assert status == 413
        assert "too large" in assert_error(status, resp_headers, data)["error"]


@given(
    host=st.from_regex(
        r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True
    ),
    port=st.none() | st.integers(0, 65535),
)
def test_split_host_takes_the_name_off_the_port(host: str, port: int | None) -> None:
    header = host if port is None else f"{host}:{port}"
    assert split_host(header) == host
    assert split_host(header.upper()) == host
    assert split_host(f"[::1]:{port or 80}") == "::1"


@given(text=HEADER_TEXT)
def test_split_host_never_raises(text: str) -> None:
    result = split_host(text)
    assert result is None or ":" not in result or result.count(":") >= 2
